// CUDA kernels declared in fused_kernels.h. Arithmetic in float32 with explicit
// round-to-nearest intrinsics (no FMA contraction), rounding to bf16 where the
// reference ATen sequence stores a bf16 tensor.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "worker/model/fused_kernels.h"

namespace zfarm::worker::model::cuda {
namespace {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float F(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ bf16 B(float v) { return __float2bfloat16_rn(v); }
// bf16 round trip: the value a bf16 tensor would hold.
__device__ __forceinline__ float R(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float BlockSum(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpSum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float p = lane < static_cast<int>(blockDim.x >> 5) ? partial[lane] : 0.0f;
    p = WarpSum(p);
    if (lane == 0) total = p;
  }
  __syncthreads();
  return total;
}

__device__ __forceinline__ float RowRstd(const bf16* row, int64_t cols, float eps) {
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = F(row[i]);
    ss = __fadd_rn(ss, __fmul_rn(v, v));
  }
  ss = BlockSum(ss);
  return rsqrtf(__fadd_rn(__fdiv_rn(ss, static_cast<float>(cols)), eps));
}

__global__ void RmsNormModKernel(const bf16* x, int64_t x_stride, const bf16* w, const bf16* s,
                                 bf16* y, int64_t cols, float eps) {
  const bf16* xr = x + blockIdx.x * x_stride;
  bf16* yr = y + blockIdx.x * cols;
  const float rstd = RowRstd(xr, cols, eps);
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    float v = R(__fmul_rn(R(__fmul_rn(F(xr[i]), rstd)), F(w[i])));
    if (s != nullptr) v = R(__fmul_rn(v, F(s[i])));
    yr[i] = B(v);
  }
}

__global__ void GatedResidualKernel(const bf16* x, const bf16* y, const bf16* w, const bf16* g,
                                    bf16* out, int64_t cols, float eps) {
  const int64_t base = blockIdx.x * cols;
  const float rstd = RowRstd(y + base, cols, eps);
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    float n = R(__fmul_rn(R(__fmul_rn(F(y[base + i]), rstd)), F(w[i])));
    if (g != nullptr) n = R(__fmul_rn(F(g[i]), n));
    out[base + i] = B(__fadd_rn(F(x[base + i]), n));
  }
}

// One warp per (s, h) head vector.
__global__ void QkNormRopeKernel(const bf16* in, int64_t in_stride, const bf16* w,
                                 const float* cos, const float* sin, bf16* out, int64_t seq,
                                 int64_t heads, int64_t head_dim, float eps) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= seq * heads) return;  // whole warps exit together
  const int64_t s = warp / heads, h = warp % heads;
  const bf16* v = in + s * in_stride + h * head_dim;
  bf16* o = out + warp * head_dim;
  float ss = 0.0f;
  for (int64_t i = lane; i < head_dim; i += 32) {
    const float a = F(v[i]);
    ss = __fadd_rn(ss, __fmul_rn(a, a));
  }
  ss = WarpSum(ss);
  const float rstd = rsqrtf(__fadd_rn(__fdiv_rn(ss, static_cast<float>(head_dim)), eps));
  const int64_t half = head_dim / 2;
  for (int64_t p = lane; p < half; p += 32) {
    const float a = R(__fmul_rn(R(__fmul_rn(F(v[2 * p]), rstd)), F(w[2 * p])));
    const float b = R(__fmul_rn(R(__fmul_rn(F(v[2 * p + 1]), rstd)), F(w[2 * p + 1])));
    const float c = cos[s * half + p], sn = sin[s * half + p];
    o[2 * p] = B(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, sn)));
    o[2 * p + 1] = B(__fadd_rn(__fmul_rn(a, sn), __fmul_rn(b, c)));
  }
}

__global__ void SwiGluKernel(const bf16* h, bf16* out, int64_t rows, int64_t f) {
  const int64_t n = rows * f;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / f, j = k % f;
    const float a = F(h[r * 2 * f + j]);
    const float silu = R(__fdiv_rn(a, __fadd_rn(1.0f, expf(-a))));
    out[k] = B(__fmul_rn(silu, F(h[r * 2 * f + f + j])));
  }
}

int Done() { return static_cast<int>(cudaGetLastError()); }

}  // namespace

int RmsNormMod(const void* x, int64_t x_stride, const void* w, const void* s, void* y,
               int64_t rows, int64_t cols, float eps, void* stream) {
  if (rows == 0) return 0;
  RmsNormModKernel<<<static_cast<unsigned>(rows), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const bf16*>(x), x_stride, static_cast<const bf16*>(w),
      static_cast<const bf16*>(s), static_cast<bf16*>(y), cols, eps);
  return Done();
}

int GatedResidualRmsNorm(const void* x, const void* y, const void* w, const void* g, void* out,
                         int64_t rows, int64_t cols, float eps, void* stream) {
  if (rows == 0) return 0;
  GatedResidualKernel<<<static_cast<unsigned>(rows), 256, 0,
                        static_cast<cudaStream_t>(stream)>>>(
      static_cast<const bf16*>(x), static_cast<const bf16*>(y), static_cast<const bf16*>(w),
      static_cast<const bf16*>(g), static_cast<bf16*>(out), cols, eps);
  return Done();
}

int QkNormRope(const void* in, int64_t in_stride, const void* w, const float* cos,
               const float* sin, void* out, int64_t seq, int64_t heads, int64_t head_dim,
               float eps, void* stream) {
  const int64_t warps = seq * heads;
  if (warps == 0) return 0;
  const int threads = 256;
  const int64_t blocks = (warps * 32 + threads - 1) / threads;
  QkNormRopeKernel<<<static_cast<unsigned>(blocks), threads, 0,
                     static_cast<cudaStream_t>(stream)>>>(
      static_cast<const bf16*>(in), in_stride, static_cast<const bf16*>(w), cos, sin,
      static_cast<bf16*>(out), seq, heads, head_dim, eps);
  return Done();
}

int SwiGlu(const void* h, void* out, int64_t rows, int64_t f, void* stream) {
  const int64_t n = rows * f;
  if (n == 0) return 0;
  const int threads = 256;
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > 65535L * 16) blocks = 65535L * 16;
  SwiGluKernel<<<static_cast<unsigned>(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const bf16*>(h), static_cast<bf16*>(out), rows, f);
  return Done();
}

}  // namespace zfarm::worker::model::cuda
