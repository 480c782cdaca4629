#ifndef ZFARM_WORKER_IO_MODEL_FOLDER_H_
#define ZFARM_WORKER_IO_MODEL_FOLDER_H_

// Parses a Z-Image model folder in the diffusers layout (worker/model/README.md):
//   model_index.json, scheduler/scheduler_config.json, text_encoder/config.json,
//   transformer/config.json, vae/config.json, tokenizer/tokenizer.json
// into ModelConfig. Errors name the file and the key:
//   "/m/transformer/config.json: key 'n_heads': expected an integer, got string"

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/io/model_config.h"
#include "worker/io/safetensors.h"

namespace zfarm::worker {

// Reads and validates every config of the folder `dir`. Does not open weights.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

// Consistency checks (dim % n_heads, sum(axes_dims) == head_dim, GQA divisibility,
// GroupNorm groups dividing channels, ...). LoadModelConfig() calls it.
absl::Status ValidateModelConfig(const ModelConfig& config);

// Text-encoder keys: the official files may store Qwen3 weights with or without the
// "model." prefix (diffusers' save_pretrained of a Qwen3Model drops it). Callers use the
// unprefixed name ("layers.0.self_attn.q_proj.weight"); these find either spelling.
std::string_view StripModelPrefix(std::string_view name);
const TensorInfo* FindTextEncoderTensor(const WeightSet& weights, std::string_view name);
absl::StatusOr<TensorView> GetTextEncoderTensor(const WeightSet& weights, std::string_view name);

// The configuration of a Z-Image ControlNet at `path` (worker/model/controlnet.h): a diffusers
// folder (config.json with _class_name ZImageControlNetModel plus
// diffusion_pytorch_model*.safetensors) or a single .safetensors file, whose layout is read
// from its keys as diffusers' single-file loader does: 2.x when the control context is wider
// than the latent or control_layers.14 exists, then 2.0 when
// control_noise_refiner.0.before_proj.weight is missing or all zero, else 2.1; 1.0 otherwise.
// A file's main-layer places spread evenly over the DiT's layers ([0, 5, ..., 25] and
// [0, 2, ..., 28] for the published files), its refiner places are [0, 1, ...]. The
// ControlNet must fit `dit`: INVALID_ARGUMENT naming the key (or tensor) and both values
// otherwise (a ControlNet for another base model), and for an unknown config key or a place
// outside the DiT's layers. NOT_FOUND when the path does not exist.
absl::StatusOr<ControlNetConfig> ReadControlNetConfig(const std::string& path,
                                                      const TransformerConfig& dit);

// The weights of the ControlNet at `path` (folder or single file).
absl::StatusOr<std::unique_ptr<WeightSet>> OpenControlNetWeights(const std::string& path);

// "1.0", "2.0", "2.1".
const char* ControlNetLayoutName(ControlNetConfig::Layout layout);

// The name a ControlNet goes by in image metadata and the worker's hello: the last path
// component without ".safetensors" ("/m/Z-Image-Turbo-Fun-Controlnet-Union-2.1/" ->
// "Z-Image-Turbo-Fun-Controlnet-Union-2.1").
std::string ControlNetName(const std::string& path);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_MODEL_FOLDER_H_
