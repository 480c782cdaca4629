// zfarm-worker compare --model DIR --a bf16 --b fp8 --prompts FILE --out-dir DIR
//
// Renders every prompt of FILE with two precisions (same seed, size and steps), one
// pipeline at a time, and reports PSNR and SSIM (image_quality.h) of each pair, with a
// side-by-side PNG (A left, B right) per prompt and compare.tsv in --out-dir. This is how
// anyone with the real weights judges the FP8 mode in one command. On the CPU, fp8 runs
// the reference path (fp8.h's float32 matmul of the same quantized values): slow, for the
// tiny model and tests. Exit 0 when every pair was rendered and compared, 1 on errors,
// 2 on usage errors.

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "proto/base/files.h"
#include "proto/flags/flags.h"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"
#include "worker/commands/image_quality.h"
#include "worker/io/image_file.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

constexpr char kCommand[] = "compare";

// Every flag of compare, with its default.
struct CompareFlags {
  std::string model, a, b, prompts, out_dir, device = "cpu", weights_cache;
  int32_t width = 1024, height = 1024, steps = 8, seed = 42;
};

void DefineFlags(flags::FlagSet* fs, CompareFlags* f) {
  fs->String("model", &f->model, "model folder (diffusers layout; required)", "DIR");
  fs->String("a", &f->a, "side A's precision: fp8, bf16 or fp32 (required)", "PRECISION");
  fs->String("b", &f->b, "side B's precision, as --a (required)", "PRECISION");
  fs->String("prompts", &f->prompts,
             "one prompt per line; prompt i renders with seed SEED + i on both sides (required)",
             "FILE");
  fs->String("out-dir", &f->out_dir,
             "NNNNN.png side by side (A left, B right) and compare.tsv (required)", "DIR");
  fs->String("device", &f->device, "cpu or cuda:N", "D");
  fs->Int("width", &f->width, "image width, 16..8192");
  fs->Int("height", &f->height, "image height, 16..8192");
  fs->Int("steps", &f->steps, "steps, 1..50");
  fs->Int("seed", &f->seed, "the first prompt's seed");
  fs->String("weights-cache", &f->weights_cache,
             "the bf16 or fp8 DiT copy of `zfarm-worker cache-weights`", "DIR");
}

// The text around the flag list in --help.
void Describe(flags::FlagSet* fs) {
  fs->set_description(
      "Renders every prompt with two precisions (same seed, size and steps), "
      "one pipeline at a time.");
  fs->set_footer(
      "Prints PSNR (dB, 8-bit RGB) and SSIM (11x11 Gaussian, per channel) per "
      "prompt and\ntheir means. fp8 on the CPU uses the reference path (slow; the "
      "tiny model).\n\n"
      "example:\n"
      "  zfarm-worker compare --model M --device cuda:0 --a bf16 --b fp8 "
      "--prompts prompts.txt --out-dir cmp/\n");
  fs->set_show_defaults(true);
}

int Fail(const std::string& why) {
  std::fprintf(stderr, "zfarm-worker compare: %s\n", why.c_str());
  return 1;
}

struct Side {
  std::string flag;  // "bf16", as given
  PipelineOptions::Precision precision = PipelineOptions::Precision::kAuto;
  std::vector<std::vector<uint8_t>> rgb;  // one picture per prompt
};

// Renders every prompt with one pipeline of `side`'s precision, then releases it.
int RenderAll(PipelineOptions opts, const std::vector<std::string>& prompts,
              const GenerateRequest& base, Side* side) {
  opts.precision = side->precision;
  opts.fp8_reference = opts.device == "cpu";
  auto pipeline = Pipeline::Create(opts);
  if (!pipeline.ok()) return Fail(absl::StrCat(side->flag, ": ", pipeline.status().ToString()));
  std::printf("%s: loaded in %.2f s (%s)\n", side->flag.c_str(), (*pipeline)->load_seconds(),
              (*pipeline)->Describe().c_str());
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateRequest r = base;
    r.prompt = prompts[i];
    r.seed = base.seed + i;
    auto img = (*pipeline)->Generate(r, nullptr, nullptr);
    if (!img.ok()) return Fail(absl::StrCat(side->flag, " prompt ", i + 1, ": ", img.status().ToString()));
    std::printf("%s [%zu/%zu] %.3f s\n", side->flag.c_str(), i + 1, prompts.size(),
                img->timings.total_s);
    std::fflush(stdout);
    side->rgb.push_back(std::move(img->rgb));
  }
  return 0;
}

// 0, or 2 after printing that --`flag`'s `value` is outside [lo, hi].
int CheckRange(const flags::FlagSet& fs, const char* flag, int value, int lo, int hi) {
  if (value >= lo && value <= hi) return 0;
  return UsageError(kCommand, fs,
                    absl::StrCat("--", flag, " '", value, "': an integer in [", lo, ", ", hi, "]"));
}

}  // namespace

