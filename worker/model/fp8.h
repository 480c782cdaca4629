#ifndef ZFARM_WORKER_MODEL_FP8_H_
#define ZFARM_WORKER_MODEL_FP8_H_

// The FP8 mode of the DiT (`--precision fp8`): e4m3fn weights with per-output-channel
// float32 scales, activations quantized per token at run time, and the layer recipe that
// says which Linear layers take part. Internal to worker/model and worker/pipeline
// (includes Torch).
//
// Format: e4m3fn (1 sign, 4 exponent bits of bias 7, 3 mantissa bits; no infinities;
// 0x7F/0xFF are NaN; largest finite value 448; smallest subnormal 2^-9). Weights are kept
// as their raw bytes in uint8 tensors on every torch version (Debian's libtorch 1.13 has no
// float8 dtype; torch >= 2.1 views the same bytes as at::kFloat8_e4m3fn), so a quantized
// module, the FP8 weights cache and the tests are the same bytes everywhere.
//
// Quantization (device-independent, exactly reproducible):
//   weight W [out, in]: s_w[o] = amax(|W[o, :]|) / 448 (1 for an all-zero row),
//                       q = e4m3(W / s_w) rounded to nearest, ties to even;
//   activation x [M, in]: s_x[m] = max(amax(|x[m, :]|), 1e-12) / 448, per token, per call;
//   y = (q_x · q_w^T) ⊙ s_x ⊙ s_w^T (+ bias), in x's dtype.
// On CUDA with compute capability >= 8.9 and torch >= 2.5 the product runs as one
// at::_scaled_mm (cuBLASLt / CUTLASS FP8 GEMM, fp32 accumulation, bf16 out); elsewhere the
// reference path computes the same quantized values and multiplies them in float32
// (tests and `zfarm-worker compare` on the CPU; never a speed path).
//
// Thread-safety: pure functions, except that modules are owned by one thread (modules.h).

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "worker/model/e4m3.h"

namespace zfarm::worker::model {

// The recipe: one row per kind of Linear layer of the DiT (module keys as named_modules()
// names them). `pattern` is "*SUFFIX" (any block) or "PREFIX*" (a top-level component).
// The default is NVIDIA ModelOpt's Z-Image recipe: attention q/k/v/out and the FFN's
// w1/w2/w3 of every block (noise refiner, context refiner, main layers) in FP8; the
// embedders, the adaLN/conditioning layers and the final layer in bf16 (norms are not
// Linear layers and always stay in the activation dtype). Every Linear of the DiT matches
// exactly one row (tested), so a new layer cannot slip into FP8 unnoticed.
struct Fp8RecipeRow {
  std::string_view pattern;
  bool fp8;
  std::string_view what;
};
inline constexpr Fp8RecipeRow kZImageFp8Recipe[] = {
    {"*.attention.to_q", true, "attention query projection"},
    {"*.attention.to_k", true, "attention key projection"},
    {"*.attention.to_v", true, "attention value projection"},
    {"*.attention.to_out.0", true, "attention output projection"},
    {"*.feed_forward.w1", true, "FFN gate"},
    {"*.feed_forward.w2", true, "FFN down"},
    {"*.feed_forward.w3", true, "FFN up"},
    {"*.adaLN_modulation.0", false, "block adaLN modulation (conditioning)"},
    {"all_x_embedder*", false, "patch embedder"},
    {"t_embedder*", false, "timestep embedder"},
    {"cap_embedder*", false, "caption embedder"},
    {"all_final_layer*", false, "final layer and its adaLN"},
};

// The recipe row of a Linear's module key ("layers.3.feed_forward.w2"); nullptr when no
// row matches.
const Fp8RecipeRow* Fp8RecipeRowOf(std::string_view module_key);
// True when the recipe puts that Linear in FP8 (false for unmatched keys).
bool Fp8Selected(std::string_view module_key);
// The keys of the Linear layers of `module` that the recipe puts in FP8, in module order.
std::vector<std::string> Fp8Layers(torch::nn::Module& module);

// LinearImpl::ToFp8() (quantize the loaded weights) or PrepareFp8() (empty FP8 parameters
// for an FP8 weights cache) on every Linear of `module` the recipe selects; returns how
// many. Call before FuseProjections().
int QuantizeFp8Layers(torch::nn::Module& module);
int PrepareFp8Layers(torch::nn::Module& module);

// x rounded to the nearest e4m3 value (ties to even) after clamping to ±448; float32, on
// x's device. NaN stays NaN.
at::Tensor RoundToE4m3(const at::Tensor& x);
// The e4m3fn bytes (uint8) of values already on the e4m3 grid (RoundToE4m3's output).
at::Tensor EncodeE4m3(const at::Tensor& on_grid);
// The float32 values of e4m3fn bytes (uint8, any shape, any device); 0x7F/0xFF give NaN.
at::Tensor DecodeE4m3(const at::Tensor& bytes);

struct QuantizedWeight {
  at::Tensor data;   // uint8 [out, in]: e4m3fn bytes
  at::Tensor scale;  // float32 [out]
};
// Per-output-channel quantization of w [out, in] (any float dtype; computed in float32).
QuantizedWeight QuantizeWeight(const at::Tensor& w);
// Per-token scales of x2d [M, K] (e4m3.h's formula): float32 [M, 1].
at::Tensor TokenScales(const at::Tensor& x2d);

struct QuantizedActivations {
  at::Tensor data;   // uint8 [M, K]: e4m3fn bytes
  at::Tensor scale;  // float32 [M, 1]: TokenScales
};
// x2d [M, K] quantized per token (e4m3.h): one CUDA kernel (fused_ops.h) for bf16 CUDA
// x2d when `kernel`, else the ATen sequence; both give the same bytes and scales.
QuantizedActivations QuantizeActivations(const at::Tensor& x2d, bool kernel);

// y = x W^T (+ bias) for W = data ⊙ scale (QuantizeWeight's form), x [..., in]. Returns
// [..., out] in x's dtype: the native FP8 GEMM on CUDA in a native build (Fp8NativeBuild)
// when in and out are multiples of 16, else the float32 reference (on x's device).
at::Tensor Fp8Linear(const at::Tensor& x, const at::Tensor& data, const at::Tensor& scale,
                     const at::Tensor& bias);
// Fp8Linear's product for activations already quantized (QuantizeActivations, or a fused
// kernel of fused_ops.h that quantizes as it normalises): [M, out] in `out_dtype`.
at::Tensor Fp8Gemm(const QuantizedActivations& xq, const at::Tensor& data, const at::Tensor& scale,
                   const at::Tensor& bias, at::ScalarType out_dtype);

// True when this build has the native FP8 GEMM (libtorch >= 2.5 with its at::_scaled_mm).
bool Fp8NativeBuild();
// The start-up check of `--precision fp8`: OK for a CUDA device of compute capability
// >= 8.9 in a native build; otherwise FAILED_PRECONDITION naming the flag, the device and
// its capability, e.g. "--precision fp8 needs FP8 tensor cores (CUDA compute capability 8.9
// or later); cuda:0 (NVIDIA A100) has compute capability 8.0". `device` is "cpu" or
// "cuda:N"; `cc_major`/`cc_minor` are ignored for the CPU. Pure: the caller queries the device.
absl::Status CheckFp8Device(const std::string& device, const std::string& name, int cc_major,
                            int cc_minor);

}  // namespace zfarm::worker::model

#endif  // ZFARM_WORKER_MODEL_FP8_H_
