#include "worker/model/modules.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <cmath>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/model/fp8.h"
#include "worker/model/fused_ops.h"
#include "worker/model/torch_compat.h"

namespace zfarm::worker::model {

std::shared_ptr<torch::nn::Module> Sub(torch::nn::Module& parent, const std::string& name) {
  return parent.register_module(name, std::make_shared<torch::nn::Module>());
}

namespace {

int64_t PadTo32(int64_t n) { return (32 - n % 32) % 32; }

// x W^T through a fused projection: FP8 when it has scales.
at::Tensor Project(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
  return scale.defined() ? Fp8Linear(x, w, scale, {}) : at::linear(x, w);
}

}  // namespace

// ------------------------------------------------------------- building blocks

LinearImpl::LinearImpl(int64_t in, int64_t out, bool has_bias, const at::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({out, in}, options), /*requires_grad=*/false);
  if (has_bias) bias = register_parameter("bias", at::empty({out}, options), false);
}

at::Tensor LinearImpl::forward(const at::Tensor& x) {
  return fp8() ? Fp8Linear(x, weight, weight_scale, bias) : at::linear(x, weight, bias);
}

void LinearImpl::SetFp8(at::Tensor data, at::Tensor scale) {
  // The registered "weight" entry is replaced (its dtype changes), not re-registered.
  parameters_["weight"] = data;
  weight = std::move(data);
  weight_scale = register_parameter("weight_scale", std::move(scale), /*requires_grad=*/false);
}

void LinearImpl::ToFp8() {
  if (fp8()) return;
  QuantizedWeight q = QuantizeWeight(weight);
  SetFp8(std::move(q.data), std::move(q.scale));
}

void LinearImpl::PrepareFp8() {
  if (fp8()) return;
  SetFp8(at::empty(weight.sizes(), weight.options().dtype(at::kByte)),
         at::empty({weight.size(0)}, weight.options().dtype(at::kFloat)));
}

RmsNormImpl::RmsNormImpl(int64_t dim, double eps_in, const at::TensorOptions& options)
    : eps(eps_in) {
  weight = register_parameter("weight", at::empty({dim}, options), false);
}

at::Tensor RmsNormImpl::forward(const at::Tensor& x) {
  // diffusers RMSNorm / HF Qwen3RMSNorm: fp32 statistics and normalisation,
  // cast back to the activation dtype, then times the weight.
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  at::Tensor y = (xf * at::rsqrt(var + eps)).to(x.scalar_type());
  return y * weight;
}

Conv2dImpl::Conv2dImpl(int64_t in, int64_t out, int64_t k, const at::TensorOptions& options,
                       int64_t s, int64_t p)
    : stride(s), pad(p < 0 ? k / 2 : p) {
  weight = register_parameter("weight", at::empty({out, in, k, k}, options), false);
  bias = register_parameter("bias", at::empty({out}, options), false);
}

at::Tensor Conv2dImpl::forward(const at::Tensor& x) {
  return at::conv2d(x, weight, bias, /*stride=*/{stride, stride}, /*padding=*/{pad, pad});
}

GroupNormImpl::GroupNormImpl(int64_t g, int64_t channels, const at::TensorOptions& options)
    : groups(g) {
  weight = register_parameter("weight", at::empty({channels}, options), false);
  bias = register_parameter("bias", at::empty({channels}, options), false);
}

at::Tensor GroupNormImpl::forward(const at::Tensor& x) {
  return GroupNormAct(x, groups, weight, bias, 1e-6, /*silu=*/false, kernels);
}

at::Tensor GroupNormImpl::ForwardSilu(const at::Tensor& x) {
  return GroupNormAct(x, groups, weight, bias, 1e-6, /*silu=*/true, kernels);
}

// ------------------------------------------------------------------- Qwen3

Qwen3LayerImpl::Qwen3LayerImpl(const TextEncoderConfig& c, const at::TensorOptions& o) : c_(c) {
  const int64_t h = c.hidden_size, d = c.head_dim;
  auto attn = Sub(*this, "self_attn");
  q_proj =
      attn->register_module("q_proj", Linear(h, c.num_attention_heads * d, c.attention_bias, o));
  k_proj =
      attn->register_module("k_proj", Linear(h, c.num_key_value_heads * d, c.attention_bias, o));
  v_proj =
      attn->register_module("v_proj", Linear(h, c.num_key_value_heads * d, c.attention_bias, o));
  o_proj = attn->register_module("o_proj", Linear(c.num_attention_heads * d, h, false, o));
  q_norm = attn->register_module("q_norm", RmsNorm(d, c.rms_norm_eps, o));
  k_norm = attn->register_module("k_norm", RmsNorm(d, c.rms_norm_eps, o));
  auto mlp = Sub(*this, "mlp");
  gate_proj = mlp->register_module("gate_proj", Linear(h, c.intermediate_size, false, o));
  up_proj = mlp->register_module("up_proj", Linear(h, c.intermediate_size, false, o));
  down_proj = mlp->register_module("down_proj", Linear(c.intermediate_size, h, false, o));
  input_layernorm = register_module("input_layernorm", RmsNorm(h, c.rms_norm_eps, o));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RmsNorm(h, c.rms_norm_eps, o));
}

