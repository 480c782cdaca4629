#include "worker/model/fused_ops.h"

#include <c10/util/Exception.h>

#include <string>
#include <utility>
#include <vector>

#ifdef ZFARM_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "worker/model/fused_kernels.h"
#endif

namespace zfarm::worker::model {
namespace {

at::Tensor RmsNormRef(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return (xf * at::rsqrt(var + eps)).to(x.scalar_type()) * w;
}

#ifdef ZFARM_CUDA_KERNELS
bool Bf16Cuda(const at::Tensor& t) {
  return !t.defined() || (t.is_cuda() && t.scalar_type() == at::kBFloat16);
}

// Elements between consecutive rows of x viewed as [rows, D], or -1 when x's
// rows are not evenly strided (then the caller makes it contiguous).
int64_t RowStride(const at::Tensor& x) {
  if (x.stride(-1) != 1) return -1;
  if (x.is_contiguous()) return x.size(-1);
  if (x.dim() < 2) return -1;
  for (int64_t d = 0; d + 2 < x.dim(); ++d) {
    if (x.size(d) != 1) return -1;
  }
  return x.stride(-2);
}

void* Stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

void Check(int err, const char* op) {
  TORCH_CHECK(err == 0, "fused kernel ", op, " failed to launch: CUDA error ", err);
}

const void* Ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
#endif

}  // namespace

bool FusedKernelsBuilt() {
#ifdef ZFARM_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

at::Tensor RmsNormMod(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, double eps,
                      bool kernel) {
#ifdef ZFARM_CUDA_KERNELS
  if (kernel && Bf16Cuda(x) && Bf16Cuda(w) && Bf16Cuda(s) && x.is_cuda()) {
    const c10::cuda::CUDAGuard device_guard(x.device());
    at::Tensor xs = RowStride(x) < 0 ? x.contiguous() : x;
    const int64_t D = x.size(-1), rows = x.numel() / D;
    at::Tensor wc = w.contiguous(), sc = s.defined() ? s.reshape({D}).contiguous() : s;
    at::Tensor y = at::empty(x.sizes(), x.options());
    Check(cuda::RmsNormMod(xs.data_ptr(), RowStride(xs), wc.data_ptr(), Ptr(sc), y.data_ptr(),
                           rows, D, static_cast<float>(eps), Stream(x)),
          "RmsNormMod");
    return y;
  }
#endif
  (void)kernel;
  at::Tensor y = RmsNormRef(x, w, eps);
  return s.defined() ? y * s : y;
}

at::Tensor GatedResidualRmsNorm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
                                const at::Tensor& g, double eps, bool kernel) {
  TORCH_CHECK(x.sizes() == y.sizes(), "GatedResidualRmsNorm: x ", x.sizes(), " vs y ", y.sizes());
#ifdef ZFARM_CUDA_KERNELS
  if (kernel && Bf16Cuda(x) && Bf16Cuda(y) && Bf16Cuda(w) && Bf16Cuda(g) && x.is_cuda()) {
    const c10::cuda::CUDAGuard device_guard(x.device());
    const int64_t D = x.size(-1), rows = x.numel() / D;
    at::Tensor xc = x.contiguous(), yc = y.contiguous(), wc = w.contiguous();
    at::Tensor gc = g.defined() ? g.reshape({D}).contiguous() : g;
    at::Tensor out = at::empty(x.sizes(), x.options());
    Check(cuda::GatedResidualRmsNorm(xc.data_ptr(), yc.data_ptr(), wc.data_ptr(), Ptr(gc),
                                     out.data_ptr(), rows, D, static_cast<float>(eps), Stream(x)),
          "GatedResidualRmsNorm");
    return out;
  }
#endif
  (void)kernel;
  at::Tensor n = RmsNormRef(y, w, eps);
  return g.defined() ? x + g * n : x + n;
}

at::Tensor QkNormRope(const at::Tensor& in, int64_t heads, const at::Tensor& w,
                      const at::Tensor& cos, const at::Tensor& sin, double eps, bool kernel) {
  const int64_t S = in.size(1), Dh = in.size(2) / heads;
#ifdef ZFARM_CUDA_KERNELS
  if (kernel && Bf16Cuda(in) && Bf16Cuda(w) && in.is_cuda() && cos.scalar_type() == at::kFloat &&
      sin.scalar_type() == at::kFloat && Dh % 2 == 0) {
    const c10::cuda::CUDAGuard device_guard(in.device());
    at::Tensor ins = RowStride(in) < 0 ? in.contiguous() : in;
    at::Tensor wc = w.contiguous(), cc = cos.contiguous(), sc = sin.contiguous();
    at::Tensor out = at::empty({1, S, heads, Dh}, in.options());
    Check(cuda::QkNormRope(ins.data_ptr(), RowStride(ins), wc.data_ptr(), cc.data_ptr<float>(),
                           sc.data_ptr<float>(), out.data_ptr(), S, heads, Dh,
                           static_cast<float>(eps), Stream(in)),
          "QkNormRope");
    return out;
  }
#endif
  (void)kernel;
  at::Tensor n = RmsNormRef(in.view({1, S, heads, Dh}), w, eps);
  // Interleaved pairs (a, b) rotated in float32: (a cos - b sin, a sin + b cos).
  at::Tensor xf = n.to(at::kFloat).reshape({1, S, heads, Dh / 2, 2});
  at::Tensor a = xf.select(-1, 0), b = xf.select(-1, 1);
  at::Tensor c = cos.unsqueeze(1).unsqueeze(0), s = sin.unsqueeze(1).unsqueeze(0);
  at::Tensor re = a * c - b * s;
  at::Tensor im = a * s + b * c;
  return at::stack({re, im}, -1).flatten(3).to(in.scalar_type());
}

at::Tensor SwiGlu(const at::Tensor& h, bool kernel) {
  const int64_t F = h.size(-1) / 2;
#ifdef ZFARM_CUDA_KERNELS
  if (kernel && Bf16Cuda(h) && h.is_cuda() && h.is_contiguous()) {
    const c10::cuda::CUDAGuard device_guard(h.device());
    std::vector<int64_t> sizes = h.sizes().vec();
    sizes.back() = F;
    at::Tensor out = at::empty(sizes, h.options());
    Check(cuda::SwiGlu(h.data_ptr(), out.data_ptr(), h.numel() / (2 * F), F, Stream(h)),
          "SwiGlu");
    return out;
  }
#endif
  (void)kernel;
  return at::silu(h.narrow(-1, 0, F)) * h.narrow(-1, F, F);
}

at::Tensor GroupNormAct(const at::Tensor& x, int64_t groups, const at::Tensor& w,
                        const at::Tensor& b, double eps, bool silu, bool kernel) {
#ifdef ZFARM_CUDA_KERNELS
  if (kernel && Bf16Cuda(x) && Bf16Cuda(w) && Bf16Cuda(b) && x.is_cuda() && x.dim() == 4 &&
      x.is_contiguous() && x.size(1) % groups == 0 && x.size(0) * x.size(1) <= 65535) {
    const c10::cuda::CUDAGuard device_guard(x.device());
    const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
    at::Tensor scratch = at::empty({cuda::GroupNormScratch(n, c, hw, groups)},
                                   x.options().dtype(at::kFloat));
    at::Tensor wc = w.contiguous(), bc = b.contiguous();
    at::Tensor y = at::empty_like(x);
    Check(cuda::GroupNormAct(x.data_ptr(), wc.data_ptr(), bc.data_ptr(), y.data_ptr(),
                             scratch.data_ptr<float>(), n, c, hw, groups, static_cast<float>(eps),
                             silu, Stream(x)),
          "GroupNormAct");
    return y;
  }
#endif
  (void)kernel;
  at::Tensor y = at::group_norm(x, groups, w, b, eps);
  return silu ? at::silu(y) : y;
}

bool QuantizeE4m3Rows(const at::Tensor& x2d, at::Tensor* q, at::Tensor* scale) {
#ifdef ZFARM_CUDA_KERNELS
  if (x2d.dim() == 2 && x2d.is_cuda() && x2d.scalar_type() == at::kBFloat16) {
    const c10::cuda::CUDAGuard device_guard(x2d.device());
    at::Tensor xs = RowStride(x2d) < 0 ? x2d.contiguous() : x2d;
    const int64_t rows = x2d.size(0), cols = x2d.size(1);
    at::Tensor out = at::empty({rows, cols}, x2d.options().dtype(at::kByte));
    at::Tensor s = at::empty({rows, 1}, x2d.options().dtype(at::kFloat));
    Check(cuda::QuantizeE4m3Rows(xs.data_ptr(), RowStride(xs), out.data_ptr(), s.data_ptr<float>(),
                                 rows, cols, Stream(x2d)),
          "QuantizeE4m3Rows");
    *q = std::move(out);
    *scale = std::move(s);
    return true;
  }
#endif
  (void)x2d, (void)q, (void)scale;
  return false;
}

bool RmsNormModE4m3(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, double eps,
                    at::Tensor* q, at::Tensor* scale) {
#ifdef ZFARM_CUDA_KERNELS
  const int64_t D = x.size(-1), rows = x.numel() / D, stride = RowStride(x);
  at::Tensor wc = w.contiguous(), sc = s.defined() ? s.reshape({D}).contiguous() : s;
  if (x.is_cuda() && Bf16Cuda(x) && Bf16Cuda(w) && Bf16Cuda(s) && stride >= 0 &&
      cuda::E4m3RowKernelApplies(D, stride, {x.data_ptr(), wc.data_ptr(), Ptr(sc)})) {
    const c10::cuda::CUDAGuard device_guard(x.device());
    at::Tensor out = at::empty({rows, D}, x.options().dtype(at::kByte));
    at::Tensor sx = at::empty({rows, 1}, x.options().dtype(at::kFloat));
    Check(cuda::RmsNormModE4m3(x.data_ptr(), stride, wc.data_ptr(), Ptr(sc), out.data_ptr(),
                               sx.data_ptr<float>(), rows, D, static_cast<float>(eps), Stream(x)),
          "RmsNormModE4m3");
    *q = std::move(out);
    *scale = std::move(sx);
    return true;
  }
#endif
  (void)x, (void)w, (void)s, (void)eps, (void)q, (void)scale;
  return false;
}

bool SwiGluE4m3(const at::Tensor& h, at::Tensor* q, at::Tensor* scale) {
#ifdef ZFARM_CUDA_KERNELS
  const int64_t F = h.size(-1) / 2, rows = h.numel() / (2 * F);
  if (h.is_cuda() && Bf16Cuda(h) && h.is_contiguous() &&
      cuda::E4m3RowKernelApplies(F, 2 * F, {h.data_ptr()})) {
    const c10::cuda::CUDAGuard device_guard(h.device());
    at::Tensor out = at::empty({rows, F}, h.options().dtype(at::kByte));
    at::Tensor sx = at::empty({rows, 1}, h.options().dtype(at::kFloat));
    Check(cuda::SwiGluE4m3(h.data_ptr(), out.data_ptr(), sx.data_ptr<float>(), rows, F, Stream(h)),
          "SwiGluE4m3");
    *q = std::move(out);
    *scale = std::move(sx);
    return true;
  }
#endif
  (void)h, (void)q, (void)scale;
  return false;
}

}  // namespace zfarm::worker::model
