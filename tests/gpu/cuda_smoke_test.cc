// CUDA smoke tests (ctest label `gpu`): the device is visible and usable from libtorch,
// bf16 matrix products agree with a CPU fp32 reference, seeded CUDA randn reproduces the
// reference values (README "Seeds": torch's own numbers on an H200), and scaled-dot-product attention (each SDPA
// backend the torch version can select) agrees with a CPU softmax reference.
// Every test skips where no CUDA device is visible.

#include <ATen/ATen.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace {

#define ZFARM_REQUIRE_CUDA()                                            \
  do {                                                                  \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

// ||a - b|| / ||b|| in double precision on the CPU.
double RelativeError(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor a64 = a.to(at::kCPU).to(at::kDouble);
  at::Tensor b64 = b.to(at::kCPU).to(at::kDouble);
  return (a64 - b64).norm().item<double>() / b64.norm().item<double>();
}

bool AllFinite(const at::Tensor& t) {
  return at::isfinite(t.to(at::kCPU).to(at::kFloat)).all().item<bool>();
}

TEST(CudaSmokeTest, DeviceVisibleAndUsable) {
  ZFARM_REQUIRE_CUDA();
  ASSERT_GE(torch::cuda::device_count(), 1u);
  at::Tensor host = at::arange(1000, at::kFloat);
  at::Tensor dev = host.to(at::kCUDA);
  EXPECT_TRUE(dev.is_cuda());
  at::Tensor back = (dev * 2 + 1).to(at::kCPU);
  EXPECT_TRUE(at::equal(back, host * 2 + 1));
  torch::cuda::synchronize();
}

TEST(CudaSmokeTest, Bf16MatmulMatchesCpuFp32Reference) {
  ZFARM_REQUIRE_CUDA();
  at::manual_seed(1234);
  // Shapes that are not multiples of the tile sizes, plus one DiT-like projection.
  const std::vector<std::vector<int64_t>> shapes = {{257, 512, 383}, {1024, 3840, 640}};
  for (const auto& s : shapes) {
    SCOPED_TRACE("M=" + std::to_string(s[0]) + " K=" + std::to_string(s[1]) +
                 " N=" + std::to_string(s[2]));
    at::Tensor a = at::randn({s[0], s[1]}, at::kFloat);
    at::Tensor b = at::randn({s[1], s[2]}, at::kFloat);
    at::Tensor ref = at::matmul(a, b);  // CPU fp32
    // The same inputs rounded to bf16: isolates the product's own error.
    at::Tensor ref_rounded =
        at::matmul(a.to(at::kBFloat16).to(at::kDouble), b.to(at::kBFloat16).to(at::kDouble));
    at::Tensor out = at::matmul(a.to(at::kCUDA, at::kBFloat16), b.to(at::kCUDA, at::kBFloat16));
    ASSERT_EQ(out.scalar_type(), at::kBFloat16);
    ASSERT_EQ(out.sizes(), ref.sizes());
    ASSERT_TRUE(AllFinite(out));
    // bf16 inputs and output: ~2^-9 relative rounding each.
    EXPECT_LT(RelativeError(out, ref), 1e-2);
    EXPECT_LT(RelativeError(out, ref_rounded), 4e-3);
    // fp32 on the GPU (TF32 off by default for matmul) is far tighter.
    at::Tensor out32 = at::matmul(a.to(at::kCUDA), b.to(at::kCUDA));
    EXPECT_LT(RelativeError(out32, ref), 1e-3);
  }
}

// Reference: torch.Generator("cuda").manual_seed(42); randn([1,16,128,128]) on an
// H200 starts 0.19401880, 2.1613736, -0.17205022, 0.84906012 and sums to -220.21048.
TEST(CudaSmokeTest, SeededCudaRandnMatchesDesignReference) {
  ZFARM_REQUIRE_CUDA();
  torch::cuda::manual_seed(42);  // resets the Philox offset too
  at::Tensor noise =
      at::randn({1, 16, 128, 128}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
  at::Tensor host = noise.to(at::kCPU).contiguous();
  const float* p = host.data_ptr<float>();
  EXPECT_NEAR(p[0], 0.19401880f, 1e-6);
  EXPECT_NEAR(p[1], 2.1613736f, 1e-6);
  EXPECT_NEAR(p[2], -0.17205022f, 1e-6);
  EXPECT_NEAR(p[3], 0.84906012f, 1e-6);
  EXPECT_NEAR(host.to(at::kDouble).sum().item<double>(), -220.21048, 5e-3);
  // Re-seeding reproduces the draw exactly; a different seed does not.
  torch::cuda::manual_seed(42);
  at::Tensor again =
      at::randn({1, 16, 128, 128}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
  EXPECT_TRUE(at::equal(again, noise));
  torch::cuda::manual_seed(43);
  at::Tensor other =
      at::randn({1, 16, 128, 128}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
  EXPECT_FALSE(at::equal(other, noise));
}

#if TORCH_VERSION_MAJOR >= 2
// softmax(q k^T / sqrt(d)) v on the CPU in fp32 from the bf16-rounded inputs.
at::Tensor ReferenceAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  at::Tensor q32 = q.to(at::kCPU, at::kFloat), k32 = k.to(at::kCPU, at::kFloat);
  at::Tensor v32 = v.to(at::kCPU, at::kFloat);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  at::Tensor scores = at::matmul(q32, k32.transpose(-2, -1)) * scale;
  return at::matmul(at::softmax(scores, -1), v32);
}

struct SdpaBackend {
  const char* name;
  bool flash, efficient, math, cudnn;
};

void SelectSdpa(const SdpaBackend& b) {
  auto& ctx = at::globalContext();
  ctx.setSDPUseFlash(b.flash);
  ctx.setSDPUseMemEfficient(b.efficient);
  ctx.setSDPUseMath(b.math);
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 5
  ctx.setSDPUseCuDNN(b.cudnn);
#endif
}

TEST(CudaSmokeTest, SdpaBackendsMatchCpuReference) {
  ZFARM_REQUIRE_CUDA();
  at::manual_seed(7);
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  // [batch, heads, seq, head_dim] with the DiT's head_dim 128 and a ragged length.
  at::Tensor q = at::randn({1, 4, 333, 128}, opts);
  at::Tensor k = at::randn({1, 4, 333, 128}, opts);
  at::Tensor v = at::randn({1, 4, 333, 128}, opts);
  at::Tensor ref = ReferenceAttention(q, k, v);
  const SdpaBackend backends[] = {{"default", true, true, true, true},
                                  {"cudnn", false, false, false, true},
                                  {"flash", true, false, false, false},
                                  {"efficient", false, true, false, false},
                                  {"math", false, false, true, false}};
  int ran = 0;
  for (const auto& b : backends) {
    SCOPED_TRACE(b.name);
    SelectSdpa(b);
    at::Tensor out;
    try {
      out = at::scaled_dot_product_attention(q, k, v);
    } catch (const c10::Error& e) {
      // A backend this torch/GPU cannot run is not an error of ours; the default must run.
      SelectSdpa(backends[0]);
      ASSERT_STRNE(b.name, "default") << e.what_without_backtrace();
      std::printf("[  INFO    ] SDPA backend %s unavailable here\n", b.name);
      continue;
    }
    ++ran;
    ASSERT_TRUE(AllFinite(out));
    EXPECT_LT(RelativeError(out, ref), 1.5e-2);
  }
  SelectSdpa(backends[0]);
  EXPECT_GE(ran, 2);
}
#endif  // TORCH_VERSION_MAJOR >= 2

}  // namespace
