#ifndef ZFARM_WORKER_IO_MODEL_CONFIG_H_
#define ZFARM_WORKER_IO_MODEL_CONFIG_H_

// Plain configuration structs for the components of a Z-Image model folder
// (diffusers layout, see worker/model/README.md). Defaults are the real
// Z-Image-Turbo values; every size used by the model comes from these structs, never
// from constants. Torch-free.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace zfarm::worker {

// transformer/config.json (ZImageTransformer2DModel).
struct TransformerConfig {
  int64_t in_channels = 16;
  int64_t dim = 3840;
  int64_t n_layers = 30;
  int64_t n_refiner_layers = 2;
  int64_t n_heads = 30;
  int64_t n_kv_heads = 30;  // diffusers ignores it: q, k and v all use n_heads.
  double norm_eps = 1e-5;
  bool qk_norm = true;
  int64_t cap_feat_dim = 2560;
  double rope_theta = 256.0;
  double t_scale = 1000.0;
  std::vector<int64_t> axes_dims = {32, 48, 48};
  std::vector<int64_t> axes_lens = {1536, 512, 512};
  int64_t patch_size = 2;    // all_patch_size[0]
  int64_t f_patch_size = 1;  // all_f_patch_size[0]

  int64_t head_dim() const { return dim / n_heads; }
  // adaLN width: min(dim, 256).
  int64_t adaln_dim() const { return std::min<int64_t>(dim, 256); }
  // FFN hidden size: int(dim / 3 * 8) as in diffusers.
  int64_t ffn_hidden_dim() const { return static_cast<int64_t>(static_cast<double>(dim) / 3.0 * 8.0); }
};

// text_encoder/config.json (Qwen3).
struct TextEncoderConfig {
  int64_t vocab_size = 151936;
  int64_t hidden_size = 2560;
  int64_t num_hidden_layers = 36;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 8;
  int64_t head_dim = 128;
  int64_t intermediate_size = 9728;
  double rms_norm_eps = 1e-6;
  double rope_theta = 1000000.0;
  int64_t max_position_embeddings = 40960;
  bool tie_word_embeddings = true;
  bool attention_bias = false;
};

// vae/config.json (AutoencoderKL, FLUX.1 VAE).
struct VaeConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  int64_t latent_channels = 16;
  std::vector<int64_t> block_out_channels = {128, 256, 512, 512};
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 32;
  double scaling_factor = 0.3611;
  double shift_factor = 0.1159;
  bool use_quant_conv = false;
  bool use_post_quant_conv = false;
  bool mid_block_add_attention = true;
};

// scheduler/scheduler_config.json (FlowMatchEulerDiscreteScheduler).
struct SchedulerConfig {
  int64_t num_train_timesteps = 1000;
  double shift = 3.0;
  bool use_dynamic_shifting = false;
  double base_shift = 0.5;
  double max_shift = 1.15;
  int64_t base_image_seq_len = 256;
  int64_t max_image_seq_len = 4096;
};

// Everything parsed from a model folder's JSON files.
struct ModelConfig {
  std::string root;  // the folder
  TransformerConfig transformer;
  TextEncoderConfig text_encoder;
  VaeConfig vae;
  SchedulerConfig scheduler;
  std::string tokenizer_json_path;  // <root>/tokenizer/tokenizer.json
};

// A Z-Image-Turbo-Fun-Controlnet-Union (diffusers' ZImageControlNetModel config; the sizes it
// shares with the DiT must equal the DiT's). Layouts: worker/model/controlnet.h.
struct ControlNetConfig {
  enum class Layout { kUnion, kUnion20, kUnion21 };  // 1.0, 2.0, 2.1
  Layout layout = Layout::kUnion21;
  std::vector<int64_t> control_layers_places;          // main DiT layers that get a hint
  std::vector<int64_t> control_refiner_layers_places;  // noise refiner blocks (2.x)
  int64_t control_in_dim = 33;   // channels of the control context
  int64_t n_refiner_layers = 2;  // control_noise_refiner blocks (1.0 and 2.1)
  // Where the config came from: "<dir>/config.json" or "<file> (layout from its keys)".
  std::string source;
};

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_MODEL_CONFIG_H_
