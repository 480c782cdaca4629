#ifndef ZFARM_WORKER_MODEL_WEIGHTS_H_
#define ZFARM_WORKER_MODEL_WEIGHTS_H_

// Strict loading of safetensors weights into the modules of modules.h.
// Internal to worker/model and worker/pipeline (includes Torch).

#include <torch/nn/module.h>

#include <functional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "worker/io/safetensors.h"

namespace zfarm::worker::model {

struct LoadSpec {
  // Component name used in messages ("transformer", "text_encoder", "vae").
  std::string component;
  // Checkpoint key -> module key (e.g. strips the text encoder's "model." prefix).
  std::function<std::string(std::string_view)> key_map;
  // Module keys that the checkpoint may contain but the module deliberately
  // does not hold (the encoder's last layer, the VAE encoder).
  std::function<bool(const std::string&)> ignore;
};

// Copies every tensor of `weights` into the parameter of `module` with the same
// (mapped) name, converting dtype and device tensor by tensor straight from the
// mmapped bytes (no whole-model host copy). Strict: INVALID_ARGUMENT naming the
// component and key for an unexpected key, a missing key, or a shape mismatch
// ("transformer: key 'layers.0.attention.to_q.weight': expected shape [64, 64],
// found [64, 32]"). Accepted storage dtypes: F32, BF16, F16, and F8_E4M3 exactly for the
// uint8 parameters of FP8 layers (fp8.h); a mismatch either way is INVALID_ARGUMENT.
// Third-party failures: c10::OutOfMemoryError -> RESOURCE_EXHAUSTED, other
// c10::Error -> INTERNAL.
absl::Status LoadWeights(torch::nn::Module& module, const WeightSet& weights, const LoadSpec& spec);

}  // namespace zfarm::worker::model

#endif  // ZFARM_WORKER_MODEL_WEIGHTS_H_