namespace {
// Rotate-half RoPE (NeoX style) with cos/sin already in the activation dtype.
at::Tensor RotateHalfRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  // x: [1, H, L, D]; cos/sin: [L, D]
  const int64_t half = x.size(-1) / 2;
  at::Tensor rot = at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
  return x * cos + rot * sin;
}
}  // namespace

at::Tensor Qwen3LayerImpl::forward(const at::Tensor& x, const at::Tensor& cos,
                                   const at::Tensor& sin) {
  const int64_t L = x.size(1), d = c_.head_dim;
  const int64_t hq = c_.num_attention_heads, hk = c_.num_key_value_heads;
  at::Tensor y = input_layernorm(x);
  at::Tensor q = q_norm(q_proj(y).view({1, L, hq, d})).transpose(1, 2);
  at::Tensor k = k_norm(k_proj(y).view({1, L, hk, d})).transpose(1, 2);
  at::Tensor v = v_proj(y).view({1, L, hk, d}).transpose(1, 2);
  q = RotateHalfRope(q, cos, sin);
  k = RotateHalfRope(k, cos, sin);
  if (hq != hk) {  // GQA: query head h reads kv head h / (hq / hk)
    k = k.repeat_interleave(hq / hk, 1);
    v = v.repeat_interleave(hq / hk, 1);
  }
  at::Tensor a = Sdpa(q, k, v, /*causal=*/true).transpose(1, 2).reshape({1, L, hq * d});
  at::Tensor h = x + o_proj(a);
  y = post_attention_layernorm(h);
  return h + down_proj(at::silu(gate_proj(y)) * up_proj(y));
}

TextEncoderImpl::TextEncoderImpl(const TextEncoderConfig& c, const at::TensorOptions& o) : c_(c) {
  auto embed = Sub(*this, "embed_tokens");
  embed_weight_ =
      embed->register_parameter("weight", at::empty({c.vocab_size, c.hidden_size}, o), false);
  auto layers = Sub(*this, "layers");
  // hidden_states[-2] is the output of layer n-2: layer n-1 and the final norm are never run.
  for (int64_t i = 0; i + 1 < c.num_hidden_layers; ++i) {
    layers_.push_back(layers->register_module(std::to_string(i), Qwen3Layer(c, o)));
  }
}

bool TextEncoderImpl::IsUnusedKey(const std::string& key) const {
  return key == "norm.weight" || key == "lm_head.weight" ||
         absl::StartsWith(key, absl::StrCat("layers.", c_.num_hidden_layers - 1, "."));
}

at::Tensor TextEncoderImpl::forward(const at::Tensor& ids_in) {
  at::Tensor ids = ids_in.to(embed_weight_.device(), at::kLong);
  const int64_t L = ids.size(0);
  at::Tensor x = at::embedding(embed_weight_, ids).unsqueeze(0);  // [1, L, hidden]
  // HF Qwen3RotaryEmbedding: inv_freq and angles in float32, cos/sin cast to the dtype.
  auto f32 = embed_weight_.options().dtype(at::kFloat);
  at::Tensor exponent = at::arange(0, c_.head_dim, 2, f32.dtype(at::kLong)).to(at::kFloat) /
                        static_cast<double>(c_.head_dim);
  at::Tensor inv_freq = 1.0 / at::pow(c_.rope_theta, exponent);
  at::Tensor pos = at::arange(L, f32.dtype(at::kLong)).to(at::kFloat);
  at::Tensor freqs = at::matmul(inv_freq.unsqueeze(1), pos.unsqueeze(0)).transpose(0, 1);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos().to(x.scalar_type());
  at::Tensor sin = emb.sin().to(x.scalar_type());
  for (auto& layer : layers_) x = layer(x, cos, sin);
  return x.squeeze(0);
}

// ------------------------------------------------------------------- S3-DiT

