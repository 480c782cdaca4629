// CUDA kernels declared in fused_kernels.h. Arithmetic in float32 with explicit
// round-to-nearest intrinsics (no FMA contraction), rounding to bf16 where the
// reference ATen sequence stores a bf16 tensor.

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "worker/model/e4m3.h"
#include "worker/model/fused_kernels.h"

namespace zfarm::worker::model::cuda {
namespace {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float F(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ bf16 B(float v) { return __float2bfloat16_rn(v); }
// bf16 round trip: the value a bf16 tensor would hold.
__device__ __forceinline__ float R(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

struct SumOp {
  __device__ float operator()(float a, float b) const { return __fadd_rn(a, b); }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename Op>
__device__ __forceinline__ float WarpReduce(float v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float WarpSum(float v) { return WarpReduce(v, SumOp()); }

// `op` over the block (blockDim.x a multiple of 32, at most 1024; absent warps count as 0, the
// identity of a sum and of a max of magnitudes); every thread gets the result.
template <typename Op>
__device__ float BlockReduce(float v, Op op) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpReduce(v, op);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float p = lane < static_cast<int>(blockDim.x >> 5) ? partial[lane] : 0.0f;
    p = WarpReduce(p, op);
    if (lane == 0) total = p;
  }
  __syncthreads();
  return total;
}
__device__ float BlockSum(float v) { return BlockReduce(v, SumOp()); }

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
  // Pairs as one 4-byte bf16x2 access (in_stride and head_dim even, checked by the launcher).
  const __nv_bfloat162* v2 = reinterpret_cast<const __nv_bfloat162*>(v);
  const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(w);
  __nv_bfloat162* o2 = reinterpret_cast<__nv_bfloat162*>(o);
  for (int64_t p = lane; p < half; p += 32) {
    const __nv_bfloat162 xv = v2[p], wv = w2[p];
    const float a = R(__fmul_rn(R(__fmul_rn(F(xv.x), rstd)), F(wv.x)));
    const float b = R(__fmul_rn(R(__fmul_rn(F(xv.y), rstd)), F(wv.y)));
    const float c = cos[s * half + p], sn = sin[s * half + p];
    __nv_bfloat162 r;
    r.x = B(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, sn)));
    r.y = B(__fadd_rn(__fmul_rn(a, sn), __fmul_rn(b, c)));
    o2[p] = r;
  }
}

__device__ __forceinline__ bf16 SwiGluOne(bf16 a_in, bf16 b) {
  const float a = F(a_in);
  const float silu = R(__fdiv_rn(a, __fadd_rn(1.0f, expf(-a))));
  return B(__fmul_rn(silu, F(b)));
}

// grid.y = row; x covers the row's F outputs.
__global__ void SwiGluKernel(const bf16* h, bf16* out, int64_t f) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= f) return;
  const bf16* hr = h + blockIdx.y * 2 * f;
  out[blockIdx.y * f + j] = SwiGluOne(hr[j], hr[f + j]);
}

// Eight outputs per thread with 16-byte loads and stores (f % 8 == 0, aligned).
__global__ void SwiGluVecKernel(const bf16* h, bf16* out, int64_t f) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c * 8 >= f) return;
  const bf16* hr = h + blockIdx.y * 2 * f;
  uint4 a = reinterpret_cast<const uint4*>(hr)[c];
  uint4 b = reinterpret_cast<const uint4*>(hr + f)[c];
  uint4 o;
  const bf16* av = reinterpret_cast<const bf16*>(&a);
  const bf16* bv = reinterpret_cast<const bf16*>(&b);
  bf16* ov = reinterpret_cast<bf16*>(&o);
#pragma unroll
  for (int e = 0; e < 8; ++e) ov[e] = SwiGluOne(av[e], bv[e]);
  reinterpret_cast<uint4*>(out + blockIdx.y * f)[c] = o;
}

