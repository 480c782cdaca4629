#ifndef ZFARM_WORKER_MODEL_LORA_H_
#define ZFARM_WORKER_MODEL_LORA_H_

// Applies sets of LoRAs (lora_format.h) to the DiT's weights, in place and exactly
// reversibly. Internal to worker/model and worker/pipeline (includes Torch).
//
// Each targeted weight W gets  W = pristine + sum_i scale_i * multiplier_i * up_i @ down_i
// in one GEMM per weight (the stacked factors concatenated along the rank), accumulated in
// float32 and rounded once to the weight's dtype, written straight into W. The first time a weight is
// touched a copy of it is kept on its device ("pristine"), and every later set starts from
// that copy: switching sets, or going back to no LoRA, restores the exact original bytes —
// no drift however many sets were applied. Weights are written with copy_() into the
// existing tensors, so CUDA graphs captured against them and the fused q/k/v and w1/w3
// projections (whose per-projection parameters are views into the fused weight, so a
// to_k update lands in the right rows) stay valid.
//
// Parsed files are cached on the device by sha256 (LRU, at most max_files files and
// max_bytes of float32 tensors), so switching between recent sets reads no file.
//
//   LoraApplier loras(*transformer);
//   ZFARM_ASSIGN_OR_RETURN(auto shas, loras.Apply({{"ink", "/loras/ink.safetensors", "", 0.8f}}));
//
// Thread-compatible: one inference thread owns it (the one that owns the device).

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/model/lora_format.h"

namespace zfarm::worker::model {

class LoraApplier {
 public:
  struct Entry {
    std::string name;    // for messages and active()
    std::string path;    // the .safetensors file
    std::string sha256;  // of the file; empty = computed from the file now
    float scale = 1.0f;
  };

  explicit LoraApplier(torch::nn::Module& transformer, int max_files = 16,
                       int64_t max_bytes = int64_t{2} << 30);

  // Makes the weights carry exactly `set` (empty = the original weights). Checks the
  // whole set first (count, scales, names, files, keys and shapes against the model;
  // INVALID_ARGUMENT naming the file and key) and touches no weight when anything is wrong.
  // Returns at once when `set` equals what is applied. RESOURCE_EXHAUSTED on device OOM
  // (the original weights are restored and their copies released). Returns each entry's sha256.
  absl::StatusOr<std::vector<std::string>> Apply(const std::vector<Entry>& set);

  // Names of the applied LoRAs, in order.
  std::vector<std::string> active() const;
  // Shape of a transformer parameter (for CheckLoraAgainstModel); nullptr if none.
  const std::vector<int64_t>* ParamShape(const std::string& name) const;
  // Bytes held by the pristine copies.
  int64_t pristine_bytes() const;
  // Parsed files in the device cache.
  int cached_files() const { return static_cast<int>(cache_.size()); }

 private:
  // A parsed file on the device: per module {weight name, down [r, in], up [out, r], multiplier}.
  struct DeviceLora {
    std::string sha256;
    struct Module {
      std::string param;
      at::Tensor down, up;
      float multiplier = 1;
    };
    std::vector<Module> modules;
    int64_t bytes = 0;
  };
  struct Applied {
    std::string name, sha256;
    float scale = 0;
    bool operator==(const Applied& o) const {
      return name == o.name && sha256 == o.sha256 && scale == o.scale;
    }
  };

  absl::StatusOr<std::shared_ptr<const DeviceLora>> Load(const Entry& e, const std::string& sha);
  // Copies every original back; false (copies kept) when that failed.
  bool RestoreAll();

  std::map<std::string, at::Tensor> params_;  // transformer weights by name
  std::map<std::string, std::vector<int64_t>> shapes_;
  std::map<std::string, at::Tensor> pristine_;  // original copies of touched weights
  std::vector<std::string> touched_;            // weights that differ from pristine now
  std::vector<Applied> applied_;
  // LRU by sha256, newest last.
  std::list<std::shared_ptr<const DeviceLora>> cache_;
  int max_files_;
  int64_t max_bytes_;
};

}  // namespace zfarm::worker::model

#endif  // ZFARM_WORKER_MODEL_LORA_H_