DitBlockImpl::DitBlockImpl(const TransformerConfig& c, bool modulated, const at::TensorOptions& o)
    : c_(c), modulated_(modulated) {
  const int64_t d = c.dim;
  auto attn = Sub(*this, "attention");
  to_q = attn->register_module("to_q", Linear(d, d, false, o));
  to_k = attn->register_module("to_k", Linear(d, d, false, o));
  to_v = attn->register_module("to_v", Linear(d, d, false, o));
  to_out = Sub(*attn, "to_out")->register_module("0", Linear(d, d, false, o));
  norm_q = attn->register_module("norm_q", RmsNorm(c.head_dim(), c.norm_eps, o));
  norm_k = attn->register_module("norm_k", RmsNorm(c.head_dim(), c.norm_eps, o));
  auto ff = Sub(*this, "feed_forward");
  w1 = ff->register_module("w1", Linear(d, c.ffn_hidden_dim(), false, o));
  w2 = ff->register_module("w2", Linear(c.ffn_hidden_dim(), d, false, o));
  w3 = ff->register_module("w3", Linear(d, c.ffn_hidden_dim(), false, o));
  attention_norm1 = register_module("attention_norm1", RmsNorm(d, c.norm_eps, o));
  attention_norm2 = register_module("attention_norm2", RmsNorm(d, c.norm_eps, o));
  ffn_norm1 = register_module("ffn_norm1", RmsNorm(d, c.norm_eps, o));
  ffn_norm2 = register_module("ffn_norm2", RmsNorm(d, c.norm_eps, o));
  if (modulated) {
    ada =
        Sub(*this, "adaLN_modulation")->register_module("0", Linear(c.adaln_dim(), 4 * d, true, o));
  }
}

void DitBlockImpl::FuseProjections() {
  if (qkv_weight_.defined() || w13_weight_.defined()) return;
  // Parameters become views into the fused weight (set_ keeps the registered
  // TensorImpl, so named_parameters() still names them).
  // Rows of weights [rows, cols] or of scales [rows].
  auto fuse = [](std::initializer_list<at::Tensor*> parts) {
    std::vector<at::Tensor> ws;
    for (at::Tensor* p : parts) ws.push_back(*p);
    at::Tensor fused = at::cat(ws, 0);
    int64_t row = 0;
    for (at::Tensor* p : parts) {
      const int64_t rows = p->size(0), cols = p->dim() == 2 ? p->size(1) : 1;
      if (p->dim() == 2) {
        p->set_(fused.storage(), fused.storage_offset() + row * cols, {rows, cols}, {cols, 1});
      } else {
        p->set_(fused.storage(), fused.storage_offset() + row, {rows}, {1});
      }
      row += rows;
    }
    return fused;
  };
  // Only layers of one precision fuse (the recipe keeps q/k/v and w1/w3 together).
  if (to_q->fp8() == to_k->fp8() && to_k->fp8() == to_v->fp8()) {
    qkv_weight_ = fuse({&to_q->weight, &to_k->weight, &to_v->weight});
    if (to_q->fp8()) {
      qkv_scale_ = fuse({&to_q->weight_scale, &to_k->weight_scale, &to_v->weight_scale});
    }
  }
  if (w1->fp8() == w3->fp8()) {
    w13_weight_ = fuse({&w1->weight, &w3->weight});
    if (w1->fp8()) w13_scale_ = fuse({&w1->weight_scale, &w3->weight_scale});
  }
}

at::Tensor DitBlockImpl::NormProject(const at::Tensor& x, const at::Tensor& norm_w,
                                     const at::Tensor& s, const at::Tensor& w,
                                     const at::Tensor& w_scale) {
  const double eps = attention_norm1->eps;
  QuantizedActivations hq;
  if (w_scale.defined() && kernels_ && RmsNormModE4m3(x, norm_w, s, eps, &hq.data, &hq.scale)) {
    return Fp8Gemm(hq, w, w_scale, {}, x.scalar_type()).view({1, x.size(1), w.size(0)});
  }
  return Project(RmsNormMod(x, norm_w, s, eps, kernels_), w, w_scale);
}

at::Tensor DitBlockImpl::Attention(const at::Tensor& x, const at::Tensor& scale,
                                   const RopeTable& rope) {
  const int64_t S = x.size(1), H = c_.n_heads, Dh = c_.head_dim(), D = H * Dh;
  at::Tensor q, k, v;
  if (qkv_weight_.defined()) {
    at::Tensor qkv = NormProject(x, attention_norm1->weight, scale, qkv_weight_, qkv_scale_);
    q = qkv.narrow(-1, 0, D);  // [1, S, 3D]
    k = qkv.narrow(-1, D, D);
    v = qkv.narrow(-1, 2 * D, D);
  } else {
    const at::Tensor h = RmsNormMod(x, attention_norm1->weight, scale, attention_norm1->eps, kernels_);
    q = to_q(h);
    k = to_k(h);
    v = to_v(h);
  }
  q = QkNormRope(q, H, norm_q->weight, rope.cos, rope.sin, norm_q->eps, kernels_);
  k = QkNormRope(k, H, norm_k->weight, rope.cos, rope.sin, norm_k->eps, kernels_);
  v = v.view({1, S, H, Dh});
  at::Tensor o = Sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), false);
  return to_out(o.transpose(1, 2).reshape({1, S, D}));
}

