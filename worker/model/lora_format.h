#ifndef ZFARM_WORKER_MODEL_LORA_FORMAT_H_
#define ZFARM_WORKER_MODEL_LORA_FORMAT_H_

// LoRA files for the Z-Image DiT: format detection, key conversion and reading,
// as diffusers' ZImageLoraLoaderMixin.lora_state_dict and
// _convert_non_diffusers_z_image_lora_to_diffusers do it. Torch-free.
//
// Accepted layouts (one file may mix the naming steps diffusers applies to all keys):
//   diffusers / PEFT  transformer.layers.0.attention.to_q.lora_A.weight / .lora_B.weight
//                     (optional .alpha; "default." adapter segments are dropped)
//   kohya / musubi    lora_unet_layers_0_attention_to_q.lora_down.weight / .lora_up / .alpha
//   ComfyUI/original  diffusion_model.layers.0.attention.to_q.lora_A.weight, and ComfyUI's
//                     own module names: attention.qkv (one LoRA for the fused q/k/v
//                     projection; lora_B is split by rows into thirds for to_q, to_k, to_v,
//                     lora_A shared) and attention.out (= attention.to_out.0)
//   dot               ...attention.to.q.lora.down.weight / .lora.up.weight (Anime-Z style);
//                     its redundant attention.qkv / attention.out copies are skipped when
//                     the per-projection keys are present (as diffusers does), used otherwise
// The effective update of a module's weight W [out, in] is
//   W += scale * multiplier * up @ down,  multiplier = alpha / rank (1 without alpha),
// times lora_alpha / r from diffusers' "lora_adapter_metadata" when the file has it.
// Every key must be consumed: a key that maps to no LoRA tensor, a down without its up, two
// files keys for the same module, DoRA magnitudes or a text-encoder LoRA are errors naming
// the key (nothing is skipped silently).
//
//   ZFARM_ASSIGN_OR_RETURN(LoraLayout l, ConvertLoraKeys(keys));      // pure, on names
//   ZFARM_ASSIGN_OR_RETURN(LoraFile f, ReadLoraFile("/loras/ink.safetensors"));
//   ZFARM_RETURN_IF_ERROR(CheckLoraAgainstModel(f, shape_of));       // shapes vs the model

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace zfarm::worker {

// At most this many LoRAs per job, each scale within +-kMaxLoraScale.
inline constexpr int kMaxLorasPerJob = 8;
inline constexpr float kMaxLoraScale = 4.0f;
// LoRA files larger than this are refused (a full-rank "LoRA" of the whole DiT is ~24 GB).
inline constexpr uint64_t kMaxLoraFileBytes = uint64_t{4} << 30;

enum class LoraFormat { kDiffusers, kKohya, kComfy, kDot };
// "diffusers", "kohya", "comfyui", "dot".
std::string_view LoraFormatName(LoraFormat format);

// Where one model module's update comes from in the file.
struct LoraModuleKeys {
  std::string module;     // model module, e.g. "layers.0.attention.to_q" (its weight: + ".weight")
  std::string down_key;   // file key of down / lora_A [rank, in]
  std::string up_key;     // file key of up / lora_B [out, rank] (or [3 * out, rank] for qkv)
  std::string alpha_key;  // file key of the scalar alpha; empty when the file has none
  // For a fused attention.qkv LoRA: which third of up's rows (0 q, 1 k, 2 v); -1 = all rows.
  int up_third = -1;
};

struct LoraLayout {
  LoraFormat format = LoraFormat::kDiffusers;
  std::vector<LoraModuleKeys> modules;  // sorted by module name
  // File keys deliberately not used: the dot format's duplicate qkv/out copies.
  std::vector<std::string> skipped;
};

// Maps a file's tensor names to model modules (pure; the unit tests feed key lists).
// INVALID_ARGUMENT naming the key for everything listed in the header comment.
absl::StatusOr<LoraLayout> ConvertLoraKeys(const std::vector<std::string>& keys);

// One module's update, read into float32.
struct LoraModule {
  std::string module;    // "layers.0.attention.to_q"
  std::string down_key;  // for messages
  int64_t rank = 0, in = 0, out = 0;
  bool has_alpha = false;
  float alpha = 0;       // when has_alpha
  float multiplier = 1;  // alpha / rank (and the metadata's lora_alpha / r)
  std::vector<float> down;  // [rank, in] row-major
  std::vector<float> up;    // [out, rank] row-major
};

struct LoraFile {
  std::string path;
  std::string sha256;  // lower-case hex of the whole file
  LoraLayout layout;
  std::vector<LoraModule> modules;  // layout order
  int64_t float_bytes() const;      // size of the float32 tensors held
};

// Reads and converts a LoRA .safetensors file: the header is bound-checked (a truncated
// file or damaged header is INVALID_ARGUMENT naming the file), shapes must be rank x in /
// out x rank with equal ranks, alpha a finite scalar. Errors name the file and the key.
absl::StatusOr<LoraFile> ReadLoraFile(const std::string& path);

// Shape of a model parameter by name ("layers.0.attention.to_q.weight"); nullptr if the
// model has none.
using ParamShapeFn = std::function<const std::vector<int64_t>*(const std::string& name)>;

// Every module must be a 2-D weight of the model with shape [out, in]; INVALID_ARGUMENT
// naming the file, the key and both shapes otherwise (a LoRA for another architecture).
absl::Status CheckLoraAgainstModel(const LoraFile& file, const ParamShapeFn& shape_of);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_MODEL_LORA_FORMAT_H_
