#ifndef ZFARM_WORKER_MODEL_FUSED_KERNELS_H_
#define ZFARM_WORKER_MODEL_FUSED_KERNELS_H_

// Raw CUDA kernels for the DiT block's memory-bound steps (the CUDA speed path), bf16 in and
// out with float32 arithmetic, rounding exactly where the reference op sequence
// (worker/model/fused_ops.cc) rounds. Torch-free: pointers, sizes and a
// cudaStream_t passed as void*. Only fused_ops.cc calls these; it checks shapes,
// dtypes and strides. Each launcher returns 0 or the cudaError_t of the launch.
//
// Built only when the CUDA compiler is available (ZFARM_CUDA_KERNELS).

#include <cstdint>
#include <initializer_list>

namespace zfarm::worker::model::cuda {

// y[r, i] = bf16(bf16(bf16(x[r, i] * rstd_r) * w[i]) * s[i]) (s may be null: no
// second product); rstd_r = rsqrt(mean_i(x[r, i]^2) + eps). x rows are
// `x_stride` elements apart; y is contiguous [rows, cols].
int RmsNormMod(const void* x, int64_t x_stride, const void* w, const void* s, void* y,
               int64_t rows, int64_t cols, float eps, void* stream);

// out[r, i] = bf16(x[r, i] + bf16(g[i] * n)) with n = bf16(bf16(y[r, i] * rstd_r) * w[i]),
// rstd_r from y's row (g may be null: out = bf16(x + n)). All contiguous [rows, cols].
int GatedResidualRmsNorm(const void* x, const void* y, const void* w, const void* g, void* out,
                         int64_t rows, int64_t cols, float eps, void* stream);

// Per (s, h) head vector of `head_dim` elements at in + s * in_stride + h * head_dim:
// RMSNorm with weight w [head_dim], then the interleaved-pair rotation
// (a, b) -> (a cos - b sin, a sin + b cos) with cos/sin float32 [S, head_dim / 2].
// out: contiguous [S, heads, head_dim].
int QkNormRope(const void* in, int64_t in_stride, const void* w, const float* cos,
               const float* sin, void* out, int64_t seq, int64_t heads, int64_t head_dim,
               float eps, void* stream);

// out[r, j] = bf16(bf16(silu(h[r, j])) * h[r, F + j]) for h contiguous [rows, 2F].
int SwiGlu(const void* h, void* out, int64_t rows, int64_t f, void* stream);

// GroupNorm of x contiguous NCHW [n, c, hw] with `groups` groups, float32
// statistics (biased variance), y = bf16(x * a + b) with a = rstd * gamma[c],
// b = beta[c] - mean * a; then, if silu, y = bf16(y / (1 + exp(-y))). `partials`:
// float32 scratch of GroupNormScratch(n, c, hw, groups) elements.
int64_t GroupNormScratch(int64_t n, int64_t c, int64_t hw, int64_t groups);
int GroupNormAct(const void* x, const void* gamma, const void* beta, void* y, float* partials,
                 int64_t n, int64_t c, int64_t hw, int64_t groups, float eps, bool silu,
                 void* stream);

// Row-wise e4m3 quantization (the formula of e4m3.h): scale[r] float32, q[r, i] e4m3fn
// bytes. x rows are `x_stride` elements apart; q is contiguous [rows, cols], scale [rows].
int QuantizeE4m3Rows(const void* x, int64_t x_stride, void* q, float* scale, int64_t rows,
                     int64_t cols, void* stream);

// RmsNormMod's rows (x as there), quantized as QuantizeE4m3Rows would quantize RmsNormMod's
// output, without storing it. Vector rows only (E4m3RowKernelApplies(cols, x_stride));
// cudaErrorInvalidValue otherwise.
int RmsNormModE4m3(const void* x, int64_t x_stride, const void* w, const void* s, void* q,
                   float* scale, int64_t rows, int64_t cols, float eps, void* stream);
// SwiGlu's rows (h contiguous [rows, 2F]), quantized as QuantizeE4m3Rows would quantize
// SwiGlu's output, without storing it. E4m3RowKernelApplies(f, 2 * f) only.
int SwiGluE4m3(const void* h, void* q, float* scale, int64_t rows, int64_t f, void* stream);
// True when rows of `cols` elements `stride` apart, read through `ptrs`, fit the
// one-block-per-row vector kernels (cols % 8 == 0, stride % 8 == 0, at most 4 * 8 * 1024
// elements, every non-null pointer 16-byte aligned): the launchers' own test.
bool E4m3RowKernelApplies(int64_t cols, int64_t stride, std::initializer_list<const void*> ptrs);

}  // namespace zfarm::worker::model::cuda

#endif  // ZFARM_WORKER_MODEL_FUSED_KERNELS_H_
