// The FP8 mode on a GPU (ctest label `gpu`; skipped where no CUDA device is visible, so it
// builds and passes against Debian's CPU libtorch too):
//  - at::_scaled_mm's conventions: the native FP8 linear equals fp8.h's reference (the same
//    quantized values multiplied in float32) and torch's e4m3 cast equals our encoder;
//  - a small random-weight pipeline (real-valued weights, every FP8 layer on the native
//    path: dims multiples of 16) renders with final latents within cosine 0.99 of bf16;
//    the 8-bit PSNR against bf16 is printed (measured, not asserted).

#include <ATen/ATen.h>
#include <torch/version.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/pipeline/parity_util.h"
#include "worker/model/fp8.h"
#include "worker/model/fused_ops.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

bool Cuda() { return at::hasCUDA() && at::globalContext().hasCUDA(); }

using ::zfarm::worker::testing::Cosine;

TEST(Fp8GpuTest, NativeLinearEqualsTheReference) {
  if (!Cuda()) GTEST_SKIP() << "no CUDA";
  ASSERT_TRUE(model::Fp8NativeBuild()) << "a CUDA build without the native FP8 GEMM (torch < 2.5)";
  at::manual_seed(1);
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  // DiT-like shapes: 4096 image + 64 caption tokens of a 1024^2 render are too many for a
  // quick test; 333 tokens (not a multiple of 16: M is free) x 3840 -> 10240.
  at::Tensor x = (at::randn({1, 333, 3840}, cuda) * 2).to(at::kBFloat16);
  at::Tensor w = (at::randn({10240, 3840}, cuda) / 60).to(at::kBFloat16);
  model::QuantizedWeight q = model::QuantizeWeight(w);
  at::Tensor native = model::Fp8Linear(x, q.data, q.scale, {});
  ASSERT_EQ(native.scalar_type(), at::kBFloat16);
  at::Tensor reference = model::Fp8Linear(x.cpu(), q.data.cpu(), q.scale.cpu(), {});
  const double rel =
      ((native.cpu().to(at::kFloat) - reference.to(at::kFloat)).norm() / reference.to(at::kFloat).norm())
          .item<double>();
  std::printf("native vs reference FP8 linear: relative error %.2e\n", rel);
  EXPECT_LT(rel, 1e-2);  // bf16 output rounding and accumulation order only
  at::Tensor exact = at::linear(x, w).to(at::kFloat);
  const double vs_bf16 =
      ((native.to(at::kFloat) - exact).norm() / exact.norm()).item<double>();
  std::printf("FP8 vs bf16 linear: relative error %.2e\n", vs_bf16);
  EXPECT_LT(vs_bf16, 0.08);
#if TORCH_VERSION_MAJOR >= 2
  at::Tensor v = at::randn({1 << 16}, cuda) * 100;
  at::Tensor torch_bytes = v.clamp(-448, 448).to(at::kFloat8_e4m3fn).view(at::kByte).cpu();
  at::Tensor ours = model::EncodeE4m3(model::RoundToE4m3(v)).cpu();
  EXPECT_TRUE(at::equal(torch_bytes, ours));
#endif
}

// The one-pass quantization kernel gives the ATen sequence's bytes and scales exactly:
// the DiT's K of 3840 and 10240 (vector kernel), a strided slice of a fused projection,
// a K that is not a multiple of 8 (scalar kernel), an all-zero row and values past ±448.
TEST(Fp8GpuTest, QuantizationKernelEqualsTheAtenSequence) {
  if (!Cuda()) GTEST_SKIP() << "no CUDA";
  ASSERT_TRUE(model::FusedKernelsBuilt()) << "CUDA device present but no fused kernels built";
  at::manual_seed(3);
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  at::Tensor wide = (at::randn({77, 3 * 3840}, cuda) * 3).to(at::kBFloat16);
  at::Tensor with_zero = (at::randn({5, 3840}, cuda) * 1000).to(at::kBFloat16);
  with_zero[2].zero_();
  const std::vector<std::pair<std::string, at::Tensor>> cases = {
      {"333x3840", (at::randn({333, 3840}, cuda) * 2).to(at::kBFloat16)},
      {"129x10240", (at::randn({129, 10240}, cuda) / 7).to(at::kBFloat16)},
      {"strided slice", wide.narrow(1, 3840, 3840)},
      {"K 170", at::randn({40, 170}, cuda).to(at::kBFloat16)},
      {"zero row, large values", with_zero},
  };
  for (const auto& [what, x] : cases) {
    const model::QuantizedActivations k = model::QuantizeActivations(x, /*kernel=*/true);
    const model::QuantizedActivations r = model::QuantizeActivations(x, /*kernel=*/false);
    ASSERT_EQ(k.data.scalar_type(), at::kByte) << what;
    ASSERT_EQ(k.data.sizes(), r.data.sizes()) << what;
    ASSERT_EQ(k.scale.sizes(), r.scale.sizes()) << what;
    EXPECT_TRUE(at::equal(k.scale, r.scale)) << what << ": scales differ";
    const int64_t differing = k.data.ne(r.data).sum().item<int64_t>();
    EXPECT_EQ(differing, 0) << what << ": bytes differ";
    EXPECT_GT(r.data.ne(0).sum().item<int64_t>(), 0) << what << ": all zero";
  }
}

