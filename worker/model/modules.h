#ifndef ZFARM_WORKER_MODEL_MODULES_H_
#define ZFARM_WORKER_MODEL_MODULES_H_

// The three networks of Z-Image-Turbo as libtorch modules (op by op: worker/model/README.md):
// the Qwen3 text encoder (embeddings + layers 0..n-2), the S3-DiT transformer
// and the FLUX VAE decoder. Internal to worker/model and worker/pipeline: this
// header includes Torch; the pipeline's public header does not.
//
// Every submodule is registered under its checkpoint key segment, so
// named_parameters() equals the safetensors keys of the component
// ("layers.3.attention.to_q.weight", "decoder.up_blocks.0.resnets.1.conv1.bias").
// Parameters are created uninitialised (at::empty) on the given device and
// dtype: fill them with LoadWeights() (weights.h) or InitRandom().
//
// Dtypes (README "Traps"): activations in the parameter dtype (bf16 on CUDA,
// fp32 on CPU), RMSNorm statistics, RoPE and the timestep sinusoid in fp32.
//
// Thread-safety: none; one inference thread owns a module (the one that owns the device).

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "worker/io/model_config.h"

namespace zfarm::worker::model {

// y = x W^T + b with W [out, in]. An FP8 layer (fp8.h) holds W's e4m3fn bytes (uint8) in
// `weight` and its per-output-channel float32 scales in `weight_scale`, both registered
// parameters ("weight", "weight_scale": the FP8 weights cache's keys), and forward() runs
// Fp8Linear; `weight_scale` is undefined otherwise.
class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in, int64_t out, bool bias, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  // Quantizes the loaded weight in place (a no-op when already FP8).
  void ToFp8();
  // Gives the layer FP8 parameters of the right shapes, uninitialised, for LoadWeights
  // from an FP8 weights cache (a no-op when already FP8).
  void PrepareFp8();
  bool fp8() const { return weight_scale.defined(); }
  at::Tensor weight, bias, weight_scale;

 private:
  void SetFp8(at::Tensor data, at::Tensor scale);
};
TORCH_MODULE(Linear);

// RMSNorm over the last dimension: (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(x dtype) * w.
class RmsNormImpl : public torch::nn::Module {
 public:
  RmsNormImpl(int64_t dim, double eps, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight;
  double eps;
};
TORCH_MODULE(RmsNorm);

// Registers an empty container module `name` under `parent`: a key segment
// ("attention", "all_x_embedder") whose children hold the parameters.
std::shared_ptr<torch::nn::Module> Sub(torch::nn::Module& parent, const std::string& name);

// A container whose children are named "0", "1", ... (nn.ModuleList / nn.Sequential keys).
class ListImpl : public torch::nn::Module {
 public:
  template <typename M>
  M Add(M m) {
    return register_module(std::to_string(count_++), std::move(m));
  }
  template <typename M>
  M AddAt(int index, M m) {
    count_ = index + 1;
    return register_module(std::to_string(index), std::move(m));
  }

 private:
  int count_ = 0;
};
TORCH_MODULE(List);

// ---------------------------------------------------------------- Qwen3 ----

class Qwen3LayerImpl : public torch::nn::Module {
 public:
  Qwen3LayerImpl(const TextEncoderConfig& c, const at::TensorOptions& options);
  // x: [1, L, hidden]; cos/sin: [L, head_dim] in x's dtype.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

 private:
  TextEncoderConfig c_;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RmsNorm q_norm{nullptr}, k_norm{nullptr}, input_layernorm{nullptr},
      post_attention_layernorm{nullptr};
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Qwen3Layer);

// Keys without the "model." prefix: embed_tokens.weight, layers.{0..n-2}.*.
class TextEncoderImpl : public torch::nn::Module {
 public:
  TextEncoderImpl(const TextEncoderConfig& c, const at::TensorOptions& options);
  // ids: [L] int64 (any device). Returns hidden_states[-2] = the raw output of
  // layer n-2 for the L tokens: [L, hidden] in the module dtype.
  at::Tensor forward(const at::Tensor& ids);
  // Checkpoint keys this module deliberately does not hold (last layer, final norm).
  bool IsUnusedKey(const std::string& key) const;
  const TextEncoderConfig& config() const { return c_; }

