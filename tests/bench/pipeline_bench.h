#ifndef ZFARM_TESTS_BENCH_PIPELINE_BENCH_H_
#define ZFARM_TESTS_BENCH_PIPELINE_BENCH_H_

// Shared pieces of pipeline_bench (tests/bench/pipeline_bench.cc): the device, timing and the
// markdown report, so that the pipeline section (pipeline_bench_pipeline.cc) stays separate
// and can follow worker/pipeline's public interface without touching the rest.

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace zfarm::bench {

// CUDA device 0 when visible, else the CPU.
struct BenchDevice {
  BenchDevice();
  bool cuda = false;
  at::Device device() const;
  std::string Name() const;
  void Sync() const;           // waits for the device (no-op on the CPU)
  void ResetPeak() const;      // resets the caching allocator's peak statistics
  double PeakGiB() const;      // peak allocated since ResetPeak (NaN without CUDA headers)
  double ReservedGiB() const;  // peak reserved by the caching allocator
  double AllocatedGiB() const;  // allocated now
  void EmptyCache() const;      // returns the caching allocator's free blocks to the driver
};

// Median milliseconds per call of `fn` after `warmup` calls: `reps` samples, each `batch`
// calls followed by a device synchronization.
double TimeMs(const BenchDevice& dev, const std::function<void()>& fn, int warmup, int reps,
              int batch);

// Fixed-point formatting; NaN prints as "–".
std::string Fmt(double v, int prec);

// Markdown written to stdout as it is produced and kept for --out.
class Report {
 public:
  void Line(const std::string& s);
  void Table(const std::vector<std::string>& header,
             const std::vector<std::vector<std::string>>& rows);
  const std::string& text() const { return text_; }

 private:
  std::string text_;
};

struct PipelineBenchOptions {
  std::vector<std::pair<int64_t, int64_t>> sizes;  // height x width
  int steps = 8;
  bool quick = false;
  double matmul_peak_tflops = 0;  // measured in the same run
  int reps = 3;                   // end-to-end repetitions after the warm-up
  std::string tokenizer_json;     // Qwen3 tokenizer.json; empty: fixed token ids
  std::string modes;              // --memory-modes: "default,offload,tiling,both" (empty: all)
  std::string tmpdir = "/tmp";    // --lora: where the generated LoRA files go
  // Section 5's --precision fp8 table and its bf16-vs-fp8 side-by-side (--fp8-sizes; empty
  // with --no-fp8).
  std::vector<std::pair<int64_t, int64_t>> fp8_sizes;
  // --profile DIR: where the profiler traces go (pipeline_bench_profile.cc), at this size.
  std::string profile_dir;
  std::pair<int64_t, int64_t> profile_size = {1024, 1024};
};

// Section 5: the pipeline per stage and end to end (pipeline_bench_pipeline.cc).
void RunPipelineSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt);

// --profile DIR: one profiled Generate per precision, saved as Chrome-trace JSON in
// opt.profile_dir (pipeline_bench_profile.cc; summarised by tests/bench/profile_summary.py).
void RunProfileSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt);

// --ablation: the pipeline table once per speed path, switched on one after
// the other from the reference ops, each on a fresh full-size pipeline.
void RunAblationSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt);

// --lora: rank-32 LoRAs on every attention and FFN module: the end-to-end cost with a set
// applied, the first-use (cold) apply time and the time to switch sets between two jobs.
void RunLoraSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt);

// --controlnet: the pipeline with and without a resident ControlNet (Union 2.1 layout, random
// weights): DiT step, end to end, the memory it adds.
void RunControlNetSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt);

// --memory-modes: peak device memory (allocated and reserved) and s/image of each memory mode
// (default, offloaded text encoder, tiled VAE, both) at each size, full Turbo config.
void RunMemoryModesSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt);

// --png-sweep: PNG encoding time and size at 1024^2 per zlib level / row filter / strategy,
// on a rendered image (random weights) and on a smooth synthetic one.
void RunPngSection(const BenchDevice& dev, Report& rep, const PipelineBenchOptions& opt);

}  // namespace zfarm::bench

#endif  // ZFARM_TESTS_BENCH_PIPELINE_BENCH_H_