// Row kernels with 16-byte accesses: each thread keeps up to kChunks chunks of 8
// elements of the normalised row in registers (cols % 8 == 0, aligned rows).
constexpr int kChunks = 4;

__device__ __forceinline__ float ChunkSumSq(const uint4& u) {
  const bf16* v = reinterpret_cast<const bf16*>(&u);
  float ss = 0.0f;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float a = F(v[e]);
    ss = __fadd_rn(ss, __fmul_rn(a, a));
  }
  return ss;
}

// Loads this block's row (`cols` bf16, 16-byte chunks spread over the block's threads) into
// `buf` and returns this thread's fold, in chunk order, of per_chunk(chunk) with `op`.
template <typename Op, typename PerChunk>
__device__ __forceinline__ float LoadRow(const bf16* row, int64_t cols, uint4 (&buf)[kChunks],
                                         Op op, PerChunk per_chunk) {
  const int64_t chunks = cols / 8;
  const uint4* r = reinterpret_cast<const uint4*>(row);
  float acc = 0.0f;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (c < chunks) {
      buf[i] = r[c];
      acc = op(acc, per_chunk(buf[i]));
    }
  }
  return acc;
}

// The vector kernels' shared prologue: loads this block's row into `buf` and returns its
// RMSNorm scale 1/sqrt(mean(x^2) + eps), summed in the reference's order.
__device__ __forceinline__ float LoadRowRstd(const bf16* row, int64_t cols, float eps,
                                             uint4 (&buf)[kChunks]) {
  const float ss = BlockSum(LoadRow(row, cols, buf, SumOp(), ChunkSumSq));
  return rsqrtf(__fadd_rn(__fdiv_rn(ss, static_cast<float>(cols)), eps));
}

__global__ void RmsNormModVecKernel(const bf16* x, int64_t x_stride, const bf16* w, const bf16* s,
                                    bf16* y, int64_t cols, float eps) {
  const int64_t chunks = cols / 8;
  uint4 buf[kChunks];
  const float rstd = LoadRowRstd(x + blockIdx.x * x_stride, cols, eps, buf);
  uint4* yr = reinterpret_cast<uint4*>(y + blockIdx.x * cols);
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (c < chunks) {
      const bf16* v = reinterpret_cast<const bf16*>(&buf[i]);
      const uint4 wu = reinterpret_cast<const uint4*>(w)[c];
      const bf16* wv = reinterpret_cast<const bf16*>(&wu);
      uint4 su{};
      if (s != nullptr) su = reinterpret_cast<const uint4*>(s)[c];
      const bf16* sv = reinterpret_cast<const bf16*>(&su);
      uint4 o;
      bf16* ov = reinterpret_cast<bf16*>(&o);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        float r = R(__fmul_rn(R(__fmul_rn(F(v[e]), rstd)), F(wv[e])));
        if (s != nullptr) r = R(__fmul_rn(r, F(sv[e])));
        ov[e] = B(r);
      }
      yr[c] = o;
    }
  }
}

__global__ void GatedResidualVecKernel(const bf16* x, const bf16* y, const bf16* w, const bf16* g,
                                       bf16* out, int64_t cols, float eps) {
  const int64_t chunks = cols / 8, base = blockIdx.x * cols;
  uint4 buf[kChunks];
  const float rstd = LoadRowRstd(y + base, cols, eps, buf);
  const uint4* xr = reinterpret_cast<const uint4*>(x + base);
  uint4* outr = reinterpret_cast<uint4*>(out + base);
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (c < chunks) {
      const bf16* v = reinterpret_cast<const bf16*>(&buf[i]);
      const uint4 xu = xr[c], wu = reinterpret_cast<const uint4*>(w)[c];
      const bf16* xv = reinterpret_cast<const bf16*>(&xu);
      const bf16* wv = reinterpret_cast<const bf16*>(&wu);
      uint4 gu{};
      if (g != nullptr) gu = reinterpret_cast<const uint4*>(g)[c];
      const bf16* gv = reinterpret_cast<const bf16*>(&gu);
      uint4 o;
      bf16* ov = reinterpret_cast<bf16*>(&o);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        float n = R(__fmul_rn(R(__fmul_rn(F(v[e]), rstd)), F(wv[e])));
        if (g != nullptr) n = R(__fmul_rn(F(gv[e]), n));
        ov[e] = B(__fadd_rn(F(xv[e]), n));
      }
      outr[c] = o;
    }
  }
}