at::Tensor DitBlockImpl::FeedForward(const at::Tensor& x, const at::Tensor& scale) {
  if (!w13_weight_.defined()) {
    const at::Tensor h = RmsNormMod(x, ffn_norm1->weight, scale, ffn_norm1->eps, kernels_);
    return w2(at::silu(w1(h)) * w3(h));
  }
  const at::Tensor h13 = NormProject(x, ffn_norm1->weight, scale, w13_weight_, w13_scale_);
  QuantizedActivations fq;
  if (w2->fp8() && kernels_ && SwiGluE4m3(h13, &fq.data, &fq.scale)) {
    return Fp8Gemm(fq, w2->weight, w2->weight_scale, w2->bias, x.scalar_type())
        .view({1, x.size(1), w2->weight.size(0)});
  }
  return w2(SwiGlu(h13, kernels_));
}

at::Tensor DitBlockImpl::forward(const at::Tensor& x_in, const RopeTable& rope,
                                 const at::Tensor& c) {
  // diffusers ZImageTransformerBlock. No SiLU before the block adaLN; chunks:
  // scale_msa, gate_msa, scale_mlp, gate_mlp ([D] each: batch 1). Unmodulated
  // (context refiner): no scales, no gates.
  at::Tensor scale_msa, gate_msa, scale_mlp, gate_mlp;
  if (modulated_) {
    auto m = ada(c).reshape({-1}).chunk(4, -1);
    scale_msa = 1.0 + m[0];
    gate_msa = m[1].tanh();
    scale_mlp = 1.0 + m[2];
    gate_mlp = m[3].tanh();
  }
  const double eps = attention_norm1->eps;
  at::Tensor x = GatedResidualRmsNorm(x_in, Attention(x_in, scale_msa, rope),
                                      attention_norm2->weight, gate_msa, eps, kernels_);
  return GatedResidualRmsNorm(x, FeedForward(x, scale_mlp), ffn_norm2->weight, gate_mlp, eps,
                              kernels_);
}

TransformerImpl::TransformerImpl(const TransformerConfig& c, const at::TensorOptions& o)
    : c_(c), options_(o) {
  const int64_t d = c.dim, a = c.adaln_dim();
  const int64_t patch_dim = c.patch_size * c.patch_size * c.f_patch_size * c.in_channels;
  const std::string pkey = absl::StrCat(c.patch_size, "-", c.f_patch_size);
  x_embedder = Sub(*this, "all_x_embedder")->register_module(pkey, Linear(patch_dim, d, true, o));
  auto t_mlp = Sub(*Sub(*this, "t_embedder"), "mlp");
  t_mlp0 = t_mlp->register_module("0", Linear(256, 1024, true, o));
  t_mlp2 = t_mlp->register_module("2", Linear(1024, a, true, o));
  auto cap = Sub(*this, "cap_embedder");
  cap_norm = cap->register_module("0", RmsNorm(c.cap_feat_dim, c.norm_eps, o));
  cap_linear = cap->register_module("1", Linear(c.cap_feat_dim, d, true, o));
  x_pad_token = register_parameter("x_pad_token", at::empty({1, d}, o), false);
  cap_pad_token = register_parameter("cap_pad_token", at::empty({1, d}, o), false);
  auto fin = Sub(*Sub(*this, "all_final_layer"), pkey);
  final_ada = Sub(*fin, "adaLN_modulation")->register_module("1", Linear(a, d, true, o));
  final_linear = fin->register_module("linear", Linear(d, patch_dim, true, o));
  auto nr = Sub(*this, "noise_refiner");
  auto cr = Sub(*this, "context_refiner");
  for (int64_t i = 0; i < c.n_refiner_layers; ++i) {
    noise_refiner_.push_back(nr->register_module(std::to_string(i), DitBlock(c, true, o)));
    context_refiner_.push_back(cr->register_module(std::to_string(i), DitBlock(c, false, o)));
  }
  auto ls = Sub(*this, "layers");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    layers_.push_back(ls->register_module(std::to_string(i), DitBlock(c, true, o)));
  }
  // RoPE frequencies per axis: float64 theta^(-2j/d), angles pos*freq in float64
  // rounded to float32, then cos/sin in float32 (diffusers RopeEmbedder.precompute_freqs_cis).
  for (size_t ax = 0; ax < c.axes_dims.size(); ++ax) {
    const int64_t dim = c.axes_dims[ax], len = c.axes_lens[ax];
    at::Tensor freqs =
        1.0 / at::pow(c.rope_theta, at::arange(0, dim, 2, at::kDouble) / static_cast<double>(dim));
    at::Tensor pos = at::arange(len, at::kDouble);
    at::Tensor ang = at::outer(pos, freqs).to(at::kFloat).to(o.device());
    axis_freqs_.push_back(ang);  // [len, dim/2] float32 angles
  }
}

at::Tensor TransformerImpl::TimestepEmbedding(float t_in) {
  return TimestepEmbedding(at::full({1}, t_in, options_.dtype(at::kFloat)));
}

