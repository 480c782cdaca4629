// make_tiny_model: writes a Z-Image model folder in the real diffusers layout with
// deterministic pseudo-random weights.
//
//   make_tiny_model --out DIR --tokenizer PATH/tokenizer.json [--variant tiny|full-random]
//                   [--sparse] [--force]
//
// tiny:        small configs that exercise what the real model does not (dim < 256 so the
//              adaLN width is dim, GQA in the text encoder, 4 VAE blocks with channel changes);
//              byte-identical on every run (tests assert the sha256 of every file).
// full-random: the full-size real configuration (F32 DiT ~24.6 GB, BF16 text encoder ~8 GB,
//              BF16 VAE); streamed tensor by tensor with bounded memory. --sparse writes only
//              the headers and leaves the data as a hole (header-scan benchmarks).
//
// Weights: splitmix64 seeded by FNV-1a(tensor name), normal deviates from the Irwin-Hall sum of
// four uniforms (integer/IEEE arithmetic only, so the bytes never depend on libm). Linear and
// conv weights have std clamp(1/sqrt(fan_in), 0.02, 0.2); norm weights 1 + 0.05 N; biases
// 0.02 N. Also writes DIR/manifest.md5 (md5sum format, every file) for `zfarm-worker verify`.

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "proto/base/files.h"
#include "proto/base/status_macros.h"
#include "worker/io/file_util.h"
#include "worker/io/manifest.h"
#include "worker/io/model_config.h"
#include "worker/io/safetensors.h"

namespace zfarm::worker {
namespace {

namespace fs = std::filesystem;
using OJson = nlohmann::ordered_json;

// ---------------------------------------------------------------- deterministic values

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Approximately N(0, 1): sum of four U(0,1) (24-bit) minus 2, times sqrt(3).
  float Normal() {
    float s = 0;
    for (int i = 0; i < 4; ++i) s += static_cast<float>(Next() >> 40) * (1.0f / 16777216.0f);
    return (s - 2.0f) * 1.7320508f;
  }

 private:
  uint64_t s_;
};

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

enum class Init { kWeight, kNorm, kBias, kEmbed };

Init InitFor(const TensorSpec& t) {
  const std::string& n = t.name;
  if (absl::EndsWith(n, ".bias")) return Init::kBias;
  if (absl::StrContains(n, "embed_tokens")) return Init::kEmbed;
  if (t.shape.size() == 1) return Init::kNorm;  // RMSNorm / GroupNorm weights
  return Init::kWeight;
}

// Streams the tensor's bytes in chunks to `sink`.
template <typename Sink>
absl::Status GenerateTensor(const TensorSpec& t, Sink&& sink) {
  Rng rng(Fnv1a(t.name));
  const Init init = InitFor(t);
  int64_t fan_in = 1;
  for (size_t i = 1; i < t.shape.size(); ++i) fan_in *= t.shape[i];
  float std = 0.02f;
  if (init == Init::kWeight) {
    std = static_cast<float>(1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(fan_in, 1))));
    std = std::clamp(std, 0.02f, 0.2f);
  } else if (init == Init::kEmbed) {
    std = 0.1f;
  } else if (init == Init::kNorm) {
    std = 0.05f;
  }
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  const size_t es = DTypeSize(t.dtype);
  constexpr int64_t kChunk = 1 << 20;
  std::string buf;
  for (int64_t done = 0; done < n; done += kChunk) {
    const int64_t m = std::min(kChunk, n - done);
    buf.resize(static_cast<size_t>(m) * es);
    for (int64_t i = 0; i < m; ++i) {
      float v = rng.Normal() * std + (init == Init::kNorm ? 1.0f : 0.0f);
      if (t.dtype == DType::kF32) {
        std::memcpy(&buf[static_cast<size_t>(i) * 4], &v, 4);
      } else {
        uint16_t h = t.dtype == DType::kBF16 ? F32ToBF16(v) : F32ToF16(v);
        std::memcpy(&buf[static_cast<size_t>(i) * 2], &h, 2);
      }
    }
    ZFARM_RETURN_IF_ERROR(sink(buf));
  }
  return absl::OkStatus();
}

uint64_t Bytes(const TensorSpec& t) {
  uint64_t n = DTypeSize(t.dtype);
  for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
  return n;
}