bool Aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Threads for a vectorised row kernel, or 0 when the row does not qualify.
int VecThreads(int64_t cols, int64_t stride, std::initializer_list<const void*> ptrs) {
  if (cols % 8 != 0 || stride % 8 != 0) return 0;
  for (const void* p : ptrs) {
    if (!Aligned16(p)) return 0;
  }
  const int64_t chunks = cols / 8;
  const int64_t per = (chunks + kChunks - 1) / kChunks;
  const int64_t threads = ((per + 31) / 32) * 32;
  return threads <= 1024 ? static_cast<int>(threads) : 0;
}


// ---- Per-row e4m3 quantization (the FP8 GEMMs' activations).

// Max |value| over the block (BlockReduce's conditions).
__device__ float BlockMax(float v) { return BlockReduce(v, MaxOp()); }

__device__ __forceinline__ float RowScale(float amax) {
  return __fmul_rn(fmaxf(amax, kE4m3MinAmax), kE4m3InvMax);
}

__device__ __forceinline__ uint8_t E4m3(float v, float scale) {
  const float q = fminf(fmaxf(__fdiv_rn(v, scale), -kE4m3Max), kE4m3Max);
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(q, __NV_SATFINITE, __NV_E4M3));
}

__device__ __forceinline__ float ChunkAbsMax(const uint4& u) {
  const bf16* v = reinterpret_cast<const bf16*>(&u);
  float m = 0.0f;
#pragma unroll
  for (int e = 0; e < 8; ++e) m = fmaxf(m, fabsf(F(v[e])));
  return m;
}

// Writes this block's row, held as bf16 chunks in `buf` (QuantizeE4m3VecKernel's layout),
// as e4m3 bytes with the row's scale; `m` is this thread's max |value|.
__device__ __forceinline__ void StoreE4m3Row(const uint4 (&buf)[kChunks], float m, int64_t chunks,
                                             uint8_t* q_row, float* scale) {
  const float s = RowScale(BlockMax(m));
  if (threadIdx.x == 0) scale[blockIdx.x] = s;
  uint2* qr = reinterpret_cast<uint2*>(q_row);
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (c < chunks) {
      const bf16* v = reinterpret_cast<const bf16*>(&buf[i]);
      uint2 o;
      uint8_t* ob = reinterpret_cast<uint8_t*>(&o);
#pragma unroll
      for (int e = 0; e < 8; ++e) ob[e] = E4m3(F(v[e]), s);
      qr[c] = o;
    }
  }
}

// One block per row; the row stays in registers between the max and the quantization.
__global__ void QuantizeE4m3VecKernel(const bf16* x, int64_t x_stride, uint8_t* q, float* scale,
                                      int64_t cols) {
  uint4 buf[kChunks];
  const float m = LoadRow(x + blockIdx.x * x_stride, cols, buf, MaxOp(), ChunkAbsMax);
  const int64_t chunks = cols / 8;
  StoreE4m3Row(buf, m, chunks, q + blockIdx.x * cols, scale);
}

