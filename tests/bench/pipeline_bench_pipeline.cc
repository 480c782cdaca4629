// pipeline_bench section 5: the Z-Image pipeline per stage and end to end.
//
// Until worker/pipeline exists this prints the arithmetic of each size (the DiT's FLOPs per
// step and the floor they imply at the matmul peak measured in the same run) and the columns
// the measured table will have. When the pipeline lands, the measured rows come from its
// public interface: build it with the full Turbo configuration (worker/io/model_config.h
// defaults) and random weights, warm up once per size, then time tokenize, encode, every DiT
// step, VAE decode, PNG and end to end, with the device synchronized at stage borders.

#include <cmath>
#include <string>
#include <vector>

#include "tests/bench/pipeline_bench.h"
#include "worker/io/model_config.h"

namespace zfarm::bench {
namespace {

// FLOPs of one DiT forward (one step) for an image of h x w and a caption of `cap` tokens
// (padded to a multiple of 32), counting matrix products and attention only.
double DitStepFlops(const zfarm::worker::TransformerConfig& c, int64_t h, int64_t w, int64_t cap) {
  const double dim = static_cast<double>(c.dim), ffn = static_cast<double>(c.ffn_hidden_dim());
  const double img = static_cast<double>((h / 8 / c.patch_size) * (w / 8 / c.patch_size));
  const double txt = std::ceil(static_cast<double>(cap) / 32.0) * 32.0;
  auto block = [&](double s) { return 2.0 * s * (4.0 * dim * dim + 3.0 * dim * ffn) + 4.0 * s * s * dim; };
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
    rows.push_back({std::to_string(h) + "x" + std::to_string(w), Fmt(flop / 1e12, 1), Fmt(floor_ms, 1),
                    Fmt(floor_ms * opt.steps / 1000.0, 3)});
  }
  rep.Line("### DiT arithmetic (full Turbo config, caption " + std::to_string(caption) + " tokens)");
  rep.Table({"image", "TFLOP/step", "floor ms/step at measured peak",
             "floor s for " + std::to_string(opt.steps) + " steps"},
            rows);
  (void)dev;
  rep.Line("### pipeline (per stage, end to end)");
  rep.Line("");
  rep.Line("not built yet: worker/pipeline (helper-model's pipeline) has not landed; columns once it does:");
  rep.Line("");
  rep.Table({"image", "tokenize ms", "encode ms", "DiT step ms (mean/min/max)", "VAE ms", "PNG ms",
             "end to end s", "peak GiB", "DiT of matmul peak"},
            {});
}

}  // namespace zfarm::bench
