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
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "proto/base/files.h"
#include "tests/bench/pipeline_bench.h"
#include "worker/io/model_config.h"

#ifdef ZFARM_BENCH_WITH_PIPELINE
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "worker/io/file_util.h"
#include "worker/io/safetensors.h"
#include "worker/pipeline/pipeline.h"
#include "worker/io/png.h"
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

#ifdef ZFARM_BENCH_WITH_PIPELINE
// The full-size sections need a GPU: on the CPU the report says so and the section ends.
bool SkippedWithoutCuda(const BenchDevice& dev, Report& rep) {
  if (dev.cuda) return false;
  rep.Line("skipped: needs a CUDA device");
  rep.Line("");
  return true;
}

// Options for the full-size Turbo architecture with random weights on cuda:0.
zfarm::worker::PipelineOptions FullSizeRandomOptions(const PipelineBenchOptions& opt) {
  zfarm::worker::PipelineOptions po;
  po.device = "cuda:0";
  po.random_weights = true;
  zfarm::worker::ModelConfig mc;  // full Turbo defaults
  mc.tokenizer_json_path = opt.tokenizer_json;
  po.config = mc;
  return po;
}

// One row of the pipeline table for an h x w image: warm-up (captures the CUDA
// graph of the shape), opt.reps timed end-to-end runs (median), then one run with
// per-step synchronisation for the stage times.
// The benchmark prompt (fixed ids without a tokenizer) at h x w with opt.steps.
zfarm::worker::GenerateRequest BenchRequest(int64_t h, int64_t w, const PipelineBenchOptions& opt,
                                            bool have_tokenizer) {
  zfarm::worker::GenerateRequest req;
  req.prompt = kBenchPrompt;
  if (!have_tokenizer) req.prompt_ids = std::vector<int32_t>(40, 1000);
  req.height = static_cast<int>(h);
  req.width = static_cast<int>(w);
  req.steps = opt.steps;
  return req;
}

// The pipeline table's columns (MeasureSize's row).
const std::vector<std::string> kPipelineHeader = {"image (HxW)",
                                                  "tokenize ms",
                                                  "encode ms",
                                                  "DiT step ms (mean / min / max)",
                                                  "VAE ms",
                                                  "PNG ms",
                                                  "end to end s, new prompt",
                                                  "end to end s, cached prompt",
                                                  "peak GiB",
                                                  "DiT of matmul peak"};
// Index of "end to end s, cached prompt": what the LoRA and image-to-image rows compare
// with (their timed runs repeat one prompt too).
constexpr size_t kCachedEndToEndColumn = 7;

// Gives `req` a prompt no Generate of this process has had: the pipeline caches recent
// captions, and a cached caption skips the text encoder (and, offloaded, its move to the
// device). With a tokenizer the text changes; without one, the last fixed id.
void FreshPrompt(zfarm::worker::GenerateRequest& req, bool have_tokenizer) {
  static int serial = 0;
  ++serial;
  if (have_tokenizer) {
    req.prompt = std::string(kBenchPrompt) + ", take " + std::to_string(serial);
  } else {
    req.prompt_ids = std::vector<int32_t>(40, 1000);
    req.prompt_ids.back() = 1000 + serial;
  }
}

// The median seconds of opt.reps Generate calls of `req` (seeds 2, 3, ...), each with a new
// prompt when `fresh`; *peak gets the largest device peak seen.
double MedianEndToEnd(zfarm::worker::Pipeline& pipe, zfarm::worker::GenerateRequest req,
                      const PipelineBenchOptions& opt, bool have_tokenizer, bool fresh,
                      int64_t* peak) {
  std::vector<double> e2e;
  for (int r = 0; r < opt.reps; ++r) {
    req.seed = 2 + r;
    if (fresh) FreshPrompt(req, have_tokenizer);
    auto t0 = std::chrono::steady_clock::now();
    auto img = pipe.Generate(req, nullptr, nullptr);
    e2e.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (img.ok()) *peak = std::max(*peak, img->peak_device_bytes);
  }
  std::sort(e2e.begin(), e2e.end());
  return e2e[e2e.size() / 2];
}