// RmsNormModVecKernel's row, quantized instead of stored.
__global__ void RmsNormModE4m3Kernel(const bf16* x, int64_t x_stride, const bf16* w, const bf16* s,
                                     uint8_t* q, float* scale, int64_t cols, float eps) {
  const int64_t chunks = cols / 8;
  uint4 buf[kChunks];
  const float rstd = LoadRowRstd(x + blockIdx.x * x_stride, cols, eps, buf);
  float m = 0.0f;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (c < chunks) {
      bf16* v = reinterpret_cast<bf16*>(&buf[i]);
      const uint4 wu = reinterpret_cast<const uint4*>(w)[c];
      const bf16* wv = reinterpret_cast<const bf16*>(&wu);
      uint4 su{};
      if (s != nullptr) su = reinterpret_cast<const uint4*>(s)[c];
      const bf16* sv = reinterpret_cast<const bf16*>(&su);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        float r = R(__fmul_rn(R(__fmul_rn(F(v[e]), rstd)), F(wv[e])));
        if (s != nullptr) r = R(__fmul_rn(r, F(sv[e])));
        v[e] = B(r);
      }
      m = fmaxf(m, ChunkAbsMax(buf[i]));
    }
  }
  StoreE4m3Row(buf, m, chunks, q + blockIdx.x * cols, scale);
}

// SwiGluVecKernel's row (F outputs of h's [2F] row), quantized instead of stored.
__global__ void SwiGluE4m3Kernel(const bf16* h, uint8_t* q, float* scale, int64_t f) {
  const int64_t chunks = f / 8;
  const uint4* a = reinterpret_cast<const uint4*>(h + blockIdx.x * 2 * f);
  const uint4* b = reinterpret_cast<const uint4*>(h + blockIdx.x * 2 * f + f);
  uint4 buf[kChunks];
  float m = 0.0f;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (c < chunks) {
      const uint4 ua = a[c], ub = b[c];
      const bf16* av = reinterpret_cast<const bf16*>(&ua);
      const bf16* bv = reinterpret_cast<const bf16*>(&ub);
      bf16* ov = reinterpret_cast<bf16*>(&buf[i]);
#pragma unroll
      for (int e = 0; e < 8; ++e) ov[e] = SwiGluOne(av[e], bv[e]);
      m = fmaxf(m, ChunkAbsMax(buf[i]));
    }
  }
  StoreE4m3Row(buf, m, chunks, q + blockIdx.x * f, scale);
}

__global__ void QuantizeE4m3Kernel(const bf16* x, int64_t x_stride, uint8_t* q, float* scale,
                                   int64_t cols) {
  const bf16* xr = x + blockIdx.x * x_stride;
  float m = 0.0f;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, fabsf(F(xr[i])));
  const float s = RowScale(BlockMax(m));
  if (threadIdx.x == 0) scale[blockIdx.x] = s;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) q[blockIdx.x * cols + i] = E4m3(F(xr[i]), s);
}


// ---- GroupNorm (+ SiLU), NCHW: each group is one contiguous run of cg * hw elements.

// Partial statistics of one slice of one group: (count, mean, M2) via per-thread
// sums then Chan's merge across the block.
__device__ void MergeStats(float& n, float& mean, float& m2, float n2, float mean2, float m22) {
  if (n2 == 0.0f) return;
  if (n == 0.0f) {
    n = n2;
    mean = mean2;
    m2 = m22;
    return;
  }
  const float nt = n + n2, d = mean2 - mean;
  mean += d * (n2 / nt);
  m2 += m22 + d * d * (n * n2 / nt);
  n = nt;
}