at::Tensor TransformerImpl::TimestepEmbedding(const at::Tensor& t_in) {
  // diffusers TimestepEmbedder: t * t_scale, sinusoid in float32 (cos half
  // first), cast to the MLP dtype, Linear -> SiLU -> Linear.
  auto f32 = options_.dtype(at::kFloat);
  at::Tensor t = t_in.to(f32) * c_.t_scale;
  const int64_t half = 128;
  at::Tensor freqs =
      at::exp(-std::log(10000.0) * at::arange(0, half, f32) / static_cast<double>(half));
  at::Tensor args = t.unsqueeze(1) * freqs.unsqueeze(0);
  at::Tensor emb = at::cat({at::cos(args), at::sin(args)}, -1).to(options_.dtype());
  return t_mlp2(at::silu(t_mlp0(emb)));
}

void TransformerImpl::FuseProjections() {
  for (auto* list : {&noise_refiner_, &context_refiner_, &layers_}) {
    for (auto& b : *list) b->FuseProjections();
  }
}

void TransformerImpl::set_kernels(bool on) {
  for (auto* list : {&noise_refiner_, &context_refiner_, &layers_}) {
    for (auto& b : *list) b->set_kernels(on);
  }
}

std::pair<at::Tensor, at::Tensor> TransformerImpl::PadCaption(const at::Tensor& cap) {
  const int64_t L = cap.size(0), Lp = L + PadTo32(L);
  at::Tensor padded = cap;
  if (Lp > L) padded = at::cat({cap, at::zeros({Lp - L, cap.size(1)}, cap.options())}, 0);
  at::Tensor valid = at::arange(Lp, cap.options().dtype(at::kLong)).lt(L).unsqueeze(1);
  return {padded, valid};
}

RopeTable TransformerImpl::Rope(const at::Tensor& ids) {
  std::vector<at::Tensor> cs, ss;
  for (size_t ax = 0; ax < axis_freqs_.size(); ++ax) {
    at::Tensor ang = axis_freqs_[ax].index_select(0, ids.select(1, ax));
    cs.push_back(ang.cos());
    ss.push_back(ang.sin());
  }
  return {at::cat(cs, 1), at::cat(ss, 1)};
}

at::Tensor TransformerImpl::forward(const at::Tensor& latent, float t_in, const at::Tensor& cap,
                                    DitTrace* trace) {
  auto [padded, valid] = PadCaption(cap);
  return Forward(latent, at::full({1}, t_in, options_.dtype(at::kFloat)), padded, valid, trace);
}

at::Tensor Patchify(const at::Tensor& latent, int64_t p, int64_t pf) {
  const int64_t C = latent.size(0), F = latent.size(1), h = latent.size(2), w = latent.size(3);
  const int64_t ft = F / pf, ht = h / p, wt = w / p;
  return latent.view({C, ft, pf, ht, p, wt, p})
      .permute({1, 3, 5, 2, 4, 6, 0})
      .reshape({ft * ht * wt, pf * p * p * C});
}

at::Tensor TransformerImpl::Forward(const at::Tensor& latent, const at::Tensor& t_in,
                                    const at::Tensor& cap, const at::Tensor& cap_valid,
                                    DitTrace* trace) {
  DitTokens tok = Embed(latent, t_in, cap, cap_valid);
  if (trace != nullptr) trace->t_emb = tok.c;
  return Finish(tok, RefineImage(tok, nullptr), nullptr);
}

DitTokens TransformerImpl::Embed(const at::Tensor& latent, const at::Tensor& t_in,
                                 const at::Tensor& cap, const at::Tensor& cap_valid) {
  const int64_t p = c_.patch_size, pf = c_.f_patch_size, D = c_.dim;
  const int64_t F = latent.size(1), h = latent.size(2), w = latent.size(3);
  const int64_t ft = F / pf, ht = h / p, wt = w / p;
  const int64_t N = ft * ht * wt, Np = N + PadTo32(N);
  const int64_t Lp = cap.size(0);
  auto dev = options_.device();
  auto i64 = at::TensorOptions().dtype(at::kLong).device(dev);
  DitTokens tok;
  tok.n = N;
  tok.latent_shape = latent.sizes().vec();
  tok.c = TimestepEmbedding(t_in);

  at::Tensor xi = x_embedder(Patchify(latent, p, pf));
  if (Np > N) xi = at::cat({xi, x_pad_token.expand({Np - N, D})}, 0);
  // Image positions (Lp+1+f, row, col); pad tokens (0, 0, 0).
  at::Tensor grid =
      at::stack(
          at::meshgrid({at::arange(ft, i64) + (Lp + 1), at::arange(ht, i64), at::arange(wt, i64)},
                       "ij"),
          -1)
          .reshape({N, 3});
  if (Np > N) grid = at::cat({grid, at::zeros({Np - N, 3}, i64)}, 0);
  tok.img_rope = Rope(grid);
  tok.x = xi.unsqueeze(0);

  // Caption: the L real rows embedded, then Lp-L learned pad tokens; positions (i+1, 0, 0).
  at::Tensor ci = cap_linear(cap_norm(cap.to(options_.dtype())));
  ci = at::where(cap_valid.to(dev), ci, cap_pad_token.expand({Lp, D}));
  at::Tensor cap_ids = at::zeros({Lp, 3}, i64);
  cap_ids.select(1, 0).copy_(at::arange(1, Lp + 1, i64));
  RopeTable cap_rope = Rope(cap_ids);
  at::Tensor y = ci.unsqueeze(0);
  for (auto& b : context_refiner_) y = b(y, cap_rope, tok.c);
  tok.y = y;
  tok.rope = {at::cat({tok.img_rope.cos, cap_rope.cos}, 0),
              at::cat({tok.img_rope.sin, cap_rope.sin}, 0)};
  return tok;
}