// Columns: kPipelineHeader. The end to end with a new prompt per image is the headline;
// the cached-prompt one (the caption served from the pipeline's cache) stays beside it.
// `tweak` (optional) changes the request before the runs (e.g. adds a ControlNet input).
std::vector<std::string> MeasureSize(
    zfarm::worker::Pipeline& pipe, int64_t h, int64_t w, const PipelineBenchOptions& opt,
    bool have_tokenizer,
    const std::function<void(zfarm::worker::GenerateRequest&)>& tweak = nullptr) {
  const zfarm::worker::TransformerConfig cfg;
  zfarm::worker::GenerateRequest req = BenchRequest(h, w, opt, have_tokenizer);
  if (tweak) tweak(req);
  req.seed = 1;
  const std::string label = std::to_string(h) + "x" + std::to_string(w);
  pipe.set_time_steps(false);
  auto warm = pipe.Generate(req, nullptr, nullptr);
  if (!warm.ok()) return {label, "error: " + std::string(warm.status().message())};
  int64_t peak = 0;
  const double fresh_s = MedianEndToEnd(pipe, req, opt, have_tokenizer, /*fresh=*/true, &peak);
  const double cached_s = MedianEndToEnd(pipe, req, opt, have_tokenizer, /*fresh=*/false, &peak);
  pipe.set_time_steps(true);
  req.seed = 100;
  auto img = pipe.Generate(req, nullptr, nullptr);
  pipe.set_time_steps(false);
  if (!img.ok()) return {label, "error: " + std::string(img.status().message())};
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
  return {label, Fmt(t.tokenize_s * 1e3, 1), Fmt(t.encode_s * 1e3, 1),
          Fmt(mean * 1e3, 1) + " / " + Fmt(lo * 1e3, 1) + " / " + Fmt(hi * 1e3, 1),
          Fmt(t.decode_s * 1e3, 1), png.ok() ? Fmt(png_ms, 1) : "error", Fmt(fresh_s, 3),
          Fmt(cached_s, 3),
          Fmt(static_cast<double>(peak) / (1024.0 * 1024.0 * 1024.0), 1), Fmt(frac, 2)};
}

// --precision fp8 beside bf16: the same table on an FP8 pipeline of the same random weights
// (made after the bf16 one is released, so each peak is its own), then new-prompt /
// cached-prompt end to end and the DiT step side by side with `bf16_rows`. A device or
// build without FP8 GEMMs gets the reason instead of rows.
void MeasureFp8(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt,
                bool have_tokenizer, const std::vector<std::vector<std::string>>& bf16_rows) {
  using zfarm::worker::Pipeline;
  using zfarm::worker::PipelineOptions;
  rep.Line("### zfarm pipeline, --precision fp8 (same weights; DiT attention and FFN in e4m3)");
  rep.Line("");
  dev.EmptyCache();
  PipelineOptions po = FullSizeRandomOptions(opt);
  po.precision = PipelineOptions::Precision::kFp8;
  auto created = Pipeline::Create(po);
  if (!created.ok()) {
    rep.Line("fp8: Create failed: " + std::string(created.status().message()));
    rep.Line("");
  } else {
    std::unique_ptr<Pipeline> fp8 = std::move(*created);
    std::vector<std::vector<std::string>> rows;
    for (auto [h, w] : opt.fp8_sizes) rows.push_back(MeasureSize(*fp8, h, w, opt, have_tokenizer));
    rep.Line(fp8->Describe() + ", load " + Fmt(fp8->load_seconds(), 1) +
             " s (quantized at load); columns as above; \"DiT of matmul peak\" is against the "
             "bf16 peak measured above");
    rep.Line("");
    rep.Table(kPipelineHeader, rows);
    std::vector<std::vector<std::string>> side;
    for (const auto& f : rows) {  // beside the bf16 row of the same size
      for (const auto& b : bf16_rows) {
        if (b.empty() || b[0] != f[0]) continue;
        if (b.size() <= kCachedEndToEndColumn || f.size() <= kCachedEndToEndColumn) continue;
        side.push_back({b[0], b[kCachedEndToEndColumn - 1], f[kCachedEndToEndColumn - 1],
                        b[kCachedEndToEndColumn], f[kCachedEndToEndColumn], b[3], f[3]});
      }
    }
    rep.Line("### bf16 vs fp8, end to end s (new prompt / cached prompt) and DiT step ms");
    rep.Line("");
    rep.Table({"image (HxW)", "bf16 new prompt", "fp8 new prompt", "bf16 cached prompt",
               "fp8 cached prompt", "bf16 DiT step ms", "fp8 DiT step ms"},
              side);
  }
}