__global__ void GroupStatsKernel(const bf16* x, int64_t group_elems, int64_t slice,
                                 float* partials) {
  const int64_t group = blockIdx.y, p = blockIdx.x;
  const int64_t begin = p * slice;
  const int64_t end = begin + slice < group_elems ? begin + slice : group_elems;
  const bf16* g = x + group * group_elems;
  float s = 0.0f, sq = 0.0f, cnt = 0.0f;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float v = F(g[i]);
    s += v;
    sq += v * v;
    cnt += 1.0f;
  }
  float mean = cnt > 0.0f ? s / cnt : 0.0f;
  float m2 = cnt > 0.0f ? fmaxf(sq - s * mean, 0.0f) : 0.0f;
  // Warp then block merge.
  for (int o = 16; o > 0; o >>= 1) {
    const float n2 = __shfl_xor_sync(0xffffffffu, cnt, o);
    const float mean2 = __shfl_xor_sync(0xffffffffu, mean, o);
    const float m22 = __shfl_xor_sync(0xffffffffu, m2, o);
    MergeStats(cnt, mean, m2, n2, mean2, m22);
  }
  __shared__ float sn[32], smean[32], sm2[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sn[warp] = cnt;
    smean[warp] = mean;
    sm2[warp] = m2;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float n = 0.0f, mu = 0.0f, q = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) MergeStats(n, mu, q, sn[w], smean[w], sm2[w]);
    float* out = partials + (group * gridDim.x + p) * 3;
    out[0] = n;
    out[1] = mu;
    out[2] = q;
  }
}

// One thread per group: merges the slices in double, writes mean and rstd over
// partials' first 2 * groups floats... into stats[group * 2 + {0, 1}].
__global__ void GroupFinishKernel(const float* partials, int64_t slices, int64_t total_groups,
                                  float* stats, float eps) {
  const int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (group >= total_groups) return;
  double n = 0.0, mean = 0.0, m2 = 0.0;
  for (int64_t p = 0; p < slices; ++p) {
    const float* q = partials + (group * slices + p) * 3;
    const double n2 = q[0], mean2 = q[1], m22 = q[2];
    if (n2 == 0.0) continue;
    const double nt = n + n2, d = mean2 - mean;
    mean += d * (n2 / nt);
    m2 += m22 + d * d * (n * n2 / nt);
    n = nt;
  }
  const float var = n > 0.0 ? static_cast<float>(m2 / n) : 0.0f;
  stats[group * 2] = static_cast<float>(mean);
  stats[group * 2 + 1] = rsqrtf(var + eps);
}

__device__ __forceinline__ bf16 GroupApplyOne(bf16 x, float a, float b, bool silu) {
  float v = R(__fmaf_rn(a, F(x), b));
  if (silu) v = __fdiv_rn(v, __fadd_rn(1.0f, expf(-v)));
  return B(v);
}

// grid.y = n * c + channel; x covers hw (8 elements per thread when vec).
template <bool kVec>
__global__ void GroupApplyKernel(const bf16* x, const bf16* gamma, const bf16* beta,
                                 const float* stats, bf16* y, int64_t c, int64_t hw,
                                 int64_t cg, bool silu) {
  const int64_t nc = blockIdx.y, ch = nc % c, batch = nc / c;
  const int64_t group = batch * (c / cg) + ch / cg;
  const float mean = stats[group * 2], rstd = stats[group * 2 + 1];
  const float a = rstd * F(gamma[ch]);
  const float b = F(beta[ch]) - mean * a;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bf16* xr = x + nc * hw;
  bf16* yr = y + nc * hw;
  if (kVec) {
    if (i * 8 >= hw) return;
    uint4 u = reinterpret_cast<const uint4*>(xr)[i], o;
    const bf16* v = reinterpret_cast<const bf16*>(&u);
    bf16* ov = reinterpret_cast<bf16*>(&o);
#pragma unroll
    for (int e = 0; e < 8; ++e) ov[e] = GroupApplyOne(v[e], a, b, silu);
    reinterpret_cast<uint4*>(yr)[i] = o;
  } else {
    if (i >= hw) return;
    yr[i] = GroupApplyOne(xr[i], a, b, silu);
  }
}

int64_t Slices(int64_t group_elems) {
  const int64_t s = (group_elems + 8191) / 8192;
  return s < 1 ? 1 : (s > 128 ? 128 : s);
}

int Done() { return static_cast<int>(cudaGetLastError()); }

}  // namespace