at::Tensor TransformerImpl::RefineImage(const DitTokens& tok, const std::vector<at::Tensor>* hints) {
  at::Tensor x = tok.x;
  for (size_t i = 0; i < noise_refiner_.size(); ++i) {
    x = noise_refiner_[i](x, tok.img_rope, tok.c);
    if (hints != nullptr && i < hints->size() && (*hints)[i].defined()) x = x + (*hints)[i];
  }
  return x;
}

at::Tensor TransformerImpl::Finish(const DitTokens& tok, const at::Tensor& x,
                                   const std::vector<at::Tensor>* layer_hints) {
  const int64_t C = c_.in_channels, p = c_.patch_size, pf = c_.f_patch_size, D = c_.dim;
  const int64_t F = tok.latent_shape[1], h = tok.latent_shape[2], w = tok.latent_shape[3];
  const int64_t ft = F / pf, ht = h / p, wt = w / p;
  at::Tensor u = at::cat({x, tok.y}, 1);
  for (size_t i = 0; i < layers_.size(); ++i) {
    u = layers_[i](u, tok.rope, tok.c);
    if (layer_hints != nullptr && i < layer_hints->size() && (*layer_hints)[i].defined()) {
      u = u + (*layer_hints)[i];
    }
  }
  at::Tensor scale = 1.0 + final_ada(at::silu(tok.c));
  const std::vector<int64_t> norm_shape = {D};
  u = at::layer_norm(u, at::IntArrayRef(norm_shape), {}, {}, 1e-6) * scale.unsqueeze(1);
  at::Tensor out = final_linear(u).squeeze(0).slice(0, 0, tok.n);
  // Unpatchify (inverse of Patchify).
  return out.view({ft, ht, wt, pf, p, p, C}).permute({6, 0, 3, 1, 4, 2, 5}).reshape({C, F, h, w});
}

// ---------------------------------------------------------------------- VAE

ResnetImpl::ResnetImpl(int64_t in, int64_t out, int64_t groups, const at::TensorOptions& o) {
  norm1 = register_module("norm1", GroupNorm(groups, in, o));
  conv1 = register_module("conv1", Conv2d(in, out, 3, o));
  norm2 = register_module("norm2", GroupNorm(groups, out, o));
  conv2 = register_module("conv2", Conv2d(out, out, 3, o));
  if (in != out) conv_shortcut = register_module("conv_shortcut", Conv2d(in, out, 1, o));
}

at::Tensor ResnetImpl::forward(const at::Tensor& x) {
  at::Tensor h = conv1(norm1->ForwardSilu(x));
  h = conv2(norm2->ForwardSilu(h));
  return (conv_shortcut ? conv_shortcut(x) : x) + h;
}

VaeAttentionImpl::VaeAttentionImpl(int64_t ch, int64_t groups, const at::TensorOptions& o) {
  group_norm = register_module("group_norm", GroupNorm(groups, ch, o));
  to_q = register_module("to_q", Linear(ch, ch, true, o));
  to_k = register_module("to_k", Linear(ch, ch, true, o));
  to_v = register_module("to_v", Linear(ch, ch, true, o));
  to_out = Sub(*this, "to_out")->register_module("0", Linear(ch, ch, true, o));
}

at::Tensor VaeAttentionImpl::forward(const at::Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor y = group_norm(x).view({B, C, H * W}).transpose(1, 2);  // [B, HW, C]
  at::Tensor q = to_q(y).unsqueeze(1), k = to_k(y).unsqueeze(1), v = to_v(y).unsqueeze(1);
  at::Tensor a = to_out(Sdpa(q, k, v, false).squeeze(1));
  return x + a.transpose(1, 2).reshape({B, C, H, W});
}

