// pipeline_bench --profile DIR: where a DiT step's time goes, from the torch profiler.
//
// For bf16 and (unless --no-fp8) --precision fp8, on a full-size random-weights pipeline:
// two warm-up Generate calls at --profile-size (the CUDA graph of the shape is captured),
// then one Generate with a new prompt recorded by the Kineto profiler (CPU + CUDA
// activities). Each trace is saved as Chrome-trace JSON (DIR/profile-<precision>-<HxW>.json);
// tests/bench/profile_summary.py groups its device kernels by kind (GEMM, attention, zfarm's
// fused kernels, other elementwise, VAE, copies) per DiT step. The section itself only
// reports where the traces went and the wall time of the profiled call.

#include <chrono>
#include <filesystem>
#include <memory>
#include <set>
#include <string>

#include "tests/bench/pipeline_bench.h"

#ifdef ZFARM_BENCH_WITH_PIPELINE
#include <torch/csrc/autograd/profiler_kineto.h>

#include "worker/pipeline/pipeline.h"
#endif

namespace zfarm::bench {

void RunProfileSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt) {
  rep.Line("### kernel profile (torch profiler traces)");
  rep.Line("");
#ifdef ZFARM_BENCH_WITH_PIPELINE
  if (!dev.cuda) {
    rep.Line("skipped: needs a CUDA device");
    rep.Line("");
    return;
  }
  namespace tp = torch::profiler::impl;
  namespace ap = torch::autograd::profiler;
  using zfarm::worker::Pipeline;
  using zfarm::worker::PipelineOptions;
  std::filesystem::create_directories(opt.profile_dir);
  const auto [h, w] = opt.profile_size;
  const std::string size = std::to_string(h) + "x" + std::to_string(w);
  std::vector<std::pair<std::string, PipelineOptions::Precision>> runs = {
      {"bf16", PipelineOptions::Precision::kAuto}};
  if (!opt.fp8_sizes.empty()) runs.push_back({"fp8", PipelineOptions::Precision::kFp8});
  for (const auto& [name, precision] : runs) {
    dev.EmptyCache();
    PipelineOptions po;
    po.device = "cuda:0";
    po.random_weights = true;
    po.precision = precision;
    zfarm::worker::ModelConfig mc;
    mc.tokenizer_json_path = opt.tokenizer_json;
    po.config = mc;
    auto created = Pipeline::Create(po);
    if (!created.ok()) {
      rep.Line(name + ": Create failed: " + std::string(created.status().message()));
      continue;
    }
    std::unique_ptr<Pipeline> pipe = std::move(*created);
    zfarm::worker::GenerateRequest req;
    const bool have_tokenizer =
        !opt.tokenizer_json.empty() && std::filesystem::exists(opt.tokenizer_json);
    req.height = static_cast<int>(h);
    req.width = static_cast<int>(w);
    req.steps = opt.steps;
    auto prompt = [&](int take) {
      if (have_tokenizer) {
        req.prompt = "A lighthouse on a cliff in a storm, oil painting, take " + std::to_string(take);
      } else {
        req.prompt_ids = std::vector<int32_t>(40, 1000);
        req.prompt_ids.back() = 1000 + take;
      }
    };
    bool ok = true;
    for (int i = 0; i < 2 && ok; ++i) {
      prompt(i);
      req.seed = 1 + i;
      ok = pipe->Generate(req, nullptr, nullptr).ok();
    }
    if (!ok) {
      rep.Line(name + ": warm-up Generate failed");
      continue;
    }
    const tp::ProfilerConfig config(tp::ProfilerState::KINETO);
    const std::set<tp::ActivityType> activities = {tp::ActivityType::CPU, tp::ActivityType::CUDA};
    ap::prepareProfiler(config, activities);
    ap::enableProfiler(config, activities);
    prompt(99);
    req.seed = 99;
    const auto t0 = std::chrono::steady_clock::now();
    auto img = pipe->Generate(req, nullptr, nullptr);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::unique_ptr<ap::ProfilerResult> result = ap::disableProfiler();
    const std::string path = opt.profile_dir + "/profile-" + name + "-" + size + ".json";
    if (result) result->save(path);
    rep.Line(name + " " + size + ", new prompt, " + std::to_string(opt.steps) + " steps: " +
             (img.ok() ? Fmt(s, 3) + " s under the profiler" : "Generate failed") +
             "; trace " + path);
  }
  rep.Line("");
#else
  (void)dev;
  (void)opt;
  rep.Line("not built: worker/pipeline is not available in this build");
  rep.Line("");
#endif
}

}  // namespace zfarm::bench