int RmsNormMod(const void* x, int64_t x_stride, const void* w, const void* s, void* y,
               int64_t rows, int64_t cols, float eps, void* stream) {
  if (rows == 0) return 0;
  if (const int t = VecThreads(cols, x_stride, {x, w, s, y}); t > 0) {
    RmsNormModVecKernel<<<static_cast<unsigned>(rows), t, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const bf16*>(x), x_stride, static_cast<const bf16*>(w),
        static_cast<const bf16*>(s), static_cast<bf16*>(y), cols, eps);
    return Done();
  }
  RmsNormModKernel<<<static_cast<unsigned>(rows), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const bf16*>(x), x_stride, static_cast<const bf16*>(w),
      static_cast<const bf16*>(s), static_cast<bf16*>(y), cols, eps);
  return Done();
}

int GatedResidualRmsNorm(const void* x, const void* y, const void* w, const void* g, void* out,
                         int64_t rows, int64_t cols, float eps, void* stream) {
  if (rows == 0) return 0;
  if (const int t = VecThreads(cols, cols, {x, y, w, g, out}); t > 0) {
    GatedResidualVecKernel<<<static_cast<unsigned>(rows), t, 0,
                             static_cast<cudaStream_t>(stream)>>>(
        static_cast<const bf16*>(x), static_cast<const bf16*>(y), static_cast<const bf16*>(w),
        static_cast<const bf16*>(g), static_cast<bf16*>(out), cols, eps);
    return Done();
  }
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
  if (in_stride % 2 != 0 || head_dim % 2 != 0 || reinterpret_cast<uintptr_t>(in) % 4 != 0 ||
      reinterpret_cast<uintptr_t>(w) % 4 != 0) {
    return static_cast<int>(cudaErrorMisalignedAddress);
  }
  const int threads = 256;
  const int64_t blocks = (warps * 32 + threads - 1) / threads;
  QkNormRopeKernel<<<static_cast<unsigned>(blocks), threads, 0,
                     static_cast<cudaStream_t>(stream)>>>(
      static_cast<const bf16*>(in), in_stride, static_cast<const bf16*>(w), cos, sin,
      static_cast<bf16*>(out), seq, heads, head_dim, eps);
  return Done();
}

int SwiGlu(const void* h, void* out, int64_t rows, int64_t f, void* stream) {
  if (rows == 0 || f == 0) return 0;
  const int threads = 256;
  auto* st = static_cast<cudaStream_t>(stream);
  const bool vec = f % 8 == 0 && Aligned16(h) && Aligned16(out);
  // grid.y is at most 65535: launch in slices of rows.
  for (int64_t r0 = 0; r0 < rows; r0 += 65535) {
    const unsigned n = static_cast<unsigned>(rows - r0 < 65535 ? rows - r0 : 65535);
    const bf16* hs = static_cast<const bf16*>(h) + r0 * 2 * f;
    bf16* os = static_cast<bf16*>(out) + r0 * f;
    if (vec) {
      SwiGluVecKernel<<<dim3(static_cast<unsigned>((f / 8 + threads - 1) / threads), n), threads, 0,
                        st>>>(hs, os, f);
    } else {
      SwiGluKernel<<<dim3(static_cast<unsigned>((f + threads - 1) / threads), n), threads, 0, st>>>(
          hs, os, f);
    }
  }
  return Done();
}

int64_t GroupNormScratch(int64_t n, int64_t c, int64_t hw, int64_t groups) {
  (void)c;
  const int64_t total = n * groups;
  return total * Slices(c / groups * hw) * 3 + total * 2;
}