// The kernels that normalise (or gate) and quantize in one pass give the bytes and scales
// of the bf16 op followed by the quantization kernel: RmsNormMod with and without a scale,
// on contiguous and strided rows, and SwiGlu at the DiT's F of 10240.
TEST(Fp8GpuTest, FusedNormAndSwiGluQuantizationEqualTheirTwoStepForms) {
  if (!Cuda()) GTEST_SKIP() << "no CUDA";
  ASSERT_TRUE(model::FusedKernelsBuilt()) << "CUDA device present but no fused kernels built";
  at::manual_seed(4);
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  auto expect_equal = [](const std::string& what, const at::Tensor& q, const at::Tensor& scale,
                         const at::Tensor& two_step) {
    const model::QuantizedActivations r = model::QuantizeActivations(two_step, /*kernel=*/true);
    ASSERT_EQ(q.sizes(), r.data.sizes()) << what;
    EXPECT_TRUE(at::equal(scale, r.scale)) << what << ": scales differ";
    EXPECT_EQ(q.ne(r.data).sum().item<int64_t>(), 0) << what << ": bytes differ";
    EXPECT_GT(r.data.ne(0).sum().item<int64_t>(), 0) << what << ": all zero";
  };
  at::Tensor x = (at::randn({1, 333, 3840}, cuda) * 3).to(at::kBFloat16);
  at::Tensor w = at::randn({3840}, cuda).to(at::kBFloat16);
  at::Tensor s = (1 + at::randn({3840}, cuda) / 4).to(at::kBFloat16);
  at::Tensor wide = (at::randn({1, 77, 3 * 3840}, cuda) * 3).to(at::kBFloat16);
  const std::vector<std::pair<std::string, at::Tensor>> scales = {{"scale", s}, {"no scale", {}}};
  for (const auto& [what, sc] : scales) {
    for (const at::Tensor& in : {x, wide.narrow(-1, 3840, 3840)}) {
      at::Tensor q, qs;
      ASSERT_TRUE(model::RmsNormModE4m3(in, w, sc, 1e-5, &q, &qs)) << what;
      const at::Tensor h = model::RmsNormMod(in, w, sc, 1e-5, true);
      expect_equal("RmsNormMod, " + what, q, qs, h.reshape({-1, 3840}));
    }
  }
  at::Tensor h13 = (at::randn({1, 129, 2 * 10240}, cuda) * 2).to(at::kBFloat16);
  at::Tensor q, qs;
  ASSERT_TRUE(model::SwiGluE4m3(h13, &q, &qs));
  expect_equal("SwiGlu", q, qs, model::SwiGlu(h13, true).reshape({-1, 10240}));
  // Rows the vector kernel cannot take are declined, not mis-read.
  at::Tensor odd = at::randn({1, 9, 2 * 170}, cuda).to(at::kBFloat16);
  EXPECT_FALSE(model::SwiGluE4m3(odd, &q, &qs));
}

// A small DiT whose every FP8 layer runs natively (dim 768, FFN 2048, q/k/v 2304, w1/w3 4096).
ModelConfig SmallFp8Config() {
  ModelConfig c;
  c.transformer.dim = 768;
  c.transformer.n_heads = 6;  // head_dim 128: the default axes 32/48/48
  c.transformer.n_layers = 4;
  c.transformer.n_refiner_layers = 2;
  c.transformer.cap_feat_dim = 256;
  c.text_encoder.vocab_size = 2048;
  c.text_encoder.hidden_size = 256;
  c.text_encoder.num_hidden_layers = 3;
  c.text_encoder.num_attention_heads = 4;
  c.text_encoder.num_key_value_heads = 2;
  c.text_encoder.head_dim = 64;
  c.text_encoder.intermediate_size = 512;
  c.vae.block_out_channels = {32, 32, 64, 64};
  c.vae.norm_num_groups = 8;
  return c;
}

TEST(Fp8GpuTest, RandomWeightPipelineStaysWithinCosine099OfBf16) {
  if (!Cuda()) GTEST_SKIP() << "no CUDA";
  PipelineOptions o;
  o.device = "cuda:0";
  o.random_weights = true;
  o.random_weights_seed = 7;
  o.config = SmallFp8Config();
  o.precision = PipelineOptions::Precision::kBFloat16;
  ASSERT_OK_AND_ASSIGN(auto bf16, Pipeline::Create(o));
  o.precision = PipelineOptions::Precision::kFp8;
  ASSERT_OK_AND_ASSIGN(auto fp8, Pipeline::Create(o));
  std::printf("%s\n", fp8->Describe().c_str());
  GenerateRequest r;
  r.prompt_ids = {11, 500, 77, 1024, 3, 9, 250, 1800, 42, 1000};
  r.width = r.height = 256;
  r.steps = 8;
  for (uint64_t seed : {1u, 2u}) {
    r.seed = seed;
    GenerateTrace a, b;
    // Twice each: the second render replays the CUDA graph captured by the first.
    for (int rep = 0; rep < 2; ++rep) {
      a = {};
      b = {};
      ASSERT_OK_AND_ASSIGN(Image ia, bf16->Generate(r, nullptr, nullptr, &a));
      ASSERT_OK_AND_ASSIGN(Image ib, fp8->Generate(r, nullptr, nullptr, &b));
      EXPECT_EQ(ib.precision, "fp8");
      const double cos = Cosine(a.latents.back(), b.latents.back());
      double se = 0;
      for (size_t i = 0; i < ia.rgb.size(); ++i) {
        const double d = static_cast<double>(ia.rgb[i]) - ib.rgb[i];
        se += d * d;
      }
      const double psnr = 10 * std::log10(255.0 * 255.0 / std::max(se / ia.rgb.size(), 1e-12));
      std::printf("seed %llu render %d: final latents cosine fp8 vs bf16 %.5f, 8-bit PSNR %.2f dB\n",
                  static_cast<unsigned long long>(seed), rep + 1, cos, psnr);
      EXPECT_GE(cos, 0.99) << "seed " << seed;
    }
  }
}

}  // namespace
}  // namespace zfarm::worker
