#ifndef ZFARM_WORKER_MODEL_FUSED_OPS_H_
#define ZFARM_WORKER_MODEL_FUSED_OPS_H_

// The DiT block's memory-bound steps as single ops (the speed path). Each op has a
// reference ATen sequence — the exact op order and roundings of diffusers'
// ZImageTransformerBlock, used on the CPU, for float32, and where the CUDA
// kernels are not built — and, for bfloat16 CUDA tensors, one CUDA kernel
// (fused_kernels.h) that rounds at the same places. `kernel` = false forces the
// reference (benchmarks, tests).
//
//   at::Tensor h = RmsNormMod(x, norm1_w, scale, eps, true);      // norm(x) * scale
//   x = GatedResidualRmsNorm(x, attn, norm2_w, gate, eps, true);  // x + gate * norm(attn)

#include <ATen/ATen.h>

namespace zfarm::worker::model {

// True when this build has the CUDA kernels (compiled with the CUDA compiler).
bool FusedKernelsBuilt();

// (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(x dtype) * w [* s]. x: [..., D] with a
// unit last stride; w, s: [D] (s may be undefined). Returns x's shape, contiguous.
at::Tensor RmsNormMod(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, double eps,
                      bool kernel);

// x + g * RmsNormMod(y, w) (g undefined: x + RmsNormMod(y, w)). x, y: [..., D]
// of equal shape; w, g: [D].
at::Tensor GatedResidualRmsNorm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
                                const at::Tensor& g, double eps, bool kernel);

// Per-head RMSNorm (weight w [Dh]) then the interleaved-pair rotation of diffusers'
// apply_rotary_emb in float32. in: [1, S, H * Dh] (a unit last stride; rows may be
// strided, e.g. a slice of a fused qkv projection); cos/sin: float32 [S, Dh / 2].
// Returns [1, S, H, Dh] contiguous in in's dtype.
at::Tensor QkNormRope(const at::Tensor& in, int64_t heads, const at::Tensor& w,
                      const at::Tensor& cos, const at::Tensor& sin, double eps, bool kernel);

// silu(h[..., :F]) * h[..., F:] for h: [..., 2F] contiguous.
at::Tensor SwiGlu(const at::Tensor& h, bool kernel);

// at::group_norm(x, groups, w, b, eps), then SiLU if `silu`. x: [N, C, H, W]. The
// kernel (contiguous NCHW bf16) splits each group's statistics over many blocks —
// ATen's reduces a group in one block, 32 blocks for the VAE, half its time.
at::Tensor GroupNormAct(const at::Tensor& x, int64_t groups, const at::Tensor& w,
                        const at::Tensor& b, double eps, bool silu, bool kernel);

// The FP8 GEMMs' per-row activation quantization (e4m3.h's formula) in one pass over x:
// for bf16 CUDA x2d [rows, K] with a unit last stride, sets *q (uint8 [rows, K] e4m3fn
// bytes, contiguous) and *scale (float32 [rows, 1]) and returns true. Returns false, with
// nothing set, where the kernel does not apply (not built, not bf16 CUDA); the caller
// (fp8.h's QuantizeActivations) then runs the ATen sequence, which it equals bit for bit.
bool QuantizeE4m3Rows(const at::Tensor& x2d, at::Tensor* q, at::Tensor* scale);
// QuantizeE4m3Rows(RmsNormMod(x, w, s, eps, true)) and QuantizeE4m3Rows(SwiGlu(h, true))
// in one pass each, without storing the bf16 intermediate (rows [x.numel() / D, D] and
// [h.numel() / 2F, F]); the same bytes and scales. False, nothing set, where the vector
// kernel does not apply (also D or F not a multiple of 8, misaligned or strided data).
bool RmsNormModE4m3(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, double eps,
                    at::Tensor* q, at::Tensor* scale);
bool SwiGluE4m3(const at::Tensor& h, at::Tensor* q, at::Tensor* scale);

}  // namespace zfarm::worker::model

#endif  // ZFARM_WORKER_MODEL_FUSED_OPS_H_