int GroupNormAct(const void* x, const void* gamma, const void* beta, void* y, float* partials,
                 int64_t n, int64_t c, int64_t hw, int64_t groups, float eps, bool silu,
                 void* stream) {
  if (n == 0 || c == 0 || hw == 0) return 0;
  if (c % groups != 0 || n * c > 65535 || n * groups > 65535) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  auto* st = static_cast<cudaStream_t>(stream);
  const int64_t cg = c / groups, group_elems = cg * hw, total = n * groups;
  const int64_t slices = Slices(group_elems), slice = (group_elems + slices - 1) / slices;
  float* stats = partials + total * slices * 3;
  GroupStatsKernel<<<dim3(static_cast<unsigned>(slices), static_cast<unsigned>(total)), 256, 0,
                     st>>>(static_cast<const bf16*>(x), group_elems, slice, partials);
  GroupFinishKernel<<<static_cast<unsigned>((total + 127) / 128), 128, 0, st>>>(
      partials, slices, total, stats, eps);
  const int threads = 256;
  const auto* xb = static_cast<const bf16*>(x);
  const auto* gb = static_cast<const bf16*>(gamma);
  const auto* bb = static_cast<const bf16*>(beta);
  auto* yb = static_cast<bf16*>(y);
  if (hw % 8 == 0 && Aligned16(x) && Aligned16(y)) {
    const dim3 grid(static_cast<unsigned>((hw / 8 + threads - 1) / threads),
                    static_cast<unsigned>(n * c));
    GroupApplyKernel<true><<<grid, threads, 0, st>>>(xb, gb, bb, stats, yb, c, hw, cg, silu);
  } else {
    const dim3 grid(static_cast<unsigned>((hw + threads - 1) / threads),
                    static_cast<unsigned>(n * c));
    GroupApplyKernel<false><<<grid, threads, 0, st>>>(xb, gb, bb, stats, yb, c, hw, cg, silu);
  }
  return Done();
}

int QuantizeE4m3Rows(const void* x, int64_t x_stride, void* q, float* scale, int64_t rows,
                     int64_t cols, void* stream) {
  if (rows == 0) return 0;
  auto* st = static_cast<cudaStream_t>(stream);
  const auto* xb = static_cast<const bf16*>(x);
  auto* qb = static_cast<uint8_t*>(q);
  // 8-byte stores of the quantized chunks: q aligned to 8 (cols % 8 == 0 keeps rows so).
  if (const int t = VecThreads(cols, x_stride, {x}); t > 0 && reinterpret_cast<uintptr_t>(q) % 8 == 0) {
    QuantizeE4m3VecKernel<<<static_cast<unsigned>(rows), t, 0, st>>>(xb, x_stride, qb, scale, cols);
    return Done();
  }
  QuantizeE4m3Kernel<<<static_cast<unsigned>(rows), 256, 0, st>>>(xb, x_stride, qb, scale, cols);
  return Done();
}

int RmsNormModE4m3(const void* x, int64_t x_stride, const void* w, const void* s, void* q,
                   float* scale, int64_t rows, int64_t cols, float eps, void* stream) {
  if (rows == 0) return 0;
  const int t = VecThreads(cols, x_stride, {x, w, s});
  if (t == 0 || reinterpret_cast<uintptr_t>(q) % 8 != 0) return static_cast<int>(cudaErrorInvalidValue);
  RmsNormModE4m3Kernel<<<static_cast<unsigned>(rows), t, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const bf16*>(x), x_stride, static_cast<const bf16*>(w),
      static_cast<const bf16*>(s), static_cast<uint8_t*>(q), scale, cols, eps);
  return Done();
}

int SwiGluE4m3(const void* h, void* q, float* scale, int64_t rows, int64_t f, void* stream) {
  if (rows == 0) return 0;
  const int t = VecThreads(f, 2 * f, {h});
  if (t == 0 || reinterpret_cast<uintptr_t>(q) % 8 != 0) return static_cast<int>(cudaErrorInvalidValue);
  SwiGluE4m3Kernel<<<static_cast<unsigned>(rows), t, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const bf16*>(h), static_cast<uint8_t*>(q), scale, f);
  return Done();
}

bool E4m3RowKernelApplies(int64_t cols, int64_t stride, std::initializer_list<const void*> ptrs) {
  return VecThreads(cols, stride, ptrs) > 0;
}

}  // namespace zfarm::worker::model::cuda
