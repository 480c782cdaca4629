#ifndef ZFARM_WORKER_IO_WEIGHTS_CACHE_H_
#define ZFARM_WORKER_IO_WEIGHTS_CACHE_H_

// File: weights_cache.h
// A bfloat16 copy of a model component for faster cold starts. Z-Image-Turbo
// ships its DiT in float32 (24 GB) while CUDA workers compute in bfloat16, so
// half of every cold start's disk read is thrown away; the cache holds exactly
// what the worker keeps (12 GB) and is read instead when it is current.
//
//   zfarm-worker cache-weights --model M --weights-cache C   # once per host (and model)
//   zfarm-worker serve --model M --weights-cache C ...       # DiT from the cache if current
//
// Layout: C/<component>-bf16-<key>/model.safetensors, where <key> (16 hex) is a
// sha256 over the format version and every file of the component folder (name,
// size, modification time, the JSON configs and the safetensors headers): a
// replaced or retrained checkpoint gets a new key, never a stale cache. Written
// to a temporary folder and renamed into place (workers starting meanwhile use
// the source); bf16 rounding is round-to-nearest-even, as the source loader's.
// Torch-free. Thread-compatible.

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/io/safetensors.h"

namespace zfarm::worker {

// Any kind of copy ("bf16" here; "fp8", the FP8 mode's quantized DiT, in
// worker/model/fp8_cache.h): C/<component>-<kind>-<key>/model.safetensors, the key
// over "zfarm-<kind>-cache-v1" and the source files as above.
absl::StatusOr<std::string> WeightsCacheDir(const std::string& cache_root,
                                            const std::string& component_dir,
                                            std::string_view kind);
bool WeightsCachePresent(const std::string& cache_dir);

// What a copy holds: its tensors in file order (computed from the source), and a
// writer that appends one tensor's bytes (called once per spec, in that order).
struct WeightsCacheContent {
  std::function<absl::StatusOr<std::vector<TensorSpec>>(const WeightSet& source)> plan;
  std::function<absl::Status(const WeightSet& source, const TensorSpec& spec,
                             SafetensorsStreamWriter& out)>
      write;
};

// Writes the `kind` copy of `component_dir` (locked, temporary file + rename, as
// WriteBf16Cache) and returns its folder; OK without writing when it is there.
absl::StatusOr<std::string> WriteWeightsCache(const std::string& cache_root,
                                              const std::string& component_dir,
                                              std::string_view kind,
                                              const WeightsCacheContent& content);

// The cache folder of `component_dir` under `cache_root` (it may not exist).
absl::StatusOr<std::string> Bf16CacheDir(const std::string& cache_root,
                                         const std::string& component_dir);

// True when `cache_dir` (from Bf16CacheDir) holds a completely written copy.
bool Bf16CachePresent(const std::string& cache_dir);

// True when `component_dir` holds float32 or float16 tensors (a cache helps).
absl::StatusOr<bool> Bf16CacheUseful(const std::string& component_dir);

// Writes the bf16 copy of `component_dir` into Bf16CacheDir(cache_root, ...)
// and returns that folder. OK without writing when it is already there;
// concurrent writers of the same copy are serialised (flock), so it is written once.
absl::StatusOr<std::string> WriteBf16Cache(const std::string& cache_root,
                                           const std::string& component_dir);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_WEIGHTS_CACHE_H_
