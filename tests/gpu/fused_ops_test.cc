// The fused CUDA kernels of worker/model/fused_ops.h against their CPU
// reference (the same op with kernel = false on the CPU, same bf16 inputs):
// equal up to an occasional one-ulp bf16 rounding flip (float32 reductions
// summed in a different order). Skips without a CUDA device; fails when the
// device is there but the kernels were not built.

#include "worker/model/fused_ops.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>

namespace zfarm::worker::model {
namespace {

class FusedOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
    ASSERT_TRUE(FusedKernelsBuilt()) << "CUDA device present but the fused kernels were not built "
                                        "(no CUDA compiler at configure time?)";
    at::manual_seed(7);
  }
  static at::Tensor Randn(std::vector<int64_t> shape, double scale = 1.0) {
    return (at::randn(shape, at::kFloat) * scale).to(at::kBFloat16);
  }
  static at::Tensor Cuda(const at::Tensor& t) { return t.defined() ? t.to(at::kCUDA) : t; }

  // |gpu - cpu| within one bf16 ulp of max(|element|, operand_scale) everywhere — a
  // one-ulp flip of an intermediate (normalised value of magnitude up to
  // operand_scale) survives a later sum that cancels — and at most 1 % of the
  // elements differing at all.
  static void ExpectClose(const at::Tensor& gpu, const at::Tensor& cpu, const std::string& what,
                          double operand_scale = 1e-3) {
    ASSERT_EQ(gpu.sizes(), cpu.sizes()) << what;
    at::Tensor g = gpu.cpu().to(at::kFloat), c = cpu.to(at::kFloat);
    at::Tensor diff = (g - c).abs();
    at::Tensor ulp = c.abs().clamp_min(operand_scale) * (1.0 / 128.0);
    const int64_t over = diff.gt(ulp * 1.01).sum().item<int64_t>();
    const double differing = diff.gt(0).to(at::kFloat).mean().item<double>();
    EXPECT_EQ(over, 0) << what << ": elements off by more than one bf16 ulp, max diff "
                       << diff.max().item<float>();
    EXPECT_LT(differing, 0.01) << what << ": fraction of elements differing";
    EXPECT_GT(c.abs().sum().item<double>(), 0.0) << what << ": reference is all zeros";
  }
};

TEST_F(FusedOpsTest, RmsNormModMatchesReferenceWithAndWithoutScale) {
  at::Tensor x = Randn({1, 300, 3840}, 3.0), w = Randn({3840}), s = Randn({3840});
  ExpectClose(RmsNormMod(Cuda(x), Cuda(w), Cuda(s), 1e-5, true),
              RmsNormMod(x, w, s, 1e-5, false), "with scale");
  ExpectClose(RmsNormMod(Cuda(x), Cuda(w), {}, 1e-5, true), RmsNormMod(x, w, {}, 1e-5, false),
              "without scale");
}

TEST_F(FusedOpsTest, RmsNormModReadsStridedRows) {
  // Rows of a wider tensor (a slice of a fused projection).
  at::Tensor wide = Randn({1, 77, 3 * 256}), w = Randn({256});
  at::Tensor x = wide.narrow(-1, 256, 256);
  ExpectClose(RmsNormMod(Cuda(wide).narrow(-1, 256, 256), Cuda(w), {}, 1e-6, true),
              RmsNormMod(x, w, {}, 1e-6, false), "strided");
}

TEST_F(FusedOpsTest, GatedResidualMatchesReference) {
  at::Tensor x = Randn({1, 257, 3840}, 4.0), y = Randn({1, 257, 3840}, 50.0);
  at::Tensor w = Randn({3840}), g = at::tanh(Randn({3840}).to(at::kFloat)).to(at::kBFloat16);
  ExpectClose(GatedResidualRmsNorm(Cuda(x), Cuda(y), Cuda(w), Cuda(g), 1e-5, true),
              GatedResidualRmsNorm(x, y, w, g, 1e-5, false), "gated", 16.0);
  ExpectClose(GatedResidualRmsNorm(Cuda(x), Cuda(y), Cuda(w), {}, 1e-5, true),
              GatedResidualRmsNorm(x, y, w, {}, 1e-5, false), "ungated", 16.0);
}

TEST_F(FusedOpsTest, QkNormRopeMatchesReference) {
  const int64_t S = 100, H = 30, Dh = 128;
  at::Tensor qkv = Randn({1, S, 3 * H * Dh}, 2.0), w = Randn({Dh});
  at::Tensor ang = at::rand({S, Dh / 2}, at::kFloat) * 50.0;
  at::Tensor cos = ang.cos(), sin = ang.sin();
  for (int part = 0; part < 2; ++part) {
    at::Tensor in = qkv.narrow(-1, part * H * Dh, H * Dh);
    at::Tensor gpu = QkNormRope(Cuda(qkv).narrow(-1, part * H * Dh, H * Dh), H, Cuda(w),
                                Cuda(cos), Cuda(sin), 1e-5, true);
    ExpectClose(gpu, QkNormRope(in, H, w, cos, sin, 1e-5, false),
                part == 0 ? "q slice" : "k slice", 8.0);
  }
}

TEST_F(FusedOpsTest, SwiGluMatchesReference) {
  at::Tensor h = Randn({1, 333, 2 * 1024}, 3.0);
  ExpectClose(SwiGlu(Cuda(h), true), SwiGlu(h, false), "swiglu");
}

TEST_F(FusedOpsTest, GroupNormActMatchesReference) {
  // The VAE's shapes: 32 groups, a large group (512 ch x 64 x 64) and an odd spatial size.
  at::Tensor w = Randn({512}), b = Randn({512}, 0.5);
  for (auto shape : {std::vector<int64_t>{1, 512, 64, 64}, std::vector<int64_t>{1, 512, 9, 7}}) {
    at::Tensor x = Randn(shape, 3.0) + 1.5;
    for (bool silu : {false, true}) {
      ExpectClose(GroupNormAct(Cuda(x), 32, Cuda(w), Cuda(b), 1e-6, silu, true),
                  GroupNormAct(x, 32, w, b, 1e-6, silu, false),
                  std::string("group norm ") + std::to_string(shape[2]) + (silu ? " + silu" : ""),
                  4.0);
    }
  }
}

}  // namespace
}  // namespace zfarm::worker::model
