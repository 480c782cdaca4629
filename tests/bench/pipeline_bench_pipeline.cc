// pipeline_bench section 5: the Z-Image pipeline per stage and end to end.
//
// Until worker/pipeline exists this prints the arithmetic of each size (the DiT's FLOPs per
// step and the floor they imply at the matmul peak measured in the same run) and the columns
// the measured table will have. When the pipeline lands, the measured rows come from its
// public interface: build it with the full Turbo configuration (worker/io/model_config.h
// defaults) and random weights, warm up once per size, then time tokenize, encode, every DiT
// step, VAE decode, PNG and end to end, with the device synchronized at stage borders.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "tests/bench/pipeline_bench.h"
#include "worker/io/model_config.h"

#ifdef ZFARM_BENCH_WITH_PIPELINE
#include "worker/pipeline/pipeline.h"
#include "worker/pipeline/png.h"
#endif

namespace zfarm::bench {
namespace {

// The prompt diffusers_baseline.py uses too.
[[maybe_unused]] constexpr char kBenchPrompt[] =
    "A photograph of a red fox sitting in fresh snow at dawn, soft golden light, "
    "shallow depth of field, highly detailed fur";

// FLOPs of one DiT forward (one step) for an image of h x w and a caption of `cap` tokens
// (padded to a multiple of 32), counting matrix products and attention only.
double DitStepFlops(const zfarm::worker::TransformerConfig& c, int64_t h, int64_t w, int64_t cap) {
  const double dim = static_cast<double>(c.dim), ffn = static_cast<double>(c.ffn_hidden_dim());
  const double img = static_cast<double>((h / 8 / c.patch_size) * (w / 8 / c.patch_size));
  const double txt = std::ceil(static_cast<double>(cap) / 32.0) * 32.0;
  auto block = [&](double s) {
    return 2.0 * s * (4.0 * dim * dim + 3.0 * dim * ffn) + 4.0 * s * s * dim;
  };
  return static_cast<double>(c.n_layers) * block(img + txt) +
         static_cast<double>(c.n_refiner_layers) * (block(img) + block(txt));
}

}  // namespace

void RunPipelineSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt) {
  const zfarm::worker::TransformerConfig cfg;  // full Z-Image-Turbo sizes
  const int64_t caption = 64;                  // a typical short prompt with the chat template
  std::vector<std::vector<std::string>> rows;
  for (auto [h, w] : opt.sizes) {
    const double flop = DitStepFlops(cfg, h, w, caption);
    const double floor_ms =
        opt.matmul_peak_tflops > 0 ? flop / (opt.matmul_peak_tflops * 1e12) * 1e3 : std::nan("");
    rows.push_back({std::to_string(h) + "x" + std::to_string(w), Fmt(flop / 1e12, 1),
                    Fmt(floor_ms, 1), Fmt(floor_ms * opt.steps / 1000.0, 3)});
  }
  rep.Line("### DiT arithmetic (full Turbo config, caption " + std::to_string(caption) +
           " tokens)");
  rep.Table({"image", "TFLOP/step", "floor ms/step at measured peak",
             "floor s for " + std::to_string(opt.steps) + " steps"},
            rows);
  const std::vector<std::string> header = {"image (HxW)",
                                           "tokenize ms",
                                           "encode ms",
                                           "DiT step ms (mean / min / max)",
                                           "VAE ms",
                                           "PNG ms",
                                           "end to end s",
                                           "peak GiB",
                                           "DiT of matmul peak"};
  rep.Line("### zfarm pipeline (per stage, end to end)");
  rep.Line("");
#ifdef ZFARM_BENCH_WITH_PIPELINE
  if (!dev.cuda) {
    rep.Line("skipped: the full-size pipeline needs a CUDA device");
    rep.Line("");
    return;
  }
  using zfarm::worker::GenerateRequest;
  using zfarm::worker::Pipeline;
  using zfarm::worker::PipelineOptions;
  PipelineOptions po;
  po.device = "cuda:0";
  po.random_weights = true;
  zfarm::worker::ModelConfig mc;  // full Turbo defaults
  mc.tokenizer_json_path = opt.tokenizer_json;
  po.config = mc;
  auto created = Pipeline::Create(po);
  if (!created.ok()) {
    rep.Line("pipeline: Create failed: " + std::string(created.status().message()));
    rep.Line("");
    return;
  }
  std::unique_ptr<Pipeline> pipe = std::move(*created);
  const bool have_tokenizer =
      !opt.tokenizer_json.empty() && std::filesystem::exists(opt.tokenizer_json);
  std::vector<std::vector<std::string>> mrows;
  for (auto [h, w] : opt.sizes) {
    GenerateRequest req;
    req.prompt = kBenchPrompt;
    if (!have_tokenizer) req.prompt_ids = std::vector<int32_t>(40, 1000);
    req.height = static_cast<int>(h);
    req.width = static_cast<int>(w);
    req.steps = opt.steps;
    req.seed = 1;
    const std::string label = std::to_string(h) + "x" + std::to_string(w);
    pipe->set_time_steps(false);
    auto warm = pipe->Generate(req, nullptr, nullptr);
    if (!warm.ok()) {
      mrows.push_back({label, "error: " + std::string(warm.status().message())});
      continue;
    }
    std::vector<double> e2e;
    int64_t peak = 0;
    for (int r = 0; r < opt.reps; ++r) {
      req.seed = 2 + r;
      auto t0 = std::chrono::steady_clock::now();
      auto img = pipe->Generate(req, nullptr, nullptr);
      e2e.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      if (img.ok()) peak = std::max(peak, img->peak_device_bytes);
    }
    std::sort(e2e.begin(), e2e.end());
    pipe->set_time_steps(true);
    req.seed = 100;
    auto img = pipe->Generate(req, nullptr, nullptr);
    pipe->set_time_steps(false);
    if (!img.ok()) {
      mrows.push_back({label, "error: " + std::string(img.status().message())});
      continue;
    }
    const auto& t = img->timings;
    double mean = 0, lo = 0, hi = 0;
    if (!t.step_s.empty()) {
      mean = std::accumulate(t.step_s.begin(), t.step_s.end(), 0.0) /
             static_cast<double>(t.step_s.size());
      lo = *std::min_element(t.step_s.begin(), t.step_s.end());
      hi = *std::max_element(t.step_s.begin(), t.step_s.end());
    }
    auto p0 = std::chrono::steady_clock::now();
    auto png = zfarm::worker::EncodePng(img->rgb, img->width, img->height, {});
    const double png_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - p0).count();
    const double frac =
        opt.matmul_peak_tflops > 0 && mean > 0
            ? DitStepFlops(cfg, h, w, img->prompt_tokens) / mean / (opt.matmul_peak_tflops * 1e12)
            : std::nan("");
    mrows.push_back({label, Fmt(t.tokenize_s * 1e3, 1), Fmt(t.encode_s * 1e3, 1),
                     Fmt(mean * 1e3, 1) + " / " + Fmt(lo * 1e3, 1) + " / " + Fmt(hi * 1e3, 1),
                     Fmt(t.decode_s * 1e3, 1), png.ok() ? Fmt(png_ms, 1) : "error",
                     Fmt(e2e[e2e.size() / 2], 3),
                     Fmt(static_cast<double>(peak) / (1024.0 * 1024.0 * 1024.0), 1), Fmt(frac, 2)});
  }
  rep.Line(pipe->Describe() + ", random full-size weights, load " + Fmt(pipe->load_seconds(), 1) +
           " s, " + std::to_string(opt.steps) +
           " steps, guidance 0; end to end = Generate() (to RGB8), median of " +
           std::to_string(opt.reps) +
           " after a warm-up; stages from one further run with per-step sync" +
           (have_tokenizer ? "" : "; no tokenizer (fixed ids)"));
  rep.Line("");
  rep.Table(header, mrows);
#else
  (void)dev;
  rep.Line(
      "not built: worker/pipeline (zfarm_worker_pipeline) is not available in this build; columns "
      "once it is:");
  rep.Line("");
  rep.Table(header, {});
#endif
}

}  // namespace zfarm::bench