VaeDecoderImpl::VaeDecoderImpl(const VaeConfig& c, const at::TensorOptions& o) : c_(c) {
  auto dec = Sub(*this, "decoder");
  std::vector<int64_t> ch(c.block_out_channels.rbegin(), c.block_out_channels.rend());
  const int64_t g = c.norm_num_groups;
  conv_in = dec->register_module("conv_in", Conv2d(c.latent_channels, ch[0], 3, o));
  auto mid = Sub(*dec, "mid_block");
  auto mr = Sub(*mid, "resnets");
  mid_resnets_.push_back(mr->register_module("0", Resnet(ch[0], ch[0], g, o)));
  mid_resnets_.push_back(mr->register_module("1", Resnet(ch[0], ch[0], g, o)));
  if (c.mid_block_add_attention) {
    mid_attention_ = Sub(*mid, "attentions")->register_module("0", VaeAttention(ch[0], g, o));
  }
  auto ups = Sub(*dec, "up_blocks");
  int64_t prev = ch[0];
  for (size_t i = 0; i < ch.size(); ++i) {
    auto blk = Sub(*ups, std::to_string(i));
    auto rs = Sub(*blk, "resnets");
    std::vector<Resnet> block;
    for (int64_t j = 0; j <= c.layers_per_block; ++j) {
      block.push_back(
          rs->register_module(std::to_string(j), Resnet(j == 0 ? prev : ch[i], ch[i], g, o)));
    }
    up_resnets_.push_back(std::move(block));
    if (i + 1 < ch.size()) {
      upsamplers_.push_back(
          Sub(*Sub(*blk, "upsamplers"), "0")->register_module("conv", Conv2d(ch[i], ch[i], 3, o)));
    } else {
      upsamplers_.push_back(Conv2d(nullptr));
    }
    prev = ch[i];
  }
  conv_norm_out = dec->register_module("conv_norm_out", GroupNorm(g, ch.back(), o));
  conv_out = dec->register_module("conv_out", Conv2d(ch.back(), c.out_channels, 3, o));
}

namespace {

// Switches the fused GroupNorm(+SiLU) kernel of every GroupNorm below `root`.
void SetGroupNormKernels(torch::nn::Module& root, bool on) {
  for (const auto& m : root.modules()) {
    if (auto* g = dynamic_cast<GroupNormImpl*>(m.get()); g != nullptr) g->kernels = on;
  }
}

}  // namespace

void VaeDecoderImpl::set_kernels(bool on) { SetGroupNormKernels(*this, on); }

bool VaeDecoderImpl::IsUnusedKey(const std::string& key) const {
  return absl::StartsWith(key, "encoder.") || absl::StartsWith(key, "quant_conv.") ||
         (!c_.use_post_quant_conv && absl::StartsWith(key, "post_quant_conv."));
}

at::Tensor VaeDecoderImpl::Decode(const at::Tensor& z) {
  at::Tensor x = conv_in(z);
  x = mid_resnets_[0](x);
  if (mid_attention_) x = mid_attention_(x);
  x = mid_resnets_[1](x);
  for (size_t i = 0; i < up_resnets_.size(); ++i) {
    for (auto& r : up_resnets_[i]) x = r(x);
    if (upsamplers_[i]) {
      const std::vector<int64_t> size = {x.size(2) * 2, x.size(3) * 2};
      x = upsamplers_[i](at::upsample_nearest2d(x, at::IntArrayRef(size)));
    }
  }
  return conv_out(conv_norm_out->ForwardSilu(x));
}

at::Tensor VaeDecoderImpl::forward(const at::Tensor& latents) {
  // diffusers: cast to the VAE dtype first, then the affine transform in that dtype.
  at::Tensor z = latents.to(conv_in->weight.options());
  z = z / c_.scaling_factor + c_.shift_factor;
  return Decode(z);
}

at::Tensor VaeDecoderImpl::TiledDecode(const at::Tensor& latents, int64_t tile, int64_t overlap) {
  at::Tensor z = latents.to(conv_in->weight.options());
  z = z / c_.scaling_factor + c_.shift_factor;
  // Decoder upsampling factor: 2^(number of upsamplers) = 8 for the FLUX VAE.
  const int64_t up = int64_t{1} << (static_cast<int64_t>(up_resnets_.size()) - 1);
  const int64_t stride = tile - overlap;
  const int64_t blend = overlap * up, limit = stride * up;
  std::vector<std::vector<at::Tensor>> rows;
  for (int64_t i = 0; i < z.size(2); i += stride) {
    std::vector<at::Tensor> row;
    for (int64_t j = 0; j < z.size(3); j += stride) {
      row.push_back(Decode(z.slice(2, i, i + tile).slice(3, j, j + tile)));
    }
    rows.push_back(std::move(row));
  }
  // Linear cross-fade over `blend` output pixels, in place, as diffusers' blend_v / blend_h.
  auto ramp = [&](int64_t e, const at::Tensor& like) {
    return at::arange(e, like.options().dtype(at::kFloat)) / static_cast<double>(e);
  };
  std::vector<at::Tensor> out_rows;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<at::Tensor> out_row;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      at::Tensor& t = rows[i][j];
      if (i > 0) {
        const at::Tensor& a = rows[i - 1][j];
        const int64_t e = std::min({a.size(2), t.size(2), blend});
        if (e > 0) {
          at::Tensor r = ramp(e, t).view({1, 1, e, 1});
          t.slice(2, 0, e).copy_(a.slice(2, a.size(2) - e) * (1 - r) + t.slice(2, 0, e) * r);
        }
      }
      if (j > 0) {
        const at::Tensor& a = rows[i][j - 1];
        const int64_t e = std::min({a.size(3), t.size(3), blend});
        if (e > 0) {
          at::Tensor r = ramp(e, t).view({1, 1, 1, e});
          t.slice(3, 0, e).copy_(a.slice(3, a.size(3) - e) * (1 - r) + t.slice(3, 0, e) * r);
        }
      }
      out_row.push_back(t.slice(2, 0, limit).slice(3, 0, limit));
    }
    out_rows.push_back(at::cat(out_row, 3));
  }
  return at::cat(out_rows, 2);
}