// ---------------------------------------------------------------- key sets

std::vector<TensorSpec> TransformerTensors(const TransformerConfig& c) {
  const DType f = DType::kF32;
  const int64_t d = c.dim, a = c.adaln_dim(), hd = c.head_dim(), ff = c.ffn_hidden_dim();
  const int64_t patch = c.patch_size * c.patch_size * c.f_patch_size * c.in_channels;
  const std::string px = absl::StrCat(c.patch_size, "-", c.f_patch_size);
  std::vector<TensorSpec> t = {
      {absl::StrCat("all_x_embedder.", px, ".weight"), f, {d, patch}},
      {absl::StrCat("all_x_embedder.", px, ".bias"), f, {d}},
      {"t_embedder.mlp.0.weight", f, {1024, 256}},
      {"t_embedder.mlp.0.bias", f, {1024}},
      {"t_embedder.mlp.2.weight", f, {a, 1024}},
      {"t_embedder.mlp.2.bias", f, {a}},
      {"cap_embedder.0.weight", f, {c.cap_feat_dim}},
      {"cap_embedder.1.weight", f, {d, c.cap_feat_dim}},
      {"cap_embedder.1.bias", f, {d}},
      {"x_pad_token", f, {1, d}},
      {"cap_pad_token", f, {1, d}},
      {absl::StrCat("all_final_layer.", px, ".adaLN_modulation.1.weight"), f, {d, a}},
      {absl::StrCat("all_final_layer.", px, ".adaLN_modulation.1.bias"), f, {d}},
      {absl::StrCat("all_final_layer.", px, ".linear.weight"), f, {patch, d}},
      {absl::StrCat("all_final_layer.", px, ".linear.bias"), f, {patch}},
  };
  auto block = [&](const std::string& p, bool modulated) {
    for (const char* n : {"to_q", "to_k", "to_v", "to_out.0"}) {
      t.push_back({absl::StrCat(p, ".attention.", n, ".weight"), f, {d, d}});
    }
    t.push_back({p + ".attention.norm_q.weight", f, {hd}});
    t.push_back({p + ".attention.norm_k.weight", f, {hd}});
    t.push_back({p + ".feed_forward.w1.weight", f, {ff, d}});
    t.push_back({p + ".feed_forward.w2.weight", f, {d, ff}});
    t.push_back({p + ".feed_forward.w3.weight", f, {ff, d}});
    for (const char* n : {"attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2"}) {
      t.push_back({absl::StrCat(p, ".", n, ".weight"), f, {d}});
    }
    if (modulated) {
      t.push_back({p + ".adaLN_modulation.0.weight", f, {4 * d, a}});
      t.push_back({p + ".adaLN_modulation.0.bias", f, {4 * d}});
    }
  };
  for (int64_t i = 0; i < c.n_refiner_layers; ++i) block(absl::StrCat("noise_refiner.", i), true);
  for (int64_t i = 0; i < c.n_refiner_layers; ++i)
    block(absl::StrCat("context_refiner.", i), false);
  for (int64_t i = 0; i < c.n_layers; ++i) block(absl::StrCat("layers.", i), true);
  return t;
}

std::vector<TensorSpec> TextEncoderTensors(const TextEncoderConfig& c) {
  const DType b = DType::kBF16;
  const int64_t h = c.hidden_size, hd = c.head_dim, q = c.num_attention_heads * hd,
                kv = c.num_key_value_heads * hd, im = c.intermediate_size;
  std::vector<TensorSpec> t = {{"embed_tokens.weight", b, {c.vocab_size, h}}};
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("layers.", i, ".");
    t.push_back({p + "input_layernorm.weight", b, {h}});
    t.push_back({p + "self_attn.q_proj.weight", b, {q, h}});
    t.push_back({p + "self_attn.k_proj.weight", b, {kv, h}});
    t.push_back({p + "self_attn.v_proj.weight", b, {kv, h}});
    t.push_back({p + "self_attn.o_proj.weight", b, {h, q}});
    t.push_back({p + "self_attn.q_norm.weight", b, {hd}});
    t.push_back({p + "self_attn.k_norm.weight", b, {hd}});
    t.push_back({p + "post_attention_layernorm.weight", b, {h}});
    t.push_back({p + "mlp.gate_proj.weight", b, {im, h}});
    t.push_back({p + "mlp.up_proj.weight", b, {im, h}});
    t.push_back({p + "mlp.down_proj.weight", b, {h, im}});
  }
  t.push_back({"norm.weight", b, {h}});
  return t;
}