 private:
  TextEncoderConfig c_;
  at::Tensor embed_weight_;
  std::vector<Qwen3Layer> layers_;
};
TORCH_MODULE(TextEncoder);

// ---------------------------------------------------------------- S3-DiT ---

// 3-axis RoPE table (interleaved pairs, theta 256): cos/sin float32 [num_positions, head_dim/2].
struct RopeTable {
  at::Tensor cos, sin;  // [S, head_dim/2] float32
};

class DitBlockImpl : public torch::nn::Module {
 public:
  DitBlockImpl(const TransformerConfig& c, bool modulated, const at::TensorOptions& options);
  // x: [1, S, dim]; c: [1, adaln_dim] (ignored when not modulated).
  at::Tensor forward(const at::Tensor& x, const RopeTable& rope, const at::Tensor& c);

  // Concatenates to_q/to_k/to_v and w1/w3 into one weight each (one GEMM instead
  // of three / two) and makes the original parameters views into it, so
  // named_parameters() and memory stay the same (FP8 layers: their scales too; the
  // per-output-channel scales make the fused quantization equal the separate ones).
  // Call after the weights are loaded (and quantized).
  void FuseProjections();
  // Use the CUDA kernels of fused_ops.h where they apply (default true).
  void set_kernels(bool on) { kernels_ = on; }

 private:
  // The block's two halves on x (the residual stream): attention on norm(x) * scale, and
  // the FFN on norm(x) * scale (scale undefined: unmodulated).
  at::Tensor Attention(const at::Tensor& x, const at::Tensor& scale, const RopeTable& rope);
  at::Tensor FeedForward(const at::Tensor& x, const at::Tensor& scale);
  // norm(x) * s projected by the fused weight w (FP8 when w_scale is defined: then one
  // kernel normalises and quantizes, and the bf16 activations are never stored).
  at::Tensor NormProject(const at::Tensor& x, const at::Tensor& norm_w, const at::Tensor& s,
                         const at::Tensor& w, const at::Tensor& w_scale);

 protected:
  TransformerConfig c_;