int RunCompare(int argc, char** argv) {
  CompareFlags f;
  flags::FlagSet fs(
      "zfarm-worker compare --model DIR --a PRECISION --b PRECISION --prompts FILE "
      "--out-dir DIR [flags]");
  Describe(&fs);
  DefineFlags(&fs, &f);
  if (std::optional<int> rc = ParseCommandFlags(kCommand, fs, argc, argv)) return *rc;
  for (const char* required : {"model", "a", "b", "prompts", "out-dir"}) {
    if (!fs.Given(required)) {
      return UsageError(kCommand, fs, absl::StrCat("--", required, " is required"));
    }
  }
  Side a, b;
  a.flag = f.a;
  b.flag = f.b;
  for (Side* s : {&a, &b}) {
    absl::StatusOr<PipelineOptions::Precision> p = ParsePrecision(s->flag);
    if (!p.ok()) {
      return UsageError(kCommand, fs,
                        absl::StrCat(s == &a ? "--a: " : "--b: ", p.status().message()));
    }
    s->precision = *p;
  }
  if (int rc = CheckRange(fs, "width", f.width, 16, 8192); rc != 0) return rc;
  if (int rc = CheckRange(fs, "height", f.height, 16, 8192); rc != 0) return rc;
  if (int rc = CheckRange(fs, "steps", f.steps, 1, 50); rc != 0) return rc;
  if (int rc = CheckRange(fs, "seed", f.seed, 0, 2147483647); rc != 0) return rc;
  GenerateRequest base;
  base.width = f.width;
  base.height = f.height;
  base.steps = f.steps;
  base.seed = static_cast<uint64_t>(f.seed);
  absl::StatusOr<std::vector<std::string>> lines = ReadPromptsFile(f.prompts);
  if (!lines.ok()) return Fail(absl::StrCat("--prompts: ", lines.status().message()));
  const std::vector<std::string> prompts = *std::move(lines);
  const std::string out_dir = f.out_dir;
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) return Fail(absl::StrCat("--out-dir ", out_dir, ": ", ec.message()));

  PipelineOptions opts;
  opts.model_dir = f.model;
  opts.device = f.device;
  if (!f.weights_cache.empty()) opts.weights_cache_dir = f.weights_cache;
  for (Side* s : {&a, &b}) {
    if (int rc = RenderAll(opts, prompts, base, s); rc != 0) return rc;
  }

  std::string tsv = "index\tprompt\tseed\tpsnr_db\tssim\n";
  double psnr_sum = 0, ssim_sum = 0;
  int finite = 0;
  std::printf("%s (A) vs %s (B), %dx%d, %d steps:\n", a.flag.c_str(), b.flag.c_str(), base.width,
              base.height, base.steps);
  for (size_t i = 0; i < prompts.size(); ++i) {
    absl::StatusOr<double> psnr = Psnr(a.rgb[i], b.rgb[i], base.width, base.height);
    absl::StatusOr<double> ssim = Ssim(a.rgb[i], b.rgb[i], base.width, base.height);
    if (!psnr.ok()) return Fail(psnr.status().ToString());
    if (!ssim.ok()) return Fail(ssim.status().ToString());
    const std::string file = absl::StrFormat("%s/%05d.png", out_dir, static_cast<int>(i + 1));
    ImageParameters p;
    p.prompt = absl::StrCat(prompts[i], "\n(left: ", a.flag, ", right: ", b.flag, ")");
    p.steps = base.steps;
    p.seed = base.seed + i;
    p.width = 2 * base.width;
    p.height = base.height;
    p.device = opts.device;
    if (absl::Status s = WriteImage(file, SideBySide(a.rgb[i], b.rgb[i], base.width, base.height),
                                    p, ImageFormat::kPng, 0);
        !s.ok()) {
      return Fail(s.ToString());
    }
    std::printf("  [%zu] PSNR %.2f dB, SSIM %.4f  %s  (%s)\n", i + 1, *psnr, *ssim, file.c_str(),
                prompts[i].c_str());
    absl::StrAppend(&tsv, i + 1, "\t", prompts[i], "\t", base.seed + i, "\t",
                    absl::StrFormat("%.4f", *psnr), "\t", absl::StrFormat("%.6f", *ssim), "\n");
    if (std::isfinite(*psnr)) {
      psnr_sum += *psnr;
      ++finite;
    }
    ssim_sum += *ssim;
  }
  std::printf("mean: PSNR %.2f dB over %d differing pair(s), SSIM %.4f over %zu\n",
              finite > 0 ? psnr_sum / finite : std::numeric_limits<double>::infinity(), finite,
              ssim_sum / prompts.size(), prompts.size());
  if (absl::Status s = base::WriteFileAtomically(out_dir + "/compare.tsv", tsv); !s.ok()) {
    return Fail(s.ToString());
  }
  return 0;
}

}  // namespace zfarm::worker