// diffusers AutoencoderKL state dict (Encoder / Decoder of models/autoencoders/vae.py,
// DownEncoderBlock2D / UpDecoderBlock2D / UNetMidBlock2D, ResnetBlock2D, Attention).
std::vector<TensorSpec> VaeTensors(const VaeConfig& c) {
  const DType b = DType::kBF16;
  std::vector<TensorSpec> t;
  auto conv = [&](const std::string& p, int64_t co, int64_t ci, int64_t k) {
    t.push_back({p + ".weight", b, {co, ci, k, k}});
    t.push_back({p + ".bias", b, {co}});
  };
  auto norm = [&](const std::string& p, int64_t ch) {
    t.push_back({p + ".weight", b, {ch}});
    t.push_back({p + ".bias", b, {ch}});
  };
  auto linear = [&](const std::string& p, int64_t co, int64_t ci) {
    t.push_back({p + ".weight", b, {co, ci}});
    t.push_back({p + ".bias", b, {co}});
  };
  auto resnet = [&](const std::string& p, int64_t ci, int64_t co) {
    norm(p + ".norm1", ci);
    conv(p + ".conv1", co, ci, 3);
    norm(p + ".norm2", co);
    conv(p + ".conv2", co, co, 3);
    if (ci != co) conv(p + ".conv_shortcut", co, ci, 1);
  };
  auto mid = [&](const std::string& p, int64_t ch) {
    resnet(p + ".resnets.0", ch, ch);
    if (c.mid_block_add_attention) {
      norm(p + ".attentions.0.group_norm", ch);
      for (const char* n : {"to_q", "to_k", "to_v", "to_out.0"}) {
        linear(absl::StrCat(p, ".attentions.0.", n), ch, ch);
      }
    }
    resnet(p + ".resnets.1", ch, ch);
  };
  const auto& ch = c.block_out_channels;
  const size_t nb = ch.size();
  // Encoder.
  conv("encoder.conv_in", ch[0], c.in_channels, 3);
  int64_t prev = ch[0];
  for (size_t i = 0; i < nb; ++i) {
    for (int64_t j = 0; j < c.layers_per_block; ++j) {
      resnet(absl::StrCat("encoder.down_blocks.", i, ".resnets.", j), j == 0 ? prev : ch[i], ch[i]);
    }
    if (i + 1 < nb)
      conv(absl::StrCat("encoder.down_blocks.", i, ".downsamplers.0.conv"), ch[i], ch[i], 3);
    prev = ch[i];
  }
  mid("encoder.mid_block", ch[nb - 1]);
  norm("encoder.conv_norm_out", ch[nb - 1]);
  conv("encoder.conv_out", 2 * c.latent_channels, ch[nb - 1], 3);
  if (c.use_quant_conv) conv("quant_conv", 2 * c.latent_channels, 2 * c.latent_channels, 1);
  if (c.use_post_quant_conv) conv("post_quant_conv", c.latent_channels, c.latent_channels, 1);
  // Decoder.
  conv("decoder.conv_in", ch[nb - 1], c.latent_channels, 3);
  mid("decoder.mid_block", ch[nb - 1]);
  prev = ch[nb - 1];
  for (size_t i = 0; i < nb; ++i) {
    const int64_t out = ch[nb - 1 - i];
    for (int64_t j = 0; j <= c.layers_per_block; ++j) {
      resnet(absl::StrCat("decoder.up_blocks.", i, ".resnets.", j), j == 0 ? prev : out, out);
    }
    if (i + 1 < nb) conv(absl::StrCat("decoder.up_blocks.", i, ".upsamplers.0.conv"), out, out, 3);
    prev = out;
  }
  norm("decoder.conv_norm_out", ch[0]);
  conv("decoder.conv_out", c.out_channels, ch[0], 3);
  return t;
}

// ---------------------------------------------------------------- configs

const char kDiffusersVersion[] = "0.36.0.dev0";