 private:
  bool modulated_;
  bool kernels_ = true;
  at::Tensor qkv_weight_, w13_weight_;  // defined after FuseProjections()
  at::Tensor qkv_scale_, w13_scale_;    // FP8 layers: their fused scales, else undefined
  Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, to_out{nullptr};
  RmsNorm norm_q{nullptr}, norm_k{nullptr};
  Linear w1{nullptr}, w2{nullptr}, w3{nullptr};
  RmsNorm attention_norm1{nullptr}, attention_norm2{nullptr}, ffn_norm1{nullptr},
      ffn_norm2{nullptr};
  Linear ada{nullptr};
};
TORCH_MODULE(DitBlock);

// Intermediate values for parity tests.
struct DitTrace {
  at::Tensor t_emb;  // [1, adaln_dim]
};

// The DiT's inputs after embedding (TransformerImpl::Embed), shared by the ControlNet
// (controlnet.h), which reads the same tokens, and the rest of the DiT.
struct DitTokens {
  at::Tensor c;        // adaLN conditioning [1, adaln_dim]
  at::Tensor x;        // image tokens before the noise refiner [1, Np, dim] (pads = x_pad_token)
  at::Tensor y;        // caption tokens after the context refiner [1, Lp, dim]
  RopeTable img_rope;  // [Np, head_dim/2]
  RopeTable rope;      // unified [image, caption]: [Np + Lp, head_dim/2]
  int64_t n = 0;       // real image tokens (N <= Np)
  std::vector<int64_t> latent_shape;  // [C, F, h, w]
};

// [C, F, h, w] -> [N, pf*p*p*C] patch tokens, feature = ((pf_i*p + ph)*p + pw)*C + c (the
// DiT's patchify; the ControlNet's control context uses the same one).
at::Tensor Patchify(const at::Tensor& latent, int64_t p, int64_t pf);

class TransformerImpl : public torch::nn::Module {
 public:
  TransformerImpl(const TransformerConfig& c, const at::TensorOptions& options);
  // latent: [C, 1, h, w] in the module dtype; t_in: the DiT timestep input
  // (1 - sigma, see sampling::TimestepInput); cap: [L, cap_feat_dim].
  // Returns the raw model output [C, 1, h, w] (approximates x0 - noise).
  at::Tensor forward(const at::Tensor& latent, float t_in, const at::Tensor& cap,
                     DitTrace* trace = nullptr);
  // The same with every input a device tensor and fixed shapes per (image size,
  // padded caption length), so that it can be captured in a CUDA graph and
  // replayed: t: float32 [1] (the timestep input); cap: [Lp, cap_feat_dim], the
  // caption rows first (PadCaption); cap_valid: bool [Lp, 1], true for caption rows.
  at::Tensor Forward(const at::Tensor& latent, const at::Tensor& t, const at::Tensor& cap,
                     const at::Tensor& cap_valid, DitTrace* trace = nullptr);
  // Forward() in three parts, for the ControlNet (controlnet.h), which reads the embedded
  // tokens, runs the noise refiner with its own hints, and adds hints after main layers:
  // Embed = timestep embedding, patchify + x_embedder (pads = x_pad_token), caption embedder
  // + context refiner, RoPE tables. RefineImage = the noise refiner on tok.x, adding
  // hints[i] after refiner block i where hints is given and hints[i] defined. Finish = the
  // main layers on [x, caption] (layer_hints[i] added after layer i where defined), the
  // final layer and unpatchify: [C, F, h, w].
  DitTokens Embed(const at::Tensor& latent, const at::Tensor& t, const at::Tensor& cap,
                  const at::Tensor& cap_valid);
  at::Tensor RefineImage(const DitTokens& tok, const std::vector<at::Tensor>* hints);
  at::Tensor Finish(const DitTokens& tok, const at::Tensor& x,
                    const std::vector<at::Tensor>* layer_hints);
  // The learned pad token of image sequences [1, dim].
  const at::Tensor& image_pad_token() const { return x_pad_token; }
  // cap [L, cap_feat_dim] padded with zero rows to Lp = L rounded up to 32, and its
  // row mask: {cap padded, cap_valid}.
  static std::pair<at::Tensor, at::Tensor> PadCaption(const at::Tensor& cap);
  // The adaLN conditioning vector for t_in: [1, adaln_dim].
  at::Tensor TimestepEmbedding(float t_in);
  at::Tensor TimestepEmbedding(const at::Tensor& t);  // t: float32 [1] on the device
  // FuseProjections() / set_kernels() of every block.
  void FuseProjections();
  void set_kernels(bool on);
  const TransformerConfig& config() const { return c_; }

 private:
  RopeTable Rope(const at::Tensor& ids);  // ids: [S, 3] int64 positions
  TransformerConfig c_;
  at::TensorOptions options_;
  Linear x_embedder{nullptr}, t_mlp0{nullptr}, t_mlp2{nullptr}, cap_linear{nullptr};
  RmsNorm cap_norm{nullptr};
  at::Tensor x_pad_token, cap_pad_token;
  Linear final_ada{nullptr}, final_linear{nullptr};
  std::vector<DitBlock> noise_refiner_, context_refiner_, layers_;
  std::vector<at::Tensor> axis_freqs_;  // per axis: float32 [d_a/2] frequencies (as float64->f32)
};
TORCH_MODULE(Transformer);

// ---------------------------------------------------------------- VAE ------

class Conv2dImpl : public torch::nn::Module {
 public:
  // stride 1 and "same" padding (k / 2) unless given.
  Conv2dImpl(int64_t in, int64_t out, int64_t k, const at::TensorOptions& options,
             int64_t stride = 1, int64_t pad = -1);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight, bias;
  int64_t stride;
  int64_t pad;
};
TORCH_MODULE(Conv2d);

class GroupNormImpl : public torch::nn::Module {
 public:
  GroupNormImpl(int64_t groups, int64_t channels, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  // silu(forward(x)) in one pass where the fused kernel applies.
  at::Tensor ForwardSilu(const at::Tensor& x);
  at::Tensor weight, bias;
  int64_t groups;
  bool kernels = true;  // fused_ops.h GroupNormAct kernel for bf16 CUDA
};
TORCH_MODULE(GroupNorm);

class ResnetImpl : public torch::nn::Module {
 public:
  ResnetImpl(int64_t in, int64_t out, int64_t groups, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);

