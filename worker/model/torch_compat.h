#ifndef ZFARM_WORKER_MODEL_TORCH_COMPAT_H_
#define ZFARM_WORKER_MODEL_TORCH_COMPAT_H_

// The few API differences between libtorch 1.13 (Debian, CPU: dev machines and
// CI) and libtorch 2.x (the CUDA build on the GPU host). Internal to
// worker/model and worker/pipeline.

#include <ATen/ATen.h>
#include <torch/version.h>

#include <cmath>

namespace zfarm::worker::model {

// Scaled dot-product attention. q: [B, H, Sq, D], k/v: [B, H, Sk, D] (same
// head count: callers expand GQA heads first). Returns [B, H, Sq, D] in q's dtype.
// Softmax statistics are float32 on both paths.
inline at::Tensor Sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
#if TORCH_VERSION_MAJOR >= 2
  // torch 2.x: fused kernels (flash / cuDNN / efficient on CUDA).
  return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, causal,
                                          scale);
#else
  // torch 1.13 has no public SDPA: the math path of PyTorch's reference.
  at::Tensor scores = at::matmul(q.to(at::kFloat) * scale, k.to(at::kFloat).transpose(-2, -1));
  if (causal) {
    const int64_t sq = q.size(-2), sk = k.size(-2);
    at::Tensor mask = at::ones({sq, sk}, q.options().dtype(at::kBool)).triu(sk - sq + 1);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = at::softmax(scores, -1);
  return at::matmul(probs, v.to(at::kFloat)).to(q.scalar_type());
#endif
}

}  // namespace zfarm::worker::model

#endif  // ZFARM_WORKER_MODEL_TORCH_COMPAT_H_