// Image-to-image at strength 0.5 (steps / 2 DiT steps) from a synthetic picture of the same
// size: {label, steps run, VAE encode ms (median), end to end s (median), plain s, ratio}.
std::vector<std::string> MeasureImg2Img(zfarm::worker::Pipeline& pipe, int64_t h, int64_t w,
                                        const PipelineBenchOptions& opt, bool have_tokenizer,
                                        const std::string& plain_s) {
  zfarm::worker::GenerateRequest req = BenchRequest(h, w, opt, have_tokenizer);
  req.strength = 0.5f;
  zfarm::worker::InputPicture pic;
  pic.width = static_cast<int>(w);
  pic.height = static_cast<int>(h);
  pic.rgb.resize(static_cast<size_t>(h) * w * 3);
  for (size_t i = 0; i < pic.rgb.size(); ++i) pic.rgb[i] = static_cast<uint8_t>((i * 7) / 3 % 251);
  req.init_image = std::move(pic);
  const std::string label = std::to_string(h) + "x" + std::to_string(w);
  auto warm = pipe.Generate(req, nullptr, nullptr);
  if (!warm.ok()) return {label, "error: " + std::string(warm.status().message())};
  std::vector<double> e2e, enc;
  for (int r = 0; r < opt.reps; ++r) {
    req.seed = 2 + r;
    auto t0 = std::chrono::steady_clock::now();
    auto img = pipe.Generate(req, nullptr, nullptr);
    e2e.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (img.ok()) enc.push_back(img->timings.encode_image_s * 1e3);
  }
  std::sort(e2e.begin(), e2e.end());
  std::sort(enc.begin(), enc.end());
  double plain = 0;
  const bool have_plain = absl::SimpleAtod(plain_s, &plain) && plain > 0;
  return {label, std::to_string(warm->steps_run) + " of " + std::to_string(opt.steps),
          enc.empty() ? "error" : Fmt(enc[enc.size() / 2], 1), Fmt(e2e[e2e.size() / 2], 3),
          have_plain ? plain_s : "–", have_plain ? Fmt(e2e[e2e.size() / 2] / plain, 2) : "–"};
}
#endif

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
  const std::vector<std::string>& header = kPipelineHeader;
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
  PipelineOptions po = FullSizeRandomOptions(opt);
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
  for (auto [h, w] : opt.sizes) mrows.push_back(MeasureSize(*pipe, h, w, opt, have_tokenizer));
  rep.Line(pipe->Describe() + ", random full-size weights, load " + Fmt(pipe->load_seconds(), 1) +
           " s, " + std::to_string(opt.steps) +
           " steps, guidance 0; end to end = Generate() (to RGB8), median of " +
           std::to_string(opt.reps) +
           " after a warm-up, each with a new prompt (the headline: the text encoder runs every "
           "time), then with one repeated prompt (its caption cached); stages (cached caption) "
           "from one further run with per-step sync" +
           (have_tokenizer ? "" : "; no tokenizer (fixed ids)"));
  rep.Line("");
  rep.Table(header, mrows);
  // Image-to-image beside the plain 1024x1024 row, on the same pipeline.
  std::vector<std::vector<std::string>> irows;
  for (size_t i = 0; i < opt.sizes.size(); ++i) {
    const auto [h, w] = opt.sizes[i];
    if (h != 1024 || w != 1024) continue;
    irows.push_back(MeasureImg2Img(*pipe, h, w, opt, have_tokenizer,
                                   mrows[i].size() > kCachedEndToEndColumn
                                       ? mrows[i][kCachedEndToEndColumn]
                                       : ""));
  }
  rep.Line("### image-to-image, strength 0.5 (same pipeline)");
  rep.Line("");
  rep.Line("A synthetic init picture of the image's size: VAE encode (preprocessing included, "
           "median of " + std::to_string(opt.reps) + ") + the last half of the schedule; ratio = "
           "end to end / the plain row's end to end.");
  rep.Line("");
  rep.Table({"image (HxW)", "DiT steps run", "VAE encode ms", "end to end s", "plain end to end s",
             "ratio"},
            irows);
  pipe.reset();  // the FP8 pipeline's peak is its own
  if (!opt.fp8_sizes.empty()) MeasureFp8(dev, rep, opt, have_tokenizer, mrows);
#else
  (void)dev;
  rep.Line(
      "not built: worker/pipeline (zfarm_worker_pipeline) is not available in this build; columns "
      "once it is:");
  rep.Line("");
  rep.Table(header, {});
#endif
}

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A smooth 8-bit RGB image with a little grain (photo-like for a PNG encoder: gradients,
// soft shapes, +-2 levels of noise), deterministic.
std::vector<uint8_t> SyntheticImage(int w, int h) {
  std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
  uint32_t state = 12345;
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const double u = static_cast<double>(x) / w, v = static_cast<double>(y) / h;
      const double blob = std::exp(-((u - 0.6) * (u - 0.6) + (v - 0.4) * (v - 0.4)) * 12.0);
      const double base[3] = {40 + 150 * u + 60 * blob, 60 + 120 * v + 40 * std::sin(6.0 * u),
                              90 + 80 * (1 - v) * u + 70 * blob};
      for (int c = 0; c < 3; ++c) {
        state = state * 1664525u + 1013904223u;
        const int noise = static_cast<int>((state >> 24) % 5) - 2;
        rgb[(static_cast<size_t>(y) * w + x) * 3 + c] =
            static_cast<uint8_t>(std::clamp(static_cast<int>(base[c]) + noise, 0, 255));
      }
    }
  }
  return rgb;
}

}  // namespace

void RunAblationSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt) {
  rep.Line("### speed paths, one at a time (full Turbo config, random weights)");
  rep.Line("");
#ifdef ZFARM_BENCH_WITH_PIPELINE
  if (SkippedWithoutCuda(dev, rep)) return;
  struct Config {
    const char* name;
    bool fused, graphs, cudnn_benchmark, channels_last;
  };
  const Config configs[] = {
      {"reference ops (no speed paths)", false, false, false, false},
      {"+ fused projections and kernels", true, false, false, false},
      {"+ cuDNN benchmark (VAE)", true, false, true, false},
      {"+ CUDA graphs (default)", true, true, true, false},
      {"+ VAE channels-last", true, true, true, true},
  };
  const bool have_tokenizer =
      !opt.tokenizer_json.empty() && std::filesystem::exists(opt.tokenizer_json);
  std::vector<std::vector<std::string>> rows;
  for (const Config& c : configs) {
    dev.EmptyCache();
    zfarm::worker::PipelineOptions po = FullSizeRandomOptions(opt);
    po.fused_ops = c.fused;
    po.cuda_graphs = c.graphs;
    po.cudnn_benchmark = c.cudnn_benchmark;
    po.vae_channels_last = c.channels_last;
    auto created = zfarm::worker::Pipeline::Create(po);
    if (!created.ok()) {
      rows.push_back({c.name, "Create failed: " + std::string(created.status().message())});
      continue;
    }
    for (auto [h, w] : opt.sizes) {
      std::vector<std::string> row = MeasureSize(**created, h, w, opt, have_tokenizer);
      row.insert(row.begin(), c.name);
      rows.push_back(std::move(row));
    }
  }
  rep.Line("Each row a fresh pipeline with the speed paths up to that line switched on; columns as "
           "in the pipeline table. Same process, same device, one after the other.");
  rep.Line("");
  std::vector<std::string> ablation_header = kPipelineHeader;
  ablation_header.insert(ablation_header.begin(), "config");
  rep.Table(ablation_header, rows);
#else
  (void)dev;
  (void)opt;
  rep.Line("not built: worker/pipeline is not available in this build");
#endif
  rep.Line("");
}

#ifdef ZFARM_BENCH_WITH_PIPELINE
namespace {

// A rank-`rank` kohya-style LoRA (bf16, alpha = rank / 2) on every attention (to_q, to_k, to_v,
// to_out.0) and feed-forward (w1, w2, w3) module of every block of the full Turbo DiT.
std::string WriteBenchLora(const std::string& path, int64_t rank, uint64_t seed) {
  const zfarm::worker::TransformerConfig c;
  const int64_t d = c.dim, f = c.ffn_hidden_dim();
  zfarm::worker::SafetensorsWriter w;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  auto add = [&](const std::string& key, int64_t rows, int64_t cols) {
    at::Tensor t = (at::randn({rows, cols}, gen, at::kFloat) * 0.02).to(at::kBFloat16).contiguous();
    return w.Add(key, zfarm::worker::DType::kBF16, {rows, cols},
                 std::string(static_cast<const char*>(t.data_ptr()), t.nbytes()));
  };
  std::vector<std::string> blocks;
  for (int64_t i = 0; i < c.n_refiner_layers; ++i) {
    blocks.push_back("noise_refiner_" + std::to_string(i));
    blocks.push_back("context_refiner_" + std::to_string(i));
  }
  for (int64_t i = 0; i < c.n_layers; ++i) blocks.push_back("layers_" + std::to_string(i));
  const std::vector<std::tuple<std::string, int64_t, int64_t>> modules = {
      {"attention_to_q", d, d},       {"attention_to_k", d, d},     {"attention_to_v", d, d},
      {"attention_to_out_0", d, d},   {"feed_forward_w1", f, d},    {"feed_forward_w2", d, f},
      {"feed_forward_w3", f, d}};
  for (const std::string& b : blocks) {
    for (const auto& [m, out, in] : modules) {
      const std::string k = "lora_unet_" + b + "_" + m;
      if (!add(k + ".lora_down.weight", rank, in).ok() || !add(k + ".lora_up.weight", out, rank).ok()) {
        return "adding " + k;
      }
      at::Tensor alpha = at::full({}, static_cast<float>(rank) / 2, at::kFloat);
      if (!w.Add(k + ".alpha", zfarm::worker::DType::kF32, {},
                 std::string(static_cast<const char*>(alpha.data_ptr()), 4)).ok()) {
        return "adding " + k + ".alpha";
      }
    }
  }
  absl::Status s = w.Write(path);
  return s.ok() ? "" : std::string(s.message());
}

}  // namespace
#endif

void RunLoraSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt) {
  rep.Line("### LoRA (full Turbo config, random weights)");
  rep.Line("");
#ifdef ZFARM_BENCH_WITH_PIPELINE
  if (SkippedWithoutCuda(dev, rep)) return;
  using zfarm::worker::GenerateRequest;
  using zfarm::worker::LoraRequest;
  const int64_t rank = 32;
  const std::string a_path = opt.tmpdir + "/zfarm_bench_lora_a.safetensors";
  const std::string b_path = opt.tmpdir + "/zfarm_bench_lora_b.safetensors";
  for (const auto& [path, seed] : {std::pair{a_path, 1}, std::pair{b_path, 2}}) {
    if (std::string err = WriteBenchLora(path, rank, seed); !err.empty()) {
      rep.Line("writing the bench LoRA failed: " + err);
      return;
    }
  }
  dev.EmptyCache();
  auto created = zfarm::worker::Pipeline::Create(FullSizeRandomOptions(opt));
  if (!created.ok()) {
    rep.Line("pipeline: Create failed: " + std::string(created.status().message()));
    return;
  }
  zfarm::worker::Pipeline& pipe = **created;
  const bool have_tokenizer =
      !opt.tokenizer_json.empty() && std::filesystem::exists(opt.tokenizer_json);
  // With their sha256s, as the worker's catalogue passes them (no hashing per job).
  absl::StatusOr<std::string> a_sha = zfarm::base::Sha256OfFile(a_path);
  absl::StatusOr<std::string> b_sha = zfarm::base::Sha256OfFile(b_path);
  if (!a_sha.ok() || !b_sha.ok()) {
    rep.Line("hashing the bench LoRAs failed");
    return;
  }
  const LoraRequest a{"bench_a", a_path, *a_sha, 0.8f}, b{"bench_b", b_path, *b_sha, 0.6f};
  std::vector<std::vector<std::string>> rows;
  for (auto [h, w] : opt.sizes) {
    const std::string label = std::to_string(h) + "x" + std::to_string(w);
    // The same image without and with a LoRA set (MeasureSize: warm-up, median of reps).
    std::vector<std::string> base = MeasureSize(pipe, h, w, opt, have_tokenizer);
    GenerateRequest req;
    req.prompt = kBenchPrompt;
    if (!have_tokenizer) req.prompt_ids = std::vector<int32_t>(40, 1000);
    req.height = static_cast<int>(h);
    req.width = static_cast<int>(w);
    req.steps = opt.steps;
    // Cold: the file read, checked, uploaded and applied; then switches between cached sets.
    auto apply = [&](std::vector<LoraRequest> set) -> double {
      req.loras = std::move(set);
      auto img = pipe.Generate(req, nullptr, nullptr);
      return img.ok() ? img->timings.lora_s * 1e3 : std::nan("");
    };
    const double cold_a = apply({a});
    const double cold_b = apply({b});
    std::vector<double> switches, to_none;
    for (int r = 0; r < opt.reps; ++r) {
      switches.push_back(apply({a}));
      switches.push_back(apply({b}));
      switches.push_back(apply({a, b}));
    }
    std::sort(switches.begin(), switches.end());
    // Rendering with the set applied (no switch inside the timed runs).
    req.loras = {a, b};
    std::vector<double> e2e;
    for (int r = 0; r < opt.reps; ++r) {
      req.seed = 2 + r;
      auto t0 = std::chrono::steady_clock::now();
      auto img = pipe.Generate(req, nullptr, nullptr);
      e2e.push_back(SecondsSince(t0));
    }
    std::sort(e2e.begin(), e2e.end());
    const double none = apply({});
    double base_s = 0;
    const bool base_ok = base.size() > kCachedEndToEndColumn &&
                         absl::SimpleAtod(base[kCachedEndToEndColumn], &base_s);
    const double with_s = e2e[e2e.size() / 2];
    rows.push_back({label, base_ok ? base[kCachedEndToEndColumn] : "error", Fmt(with_s, 3),
                    base_ok ? Fmt((with_s / base_s - 1) * 100, 1) + " %" : "–",
                    Fmt(cold_a, 0) + " / " + Fmt(cold_b, 0), Fmt(switches[switches.size() / 2], 1),
                    Fmt(switches.back(), 1), Fmt(none, 1), Fmt(dev.PeakGiB(), 1)});
  }
  std::remove(a_path.c_str());
  std::remove(b_path.c_str());
  rep.Line("Rank-" + std::to_string(rank) +
           " LoRAs (bf16 files, 7 modules x 34 blocks: every attention and feed-forward projection) "
           "applied in place to the weights; end to end = Generate() median of " +
           std::to_string(opt.reps) + " with the set {A, B} already applied. cold = first use of a "
           "file (read, checked, uploaded, applied); switch = changing the applied set between two "
           "jobs with the files cached (A -> B -> A+B ..., median and worst of " +
           std::to_string(3 * opt.reps) + "); none = back to the original weights.");
  rep.Line("");
  rep.Table({"image (HxW)", "no LoRA s", "LoRA A+B s", "added", "cold apply ms (A / B)",
             "switch ms (median)", "switch ms (worst)", "to none ms", "peak GiB"},
            rows);
#else
  (void)dev;
  (void)opt;
  rep.Line("not built: worker/pipeline is not available in this build");
#endif
  rep.Line("");
}

void RunControlNetSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt) {
  rep.Line("### ControlNet (full Turbo config + Union 2.1 layout, random weights)");
  rep.Line("");
#ifdef ZFARM_BENCH_WITH_PIPELINE
  if (SkippedWithoutCuda(dev, rep)) return;
  const bool have_tokenizer =
      !opt.tokenizer_json.empty() && std::filesystem::exists(opt.tokenizer_json);
  const zfarm::worker::TransformerConfig dit;
  // Z-Image-Turbo-Fun-Controlnet-Union-2.1 as its single file reads: 15 control blocks on
  // every other DiT layer, control context of 2 x 16 + 1 channels, 2 control refiner blocks.
  zfarm::worker::ControlNetConfig cc;
  cc.layout = zfarm::worker::ControlNetConfig::Layout::kUnion21;
  for (int64_t i = 0; i < 15; ++i) cc.control_layers_places.push_back(i * (dit.n_layers / 15));
  cc.control_refiner_layers_places = {0, 1};
  cc.control_in_dim = 2 * dit.in_channels + 1;
  cc.n_refiner_layers = 2;
  // A control picture of the image's size: a grid of edges, as canny would give.
  auto control = [](int64_t h, int64_t w) {
    return [h, w](zfarm::worker::GenerateRequest& req) {
      zfarm::worker::ControlRequest c;
      c.image.width = static_cast<int>(w);
      c.image.height = static_cast<int>(h);
      c.image.rgb.assign(static_cast<size_t>(h) * w * 3, 0);
      for (int64_t y = 0; y < h; ++y) {
        for (int64_t x = 0; x < w; ++x) {
          if (x % 64 == 0 || y % 48 == 0) {
            for (int k = 0; k < 3; ++k) c.image.rgb[(static_cast<size_t>(y) * w + x) * 3 + k] = 255;
          }
        }
      }
      req.control = std::move(c);
    };
  };
  std::vector<std::vector<std::string>> rows;
  for (bool with_control : {false, true}) {
    dev.EmptyCache();
    const double before = dev.AllocatedGiB();
    zfarm::worker::PipelineOptions po = FullSizeRandomOptions(opt);
    if (with_control) po.random_controlnet = cc;
    auto created = zfarm::worker::Pipeline::Create(po);
    if (!created.ok()) {
      rep.Line("pipeline: Create failed: " + std::string(created.status().message()));
      return;
    }
    dev.Sync();
    const double resident = dev.AllocatedGiB() - before;
    for (auto [h, w] : opt.sizes) {
      std::vector<std::string> m =
          MeasureSize(**created, h, w, opt, have_tokenizer,
                      with_control ? control(h, w) : std::function<void(zfarm::worker::GenerateRequest&)>());
      if (m.size() < kPipelineHeader.size()) {
        rows.push_back({m[0], with_control ? "ControlNet 2.1" : "plain", m.size() > 1 ? m[1] : "error"});
        continue;
      }
      // image, pipeline, DiT step, end to end (new / cached prompt), resident, peak
      rows.push_back({m[0], with_control ? "ControlNet 2.1, scale 0.75" : "plain", m[3], m[6], m[7],
                      Fmt(resident, 1), m[8]});
    }
  }
  rep.Line("The same full-size random-weight pipeline without and with a resident ControlNet "
           "(Union 2.1 layout: 15 control blocks + 2 control refiner blocks, bf16), " +
           std::to_string(opt.steps) + " steps, the ControlNet on every step; DiT step = the "
           "transformer plus the ControlNet's hints; resident GiB = device memory the pipeline "
           "holds after loading (weights); peak = the largest device peak of a job.");
  rep.Line("");
  rep.Table({"image (HxW)", "pipeline", "DiT step ms (mean / min / max)",
             "end to end s, new prompt", "end to end s, cached prompt", "resident GiB",
             "peak GiB"},
            rows);
#else
  (void)dev;
  (void)opt;
  rep.Line("not built: worker/pipeline is not available in this build");
#endif
  rep.Line("");
}

void RunMemoryModesSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt) {
  rep.Line("### memory modes (full Turbo config, random weights)");
  rep.Line("");
#ifdef ZFARM_BENCH_WITH_PIPELINE
  if (SkippedWithoutCuda(dev, rep)) return;
  using zfarm::worker::GenerateRequest;
  using zfarm::worker::Pipeline;
  using zfarm::worker::PipelineOptions;
  struct Mode {
    const char* key;  // for --modes
    const char* name;
    bool offload, tiling;
  };
  const Mode modes[] = {{"default", "default", false, false},
                        {"offload", "--offload-text-encoder", true, false},
                        {"tiling", "--vae-tiling", false, true},
                        {"both", "--offload-text-encoder --vae-tiling", true, true}};
  const bool have_tokenizer =
      !opt.tokenizer_json.empty() && std::filesystem::exists(opt.tokenizer_json);
  std::vector<std::vector<std::string>> rows;
  std::string describe;
  // A new prompt for every Generate (FreshPrompt).
  auto fresh_prompt = [&](GenerateRequest& req) { FreshPrompt(req, have_tokenizer); };
  for (const Mode& m : modes) {
    if (!opt.modes.empty() && opt.modes.find(m.key) == std::string::npos) continue;
    dev.EmptyCache();
    PipelineOptions po = FullSizeRandomOptions(opt);
    po.offload_text_encoder = m.offload;
    po.vae_tiling = m.tiling;
    const auto c0 = std::chrono::steady_clock::now();
    auto created = Pipeline::Create(po);
    const double create_s = SecondsSince(c0);
    if (!created.ok()) {
      rows.push_back({m.name, "–", "Create failed: " + std::string(created.status().message())});
      continue;
    }
    std::unique_ptr<Pipeline> pipe = std::move(*created);
    if (describe.empty()) describe = pipe->Describe();
    const double resident = dev.AllocatedGiB();
    std::cout << "memory mode " << m.name << ": created in " << create_s << " s, resident "
              << resident << " GiB" << std::endl;
    for (auto [h, w] : opt.sizes) {
      GenerateRequest req;
      req.height = static_cast<int>(h);
      req.width = static_cast<int>(w);
      req.steps = opt.steps;
      req.seed = 1;
      fresh_prompt(req);
      const std::string label = std::to_string(h) + "x" + std::to_string(w);
      auto warm = pipe->Generate(req, nullptr, nullptr);
      if (!warm.ok()) {
        rows.push_back({m.name, label, Fmt(resident, 1),
                        "error: " + std::string(warm.status().message())});
        continue;
      }
      std::vector<double> e2e;
      for (int r = 0; r < opt.reps; ++r) {
        req.seed = 2 + r;
        fresh_prompt(req);
        const auto t0 = std::chrono::steady_clock::now();
        auto img = pipe->Generate(req, nullptr, nullptr);
        if (img.ok()) e2e.push_back(SecondsSince(t0));
      }
      std::sort(e2e.begin(), e2e.end());
      // Peaks of one more run on an emptied cache: what this request needs (Generate resets
      // the allocator's peak statistics when it starts).
      dev.EmptyCache();
      req.seed = 100;
      fresh_prompt(req);
      auto img = pipe->Generate(req, nullptr, nullptr);
      if (!img.ok()) {
        rows.push_back({m.name, label, Fmt(resident, 1),
                        "error: " + std::string(img.status().message())});
        continue;
      }
      rows.push_back({m.name, label, Fmt(resident, 1),
                      Fmt(static_cast<double>(img->peak_device_bytes) / kGiB, 2),
                      Fmt(dev.ReservedGiB(), 2), e2e.empty() ? "–" : Fmt(e2e[e2e.size() / 2], 3),
                      Fmt(img->timings.encode_s * 1e3, 0), Fmt(img->timings.decode_s * 1e3, 0)});
      std::cout << "memory mode " << m.name << " " << label << " done" << std::endl;
    }
    pipe.reset();
    dev.EmptyCache();
  }
  rep.Line(describe + "; " + std::to_string(opt.steps) +
           " steps, guidance 0; weights GiB = allocated after Create; peaks = "
           "max_memory_allocated / max_memory_reserved over one Generate on an emptied cache "
           "(weights included); every Generate has a new prompt (no cached caption); s/image = "
           "Generate() to RGB8, median of " +
           std::to_string(opt.reps) + " after a warm-up" +
           (have_tokenizer ? "" : "; no tokenizer (fixed ids)"));
  rep.Line("");
  rep.Table({"mode", "image (HxW)", "weights GiB", "peak allocated GiB", "peak reserved GiB",
             "s/image", "encode ms", "VAE ms"},
            rows);
#else
  (void)dev;
  (void)opt;
  rep.Line("not built: worker/pipeline (zfarm_worker_pipeline) is not available in this build");
  rep.Line("");
#endif
}

void RunPngSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt) {
  rep.Line("### PNG encoding at 1024x1024 (libpng, one thread)");
  rep.Line("");
#ifdef ZFARM_BENCH_WITH_PIPELINE
  std::vector<std::pair<std::string, std::vector<uint8_t>>> images;
  images.emplace_back("synthetic smooth + grain", SyntheticImage(1024, 1024));
  if (dev.cuda) {
    zfarm::worker::PipelineOptions po;
    po.device = "cuda:0";
    po.random_weights = true;
    po.config = zfarm::worker::ModelConfig{};
    auto created = zfarm::worker::Pipeline::Create(po);
    if (created.ok()) {
      zfarm::worker::GenerateRequest req;
      req.prompt_ids = std::vector<int32_t>(40, 1000);
      req.steps = opt.steps;
      req.seed = 7;
      auto img = (*created)->Generate(req, nullptr, nullptr);
      if (img.ok()) images.emplace_back("rendered (random weights)", std::move(img->rgb));
    }
  }
  using F = zfarm::worker::PngOptions::Filter;
  struct Config {
    int level;
    F filter;
    bool rle;
  };
  std::vector<Config> configs = {{-1, F::kAdaptive, false}};
  for (int level : {1, 2, 3, 6}) {
    for (F f : {F::kAdaptive, F::kNone, F::kSub, F::kUp, F::kPaeth}) {
      configs.push_back({level, f, false});
    }
  }
  for (F f : {F::kAdaptive, F::kSub, F::kUp, F::kPaeth}) configs.push_back({1, f, true});
  auto filter_name = [](F f) {
    switch (f) {
      case F::kAdaptive:
        return "adaptive (all five)";
      case F::kNone:
        return "none";
      case F::kSub:
        return "sub";
      case F::kUp:
        return "up";
      case F::kAverage:
        return "average";
      case F::kPaeth:
        return "paeth";
    }
    return "?";
  };
  const std::vector<std::pair<std::string, std::string>> text = {
      {"parameters", std::string(kBenchPrompt) + "\nSteps: 8, Sampler: Euler, CFG scale: 0"},
      {"zfarm", "{\"prompt\": \"...\"}"}};
  std::vector<std::vector<std::string>> rows;
  for (const auto& [name, rgb] : images) {
    const double raw = static_cast<double>(rgb.size());
    for (const Config& c : configs) {
      zfarm::worker::PngOptions o;
      o.zlib_level = c.level;
      o.filter = c.filter;
      o.rle = c.rle;
      std::vector<double> ms;
      size_t bytes = 0;
      for (int r = 0; r < 3; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        auto png = zfarm::worker::EncodePng(rgb, 1024, 1024, text, o);
        ms.push_back(SecondsSince(t0) * 1e3);
        if (!png.ok()) {
          bytes = 0;
          break;
        }
        bytes = png->size();
      }
      std::sort(ms.begin(), ms.end());
      rows.push_back({name, c.level < 0 ? "default (6)" : std::to_string(c.level),
                      filter_name(c.filter), c.rle ? "Z_RLE" : "default", Fmt(ms[ms.size() / 2], 1),
                      bytes == 0 ? "error" : Fmt(static_cast<double>(bytes) / 1024.0, 0),
                      Fmt(static_cast<double>(bytes) / raw, 3)});
    }
  }
  rep.Line("median of 3 encodes (EncodePng with two text chunks) per row; raw RGB = 3072 KiB");
  rep.Line("");
  rep.Table({"image", "zlib level", "row filter", "strategy", "ms", "KiB", "of raw"}, rows);
#else
  (void)dev;
  (void)opt;
  rep.Line("not built: worker/io (zfarm_worker_image) is not available in this build");
  rep.Line("");
#endif
}

}  // namespace zfarm::bench