 private:
  GroupNorm norm1{nullptr}, norm2{nullptr};
  Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
};
TORCH_MODULE(Resnet);

class VaeAttentionImpl : public torch::nn::Module {
 public:
  VaeAttentionImpl(int64_t channels, int64_t groups, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);

 private:
  GroupNorm group_norm{nullptr};
  Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, to_out{nullptr};
};
TORCH_MODULE(VaeAttention);

// Keys: decoder.* of vae/diffusion_pytorch_model.safetensors.
class VaeDecoderImpl : public torch::nn::Module {
 public:
  VaeDecoderImpl(const VaeConfig& c, const at::TensorOptions& options);
  // latents: [1, C, h, w] float32 pipeline latents. Casts to the module dtype,
  // applies z / scaling + shift (in the module dtype, as diffusers), decodes.
  // Returns [1, 3, 8h, 8w] in the module dtype, roughly in [-1, 1].
  at::Tensor forward(const at::Tensor& latents);
  // Same, decoding overlapping tiles of `tile` latent pixels (overlap `overlap`)
  // and blending the seams linearly (diffusers AutoencoderKL.tiled_decode scheme).
  at::Tensor TiledDecode(const at::Tensor& latents, int64_t tile, int64_t overlap);
  bool IsUnusedKey(const std::string& key) const;
  const VaeConfig& config() const { return c_; }
  // Use the fused GroupNorm(+SiLU) kernel where it applies (default true).
  void set_kernels(bool on);

 private:
  at::Tensor Decode(const at::Tensor& z);  // z already transformed, module dtype
  VaeConfig c_;
  Conv2d conv_in{nullptr}, conv_out{nullptr};
  std::vector<Resnet> mid_resnets_;
  VaeAttention mid_attention_{nullptr};
  std::vector<std::vector<Resnet>> up_resnets_;
  std::vector<Conv2d> upsamplers_;  // nullptr for the last block
  GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VaeDecoder);

// Keys: encoder.* (and quant_conv.* when the config uses it) of
// vae/diffusion_pytorch_model.safetensors: diffusers' Encoder (down blocks of ResNets with
// stride-2 convolutions after a (0, 1, 0, 1) zero pad, the same mid block as the decoder,
// GroupNorm + SiLU + conv_out to mean and log-variance).
class VaeEncoderImpl : public torch::nn::Module {
 public:
  VaeEncoderImpl(const VaeConfig& c, const at::TensorOptions& options);
  // image: [1, 3, H, W] in [-1, 1] (any float dtype; cast to the module's). Returns the
  // moments [1, 2C, H/8, W/8] in the module dtype: mean = the first C channels,
  // log-variance the last C (unclamped).
  at::Tensor forward(const at::Tensor& image);
  bool IsUnusedKey(const std::string& key) const;
  // Use the fused GroupNorm(+SiLU) kernel where it applies (default true).
  void set_kernels(bool on);

 private:
  VaeConfig c_;
  Conv2d conv_in{nullptr}, conv_out{nullptr}, quant_conv{nullptr};
  std::vector<std::vector<Resnet>> down_resnets_;
  std::vector<Conv2d> downsamplers_;  // nullptr for the last block
  std::vector<Resnet> mid_resnets_;
  VaeAttention mid_attention_{nullptr};
  GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VaeEncoder);

// Fills every parameter of `module` with deterministic random values from
// `seed`: weights of rank >= 2 ~ N(0, 1/fan_in), norm weights 1, biases and pad
// tokens ~ N(0, 0.02). For benchmarks and tests with a full-size architecture.
void InitRandom(torch::nn::Module& module, uint64_t seed);

}  // namespace zfarm::worker::model

#endif  // ZFARM_WORKER_MODEL_MODULES_H_
