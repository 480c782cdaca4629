#ifndef ZFARM_WORKER_IO_MODEL_FOLDER_H_
#define ZFARM_WORKER_IO_MODEL_FOLDER_H_

// Parses a Z-Image model folder in the diffusers layout (worker/model/README.md):
//   model_index.json, scheduler/scheduler_config.json, text_encoder/config.json,
//   transformer/config.json, vae/config.json, tokenizer/tokenizer.json
// into ModelConfig. Errors name the file and the key:
//   "/m/transformer/config.json: key 'n_heads': expected an integer, got string"

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

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_MODEL_FOLDER_H_