OJson ModelIndexJson() {
  OJson j;
  j["_class_name"] = "ZImagePipeline";
  j["_diffusers_version"] = kDiffusersVersion;
  j["scheduler"] = {"diffusers", "FlowMatchEulerDiscreteScheduler"};
  j["text_encoder"] = {"transformers", "Qwen3Model"};
  j["tokenizer"] = {"transformers", "Qwen2Tokenizer"};
  j["transformer"] = {"diffusers", "ZImageTransformer2DModel"};
  j["vae"] = {"diffusers", "AutoencoderKL"};
  return j;
}

OJson SchedulerJson(const SchedulerConfig& c) {
  OJson j;
  j["_class_name"] = "FlowMatchEulerDiscreteScheduler";
  j["_diffusers_version"] = kDiffusersVersion;
  j["num_train_timesteps"] = c.num_train_timesteps;
  j["shift"] = c.shift;
  j["use_dynamic_shifting"] = c.use_dynamic_shifting;
  return j;
}

OJson TransformerJson(const TransformerConfig& c) {
  OJson j;
  j["_class_name"] = "ZImageTransformer2DModel";
  j["_diffusers_version"] = kDiffusersVersion;
  j["all_f_patch_size"] = {c.f_patch_size};
  j["all_patch_size"] = {c.patch_size};
  j["axes_dims"] = c.axes_dims;
  j["axes_lens"] = c.axes_lens;
  j["cap_feat_dim"] = c.cap_feat_dim;
  j["dim"] = c.dim;
  j["in_channels"] = c.in_channels;
  j["n_heads"] = c.n_heads;
  j["n_kv_heads"] = c.n_kv_heads;
  j["n_layers"] = c.n_layers;
  j["n_refiner_layers"] = c.n_refiner_layers;
  j["norm_eps"] = c.norm_eps;
  j["qk_norm"] = c.qk_norm;
  j["rope_theta"] = c.rope_theta;
  j["t_scale"] = c.t_scale;
  return j;
}

OJson TextEncoderJson(const TextEncoderConfig& c) {
  OJson j;
  j["architectures"] = {"Qwen3ForCausalLM"};
  j["attention_bias"] = c.attention_bias;
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = 151643;
  j["eos_token_id"] = 151645;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["hidden_size"] = c.hidden_size;
  j["initializer_range"] = 0.02;
  j["intermediate_size"] = c.intermediate_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["max_window_layers"] = c.num_hidden_layers;
  j["model_type"] = "qwen3";
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_scaling"] = nullptr;
  j["rope_theta"] = c.rope_theta;
  j["sliding_window"] = nullptr;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["torch_dtype"] = "bfloat16";
  j["transformers_version"] = "4.51.0";
  j["use_cache"] = true;
  j["use_sliding_window"] = false;
  j["vocab_size"] = c.vocab_size;
  return j;
}

OJson VaeJson(const VaeConfig& c) {
  OJson j;
  j["_class_name"] = "AutoencoderKL";
  j["_diffusers_version"] = kDiffusersVersion;
  j["act_fn"] = "silu";
  j["block_out_channels"] = c.block_out_channels;
  j["down_block_types"] =
      std::vector<std::string>(c.block_out_channels.size(), "DownEncoderBlock2D");
  j["force_upcast"] = true;
  j["in_channels"] = c.in_channels;
  j["latent_channels"] = c.latent_channels;
  j["latents_mean"] = nullptr;
  j["latents_std"] = nullptr;
  j["layers_per_block"] = c.layers_per_block;
  j["mid_block_add_attention"] = c.mid_block_add_attention;
  j["norm_num_groups"] = c.norm_num_groups;
  j["out_channels"] = c.out_channels;
  j["sample_size"] = 1024;
  j["scaling_factor"] = c.scaling_factor;
  j["shift_factor"] = c.shift_factor;
  j["up_block_types"] = std::vector<std::string>(c.block_out_channels.size(), "UpDecoderBlock2D");
  j["use_post_quant_conv"] = c.use_post_quant_conv;
  j["use_quant_conv"] = c.use_quant_conv;
  return j;
}

