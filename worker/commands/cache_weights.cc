// zfarm-worker cache-weights --model DIR --weights-cache DIR
//
// Writes the bfloat16 copy of the model's DiT that `serve --weights-cache` reads
// instead of the float32 shards (half the bytes of a cold start; see
// worker/io/weights_cache.h). Run once per host and model, e.g. after installing
// the model or from the worker unit's ExecStartPre. Exit 0 when the cache is
// current (written now or already there, or not useful: the DiT is already
// bf16), 1 on an error, 2 on usage errors.

#include <chrono>
#include <cstdio>
#include <string>

#include "worker/commands/commands.h"
#include "worker/io/weights_cache.h"

namespace zfarm::worker {
namespace {

void Usage() {
  std::fprintf(stderr,
               "usage: zfarm-worker cache-weights --model DIR --weights-cache DIR\n"
               "  --model DIR          model folder (diffusers layout)\n"
               "  --weights-cache DIR  where the bf16 copy goes (local disk; ~12 GB for\n"
               "                       Z-Image-Turbo); pass the same DIR to serve\n");
}

}  // namespace

int RunCacheWeights(int argc, char** argv) {
  std::string model, cache;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--model" || a == "--weights-cache") && i + 1 < argc) {
      (a == "--model" ? model : cache) = argv[++i];
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
  const std::string component = model + "/transformer";
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
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::string> dir = WriteBf16Cache(cache, component);
  if (!dir.ok()) {
    std::fprintf(stderr, "zfarm-worker cache-weights: %s\n",
                 std::string(dir.status().message()).c_str());
    return 1;
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("bf16 cache of %s: %s (%.1f s)\n", component.c_str(), dir->c_str(), s);
  return 0;
}

}  // namespace zfarm::worker
