#ifndef ZFARM_WORKER_MODEL_FP8_CACHE_H_
#define ZFARM_WORKER_MODEL_FP8_CACHE_H_

// The FP8 weights cache (`zfarm-worker cache-weights --precision fp8`, read by
// `--precision fp8 --weights-cache DIR`): the DiT as the FP8 mode holds it, so a cold
// start reads about a quarter of the float32 source's bytes. Each Linear layer of the
// recipe (fp8.h) is stored as "<layer>.weight" in F8_E4M3 plus "<layer>.weight_scale"
// (float32 [out]); every other tensor in bf16. The weights are rounded to bf16 first and
// then quantized, exactly as the pipeline quantizes a bf16 DiT at load, so a render from
// the cache equals one from the source bit for bit. Folder, key, lock, temporary file and
// rename: worker/io/weights_cache.h (kind "fp8"). Internal to worker/model and
// worker/pipeline (includes Torch). Thread-compatible.

#include <string>

#include "absl/status/statusor.h"

namespace zfarm::worker::model {

inline constexpr char kFp8CacheKind[] = "fp8";

// Writes the FP8 copy of `component_dir` (a DiT folder) under `cache_root` and returns
// its folder (OK without writing when it is already there). Errors name the file or key.
absl::StatusOr<std::string> WriteFp8Cache(const std::string& cache_root,
                                          const std::string& component_dir);

}  // namespace zfarm::worker::model

#endif  // ZFARM_WORKER_MODEL_FP8_CACHE_H_
