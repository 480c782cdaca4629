// zfarm-worker cache-weights --model DIR --weights-cache DIR [--precision bf16|fp8]
//
// Writes the copy of the model's DiT that `serve --weights-cache` reads instead of
// the float32 shards: bf16 (default; half the bytes of a cold start, see
// worker/io/weights_cache.h) or, with --precision fp8, the FP8 mode's quantized DiT
// (about a quarter; worker/model/fp8_cache.h), read by serve/generate --precision fp8.
// Run once per host and model, e.g. after installing the model or from the worker
// unit's ExecStartPre. Exit 0 when the cache is current (written now or already
// there, or not useful: the DiT is already bf16), 1 on an error, 2 on usage errors.

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "proto/flags/flags.h"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"
#include "worker/io/weights_cache.h"
#include "worker/model/fp8_cache.h"

namespace zfarm::worker {
namespace {

constexpr char kCommand[] = "cache-weights";

// The text around the flag list in --help.
void Describe(flags::FlagSet* fs) {
  fs->set_description(
      "Writes the copy of the model's DiT that serve --weights-cache reads "
      "instead of the float32 shards.");
  fs->set_footer(
      "Exit status: 0 the cache is current (written now, already there, or not "
      "useful: the DiT is\nalready bf16), 1 an error, 2 usage error.\n");
  fs->set_show_defaults(true);
}

}  // namespace

int RunCacheWeights(int argc, char** argv) {
  std::string model, cache, precision = "bf16";
  flags::FlagSet fs(
      "zfarm-worker cache-weights --model DIR --weights-cache DIR [--precision bf16|fp8]");
  Describe(&fs);
  fs.String("model", &model, "model folder (diffusers layout)", "DIR");
  fs.String("weights-cache", &cache,
            "where the copy goes (local disk; ~12 GB bf16, ~6 GB fp8 for Z-Image-Turbo); pass the "
            "same DIR to serve",
            "DIR");
  fs.String("precision", &precision,
            "bf16 or fp8 (e4m3 attention/FFN weights with per-channel scales, for --precision fp8)",
            "P");
  if (std::optional<int> rc = ParseCommandFlags(kCommand, fs, argc, argv)) return *rc;
  if (model.empty() || cache.empty()) {
    return UsageError(kCommand, fs, "--model and --weights-cache are required");
  }
  if (precision != "bf16" && precision != "fp8") {
    return UsageError(kCommand, fs,
                      absl::StrCat("--precision '", precision, "': expected bf16 or fp8"));
  }
  const std::string component = model + "/transformer";
  const bool fp8 = precision == "fp8";
  if (!fp8) {
    absl::StatusOr<bool> useful = Bf16CacheUseful(component);
    if (!useful.ok()) {
      std::fprintf(stderr, "zfarm-worker cache-weights: %s\n",
                   std::string(useful.status().message()).c_str());
      return 1;
    }
    if (!*useful) {
      std::printf("%s is already bfloat16: nothing to cache\n", component.c_str());
      return 0;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::string> dir =
      fp8 ? model::WriteFp8Cache(cache, component) : WriteBf16Cache(cache, component);
  if (!dir.ok()) {
    std::fprintf(stderr, "zfarm-worker cache-weights: %s\n",
                 std::string(dir.status().message()).c_str());
    return 1;
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s cache of %s: %s (%.1f s)\n", precision.c_str(), component.c_str(),
              dir->c_str(), s);
  return 0;
}

}  // namespace zfarm::worker