ModelConfig TinyConfig() {
  ModelConfig m;
  TransformerConfig& t = m.transformer;
  t.dim = 64;
  t.n_heads = 2;
  t.n_kv_heads = 2;
  t.n_layers = 2;
  t.n_refiner_layers = 2;
  t.axes_dims = {8, 12, 12};
  t.cap_feat_dim = 32;
  TextEncoderConfig& e = m.text_encoder;
  e.hidden_size = 32;
  e.num_hidden_layers = 3;
  e.num_attention_heads = 4;
  e.num_key_value_heads = 2;
  e.head_dim = 16;
  e.intermediate_size = 64;
  VaeConfig& v = m.vae;
  v.block_out_channels = {32, 32, 64, 64};
  v.norm_num_groups = 8;
  return m;
}

// ---------------------------------------------------------------- writing

absl::Status WriteJson(const fs::path& path, const OJson& j) {
  return base::WriteFileAtomically(path.string(), j.dump(2) + "\n");
}

// Writes `tensors` (in the given order) as one file `single` or as `shards` files named
// prefix-0000i-of-0000n.safetensors plus `index_name`.
absl::Status WriteWeights(const fs::path& dir, std::vector<TensorSpec> tensors, int shards,
                          const std::string& single, const std::string& prefix,
                          const std::string& index_name, bool sparse) {
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorSpec& a, const TensorSpec& b) { return a.name < b.name; });
  uint64_t total = 0;
  for (const TensorSpec& t : tensors) total += Bytes(t);
  std::vector<std::vector<TensorSpec>> groups(static_cast<size_t>(std::max(shards, 1)));
  uint64_t acc = 0;
  for (const TensorSpec& t : tensors) {
    size_t g =
        std::min<size_t>(groups.size() - 1,
                         static_cast<size_t>((acc * groups.size()) / std::max<uint64_t>(total, 1)));
    groups[g].push_back(t);
    acc += Bytes(t);
  }
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  OJson weight_map = OJson::object();
  for (size_t g = 0; g < groups.size(); ++g) {
    std::string name = shards <= 1
                           ? single
                           : absl::StrCat(prefix, "-", absl::StrFormat("%05d", g + 1), "-of-",
                                          absl::StrFormat("%05d", groups.size()), ".safetensors");
    ZFARM_ASSIGN_OR_RETURN(auto w,
                           SafetensorsStreamWriter::Create((dir / name).string(), groups[g], meta));
    for (const TensorSpec& t : groups[g]) {
      weight_map[t.name] = name;
      if (!sparse) {
        ZFARM_RETURN_IF_ERROR(
            GenerateTensor(t, [&](const std::string& b) { return w->Append(b); }));
      }
    }
    ZFARM_RETURN_IF_ERROR(w->Finish(sparse));
  }
  if (shards > 1) {
    OJson idx;
    idx["metadata"] = {{"total_size", total}};
    idx["weight_map"] = std::move(weight_map);
    ZFARM_RETURN_IF_ERROR(WriteJson(dir / index_name, idx));
  }
  return absl::OkStatus();
}

absl::Status CopyFile(const fs::path& from, const fs::path& to) {
  ZFARM_ASSIGN_OR_RETURN(std::string bytes, ReadSmallFile(from.string(), 256 << 20));
  return base::WriteFileAtomically(to.string(), bytes);
}

struct Options {
  std::string out, tokenizer, variant = "tiny";
  bool sparse = false, force = false;
};

