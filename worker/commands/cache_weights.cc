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
#include <string>

#include "worker/commands/commands.h"
#include "worker/io/weights_cache.h"
#include "worker/model/fp8_cache.h"

namespace zfarm::worker {
namespace {

void Usage() {
  std::fprintf(stderr,
               "usage: zfarm-worker cache-weights --model DIR --weights-cache DIR "
               "[--precision bf16|fp8]\n"
               "  --model DIR          model folder (diffusers layout)\n"
               "  --weights-cache DIR  where the copy goes (local disk; ~12 GB bf16, ~6 GB fp8\n"
               "                       for Z-Image-Turbo); pass the same DIR to serve\n"
               "  --precision P        bf16 (default) or fp8 (e4m3 attention/FFN weights with\n"
               "                       per-channel scales, for --precision fp8)\n");
}

}  // namespace

int RunCacheWeights(int argc, char** argv) {
  std::string model, cache, precision = "bf16";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--model" || a == "--weights-cache" || a == "--precision") && i + 1 < argc) {
      (a == "--model" ? model : a == "--precision" ? precision : cache) = argv[++i];
    } else if (a == "--help" || a == "-h") {
      Usage();
      return 0;
    } else {
      std::fprintf(stderr, "zfarm-worker cache-weights: unknown or incomplete argument '%s'\n",
                   a.c_str());
      Usage();
      return 2;
    }
  }
  if (model.empty() || cache.empty()) {
    std::fprintf(stderr, "zfarm-worker cache-weights: --model and --weights-cache are required\n");
    Usage();
    return 2;
  }
  if (precision != "bf16" && precision != "fp8") {
    std::fprintf(stderr, "zfarm-worker cache-weights: --precision '%s': expected bf16 or fp8\n",
                 precision.c_str());
    Usage();
    return 2;
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