VaeEncoderImpl::VaeEncoderImpl(const VaeConfig& c, const at::TensorOptions& o) : c_(c) {
  auto enc = Sub(*this, "encoder");
  const std::vector<int64_t>& ch = c.block_out_channels;
  const int64_t g = c.norm_num_groups;
  conv_in = enc->register_module("conv_in", Conv2d(c.in_channels, ch[0], 3, o));
  auto downs = Sub(*enc, "down_blocks");
  int64_t prev = ch[0];
  for (size_t i = 0; i < ch.size(); ++i) {
    auto blk = Sub(*downs, std::to_string(i));
    auto rs = Sub(*blk, "resnets");
    std::vector<Resnet> block;
    for (int64_t j = 0; j < c.layers_per_block; ++j) {
      block.push_back(
          rs->register_module(std::to_string(j), Resnet(j == 0 ? prev : ch[i], ch[i], g, o)));
    }
    down_resnets_.push_back(std::move(block));
    if (i + 1 < ch.size()) {
      downsamplers_.push_back(Sub(*Sub(*blk, "downsamplers"), "0")
                                  ->register_module("conv", Conv2d(ch[i], ch[i], 3, o, 2, 0)));
    } else {
      downsamplers_.push_back(Conv2d(nullptr));
    }
    prev = ch[i];
  }
  auto mid = Sub(*enc, "mid_block");
  auto mr = Sub(*mid, "resnets");
  mid_resnets_.push_back(mr->register_module("0", Resnet(ch.back(), ch.back(), g, o)));
  mid_resnets_.push_back(mr->register_module("1", Resnet(ch.back(), ch.back(), g, o)));
  if (c.mid_block_add_attention) {
    mid_attention_ = Sub(*mid, "attentions")->register_module("0", VaeAttention(ch.back(), g, o));
  }
  conv_norm_out = enc->register_module("conv_norm_out", GroupNorm(g, ch.back(), o));
  conv_out = enc->register_module("conv_out", Conv2d(ch.back(), 2 * c.latent_channels, 3, o));
  if (c.use_quant_conv) {
    quant_conv = register_module("quant_conv",
                                 Conv2d(2 * c.latent_channels, 2 * c.latent_channels, 1, o));
  }
}

void VaeEncoderImpl::set_kernels(bool on) { SetGroupNormKernels(*this, on); }

bool VaeEncoderImpl::IsUnusedKey(const std::string& key) const {
  return absl::StartsWith(key, "decoder.") || absl::StartsWith(key, "post_quant_conv.") ||
         (!c_.use_quant_conv && absl::StartsWith(key, "quant_conv."));
}

at::Tensor VaeEncoderImpl::forward(const at::Tensor& image) {
  at::Tensor x = conv_in(image.to(conv_in->weight.options()));
  for (size_t i = 0; i < down_resnets_.size(); ++i) {
    for (auto& r : down_resnets_[i]) x = r(x);
    if (downsamplers_[i]) {
      // diffusers Downsample2D(padding=0): zero pad right and bottom by one, stride-2 conv.
      x = downsamplers_[i](at::constant_pad_nd(x, {0, 1, 0, 1}, 0));
    }
  }
  x = mid_resnets_[0](x);
  if (mid_attention_) x = mid_attention_(x);
  x = mid_resnets_[1](x);
  x = conv_out(conv_norm_out->ForwardSilu(x));
  return quant_conv ? quant_conv(x) : x;
}

// ------------------------------------------------------------------- random

void InitRandom(torch::nn::Module& module, uint64_t seed) {
  at::NoGradGuard no_grad;
  auto params = module.named_parameters(/*recurse=*/true);
  if (params.size() == 0) return;
  at::Generator gen = at::globalContext().defaultGenerator(params[0].value().device()).clone();
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(seed);
  }
  for (auto& p : params) {
    at::Tensor t = p.value();
    const std::string& name = p.key();
    if (t.dim() >= 2 && name.find("pad_token") == std::string::npos) {
      const double fan_in = static_cast<double>(t.numel() / t.size(0));
      t.normal_(0.0, 1.0 / std::sqrt(fan_in), gen);
    } else if (t.dim() == 1 && absl::EndsWith(name, ".weight")) {
      t.normal_(1.0, 0.05, gen);  // norm weights near 1
    } else {
      t.normal_(0.0, 0.02, gen);
    }
  }
}

}  // namespace zfarm::worker::model