absl::Status Make(const Options& o) {
  const bool full = o.variant == "full-random";
  if (!full && o.variant != "tiny") {
    return absl::InvalidArgumentError(
        absl::StrCat("--variant: unknown '", o.variant, "' (tiny, full-random)"));
  }
  if (o.out.empty()) return absl::InvalidArgumentError("--out DIR is required");
  if (o.tokenizer.empty()) {
    return absl::InvalidArgumentError(
        "--tokenizer PATH/tokenizer.json is required (tests/tools/fetch-tokenizer.sh prints it)");
  }
  const fs::path tok_dir = fs::path(o.tokenizer).parent_path();
  const fs::path out(o.out);
  std::error_code ec;
  if (fs::exists(out, ec)) {
    if (!o.force) {
      return absl::AlreadyExistsError(absl::StrCat(o.out, ": exists (use --force to replace it)"));
    }
  }
  // Build next to the target and rename, so a folder is either complete or absent.
  const fs::path tmp = fs::path(o.out + absl::StrCat(".tmp-", getpid()));
  fs::remove_all(tmp, ec);
  for (const char* d : {"scheduler", "text_encoder", "tokenizer", "transformer", "vae"}) {
    fs::create_directories(tmp / d, ec);
    if (ec) return absl::InternalError(absl::StrCat((tmp / d).string(), ": ", ec.message()));
  }
  const ModelConfig m = full ? ModelConfig{} : TinyConfig();
  ZFARM_RETURN_IF_ERROR(WriteJson(tmp / "model_index.json", ModelIndexJson()));
  ZFARM_RETURN_IF_ERROR(
      WriteJson(tmp / "scheduler/scheduler_config.json", SchedulerJson(m.scheduler)));
  ZFARM_RETURN_IF_ERROR(WriteJson(tmp / "transformer/config.json", TransformerJson(m.transformer)));
  ZFARM_RETURN_IF_ERROR(
      WriteJson(tmp / "text_encoder/config.json", TextEncoderJson(m.text_encoder)));
  ZFARM_RETURN_IF_ERROR(WriteJson(tmp / "vae/config.json", VaeJson(m.vae)));
  ZFARM_RETURN_IF_ERROR(CopyFile(o.tokenizer, tmp / "tokenizer/tokenizer.json"));
  ZFARM_RETURN_IF_ERROR(
      CopyFile(tok_dir / "tokenizer_config.json", tmp / "tokenizer/tokenizer_config.json"));
  const int n = full ? 3 : 2;
  ZFARM_RETURN_IF_ERROR(WriteWeights(tmp / "transformer", TransformerTensors(m.transformer), n, "",
                                     "diffusion_pytorch_model",
                                     "diffusion_pytorch_model.safetensors.index.json", o.sparse));
  ZFARM_RETURN_IF_ERROR(WriteWeights(tmp / "text_encoder", TextEncoderTensors(m.text_encoder), n,
                                     "", "model", "model.safetensors.index.json", o.sparse));
  ZFARM_RETURN_IF_ERROR(WriteWeights(tmp / "vae", VaeTensors(m.vae), 1,
                                     "diffusion_pytorch_model.safetensors", "", "", o.sparse));
  // Manifest of every file, sorted by path (sparse folders: header-only, skip the md5s).
  std::vector<ManifestEntry> entries;
  for (const auto& e : fs::recursive_directory_iterator(tmp)) {
    if (!e.is_regular_file()) continue;
    ManifestEntry me;
    me.path = fs::relative(e.path(), tmp).string();
    entries.push_back(me);
  }
  std::sort(entries.begin(), entries.end(),
            [](const ManifestEntry& a, const ManifestEntry& b) { return a.path < b.path; });
  if (!o.sparse) {
    for (ManifestEntry& me : entries) {
      ZFARM_ASSIGN_OR_RETURN(me.md5, Md5File((tmp / me.path).string()));
    }
    ZFARM_RETURN_IF_ERROR(
        base::WriteFileAtomically((tmp / "manifest.md5").string(), FormatMd5Manifest(entries)));
  }
  if (fs::exists(out, ec)) fs::remove_all(out, ec);
  fs::rename(tmp, out, ec);
  if (ec) return absl::InternalError(absl::StrCat("rename to ", o.out, ": ", ec.message()));
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* dst) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "make_tiny_model: %s needs a value\n", a.c_str());
        return false;
      }
      *dst = argv[++i];
      return true;
    };
    if (a == "--out") {
      if (!value(&o.out)) return 2;
    } else if (a == "--tokenizer") {
      if (!value(&o.tokenizer)) return 2;
    } else if (a == "--variant") {
      if (!value(&o.variant)) return 2;
    } else if (a == "--sparse") {
      o.sparse = true;
    } else if (a == "--force") {
      o.force = true;
    } else {
      std::fprintf(stderr,
                   "usage: make_tiny_model --out DIR --tokenizer FILE [--variant tiny|full-random] "
                   "[--sparse] [--force]\n");
      return 2;
    }
  }
  absl::Status s = Make(o);
  if (!s.ok()) {
    std::fprintf(stderr, "make_tiny_model: %s\n", s.ToString().c_str());
    return absl::IsInvalidArgument(s) ? 2 : 1;
  }
  return 0;
}

}  // namespace
}  // namespace zfarm::worker

int main(int argc, char** argv) { return zfarm::worker::Main(argc, argv); }
