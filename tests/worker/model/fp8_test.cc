// The FP8 mode's quantizer, recipe and reference linear (worker/model/fp8.h), on the CPU.

#include "worker/model/fp8.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/model/tiny_folder.h"
#include "worker/io/model_folder.h"
#include "worker/io/safetensors.h"
#include "worker/io/weights_cache.h"
#include "worker/model/fp8_cache.h"
#include "worker/model/modules.h"
#include "worker/model/weights.h"

namespace zfarm::worker::model {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;

// The 254 finite e4m3 values (bytes 0x00..0xFF without 0x7F, 0xFF), as float32 [254].
std::pair<at::Tensor, std::vector<int>> FiniteValues() {
  std::vector<float> v;
  std::vector<int> bytes;
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) continue;
    v.push_back(F8E4M3ToF32(static_cast<uint8_t>(b)));
    bytes.push_back(b);
  }
  return {at::tensor(v), bytes};
}

TEST(E4m3FormatTest, KnownValues) {
  EXPECT_EQ(F8E4M3ToF32(0x00), 0.0f);
  EXPECT_EQ(F8E4M3ToF32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(F8E4M3ToF32(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(F8E4M3ToF32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(F8E4M3ToF32(0x38), 1.0f);
  EXPECT_EQ(F8E4M3ToF32(0x39), 1.125f);
  EXPECT_EQ(F8E4M3ToF32(0xB8), -1.0f);
  EXPECT_EQ(F8E4M3ToF32(0x7E), 448.0f);  // largest finite
  EXPECT_EQ(F8E4M3ToF32(0xFE), -448.0f);
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0x7F)));
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0xFF)));
}

TEST(E4m3FormatTest, EncodeInvertsDecodeForEveryByte) {
  at::Tensor all = at::arange(256, at::kInt).to(at::kByte);
  at::Tensor values = DecodeE4m3(all);
  for (int b = 0; b < 256; ++b) {
    const float want = F8E4M3ToF32(static_cast<uint8_t>(b));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(values[b].item<float>())) << b;
    } else {
      EXPECT_EQ(values[b].item<float>(), want) << b;
    }
  }
  at::Tensor again = EncodeE4m3(values);
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) {
      EXPECT_EQ(again[b].item<uint8_t>(), 0x7f) << "NaN byte " << b;
    } else {
      EXPECT_EQ(again[b].item<uint8_t>(), b) << "byte " << b;
    }
  }
  EXPECT_TRUE(at::equal(RoundToE4m3(values.masked_fill(at::isnan(values), 0)),
                        values.masked_fill(at::isnan(values), 0)));
}

TEST(E4m3FormatTest, RoundsToNearestTiesToEvenAndSaturates) {
  const float sub = std::ldexp(1.0f, -9);
  at::Tensor x = at::tensor({1.0625f, 1.1875f, -1.0625f, 500.0f, -1e6f, 464.0f, 0.5f * sub,
                             1.5f * sub, 2.5f * sub, 0.0f, 1e-30f});
  at::Tensor want = at::tensor({1.0f, 1.25f, -1.0f, 448.0f, -448.0f, 448.0f, 0.0f, 2 * sub,
                                2 * sub, 0.0f, 0.0f});
  EXPECT_TRUE(at::equal(RoundToE4m3(x), want)) << RoundToE4m3(x);
  EXPECT_TRUE(std::isnan(RoundToE4m3(at::tensor({NAN}))[0].item<float>()));
}

TEST(E4m3FormatTest, RandomValuesGoToTheNearestGridValue) {
  at::manual_seed(7);
  auto [grid, bytes] = FiniteValues();
  // Log-uniform magnitudes over the whole range, both signs.
  at::Tensor x = at::exp(at::rand({4000}) * std::log(600.0 / 1e-4) + std::log(1e-4)) *
                 at::where(at::rand({4000}).lt(0.5), -1.0, 1.0);
  at::Tensor r = RoundToE4m3(x);
  at::Tensor clamped = x.clamp(-448, 448);
  at::Tensor nearest = grid.index_select(
      0, (clamped.unsqueeze(1) - grid.unsqueeze(0)).abs().argmin(1));
  // Ties have probability zero here; +-0 compare equal.
  EXPECT_TRUE(at::equal(r.abs(), nearest.abs()));
  EXPECT_TRUE(at::equal(DecodeE4m3(EncodeE4m3(r)), r));
}

TEST(QuantizeWeightTest, PerChannelScalesAndRoundTripBound) {
  at::manual_seed(1);
  at::Tensor w = at::randn({48, 96}) * at::linspace(0.01, 5.0, 48).unsqueeze(1);
  w[5].zero_();
  QuantizedWeight q = QuantizeWeight(w);
  ASSERT_EQ(q.data.scalar_type(), at::kByte);
  ASSERT_EQ(q.data.sizes(), w.sizes());
  ASSERT_EQ(q.scale.sizes(), at::IntArrayRef({48}));
  at::Tensor amax = w.abs().amax({1});
  for (int o = 0; o < 48; ++o) {
    if (o == 5) {
      EXPECT_EQ(q.scale[o].item<float>(), 1.0f);
      EXPECT_EQ(q.data[o].to(at::kInt).sum().item<int>(), 0);
      continue;
    }
    EXPECT_FLOAT_EQ(q.scale[o].item<float>(), amax[o].item<float>() / 448.0f) << o;
    // The row's largest magnitude maps to +-448 exactly.
    const int64_t j = w[o].abs().argmax().item<int64_t>();
    EXPECT_EQ(q.data[o][j].item<uint8_t>() & 0x7f, 0x7e) << o;
  }
  // |W - deq(W)| <= 2^-4 |W| for normals (3 mantissa bits, half a step) plus half the
  // subnormal step 2^-10 scale for the smallest values.
  at::Tensor deq = DecodeE4m3(q.data) * q.scale.unsqueeze(1);
  at::Tensor bound = w.abs() * std::ldexp(1.0, -4) + q.scale.unsqueeze(1) * std::ldexp(1.0, -10);
  EXPECT_TRUE((deq - w).abs().le(bound * (1 + 1e-6)).all().item<bool>());
  EXPECT_LT(((deq - w).norm() / w.norm()).item<double>(), 0.04);
}

TEST(Fp8LinearTest, ReferenceIsTheQuantizedProductAndCloseToFloat32) {
  at::manual_seed(2);
  at::Tensor x = at::randn({1, 37, 64});
  x[0][3].mul_(50.0);  // one loud token: per-token scales keep the others accurate
  at::Tensor w = at::randn({80, 64}) / 8.0;
  at::Tensor bias = at::randn({80});
  QuantizedWeight q = QuantizeWeight(w);
  at::Tensor y = Fp8Linear(x, q.data, q.scale, bias);
  ASSERT_EQ(y.sizes(), at::IntArrayRef({1, 37, 80}));
  ASSERT_EQ(y.scalar_type(), at::kFloat);
  // The definition: per-token scales, e4m3 operands, float32 product.
  at::Tensor x2 = x.reshape({37, 64});
  at::Tensor sx = x2.abs().amax({1}, true) / 448.0;
  EXPECT_TRUE(at::allclose(TokenScales(x2), sx));
  at::Tensor manual = at::matmul(RoundToE4m3(x2 / sx) * sx,
                                 (DecodeE4m3(q.data) * q.scale.unsqueeze(1)).t()) + bias;
  EXPECT_TRUE(at::allclose(y.reshape({37, 80}), manual, 1e-5, 1e-5));
  at::Tensor exact = at::linear(x, w, bias);
  const double rel = ((y - exact).norm() / exact.norm()).item<double>();
  EXPECT_LT(rel, 0.06);
  // Every token, the quiet ones too, stays close (per-token, not per-tensor, scales).
  at::Tensor row_rel = (y - exact).norm(2, {2}) / exact.norm(2, {2});
  EXPECT_LT(row_rel.max().item<double>(), 0.1);
  EXPECT_TRUE(at::equal(TokenScales(at::zeros({2, 4})), at::full({2, 1}, 1e-12f / 448.0f)));
}

std::set<std::string> Expected(const TransformerConfig& c) {
  std::set<std::string> keys;
  std::vector<std::string> blocks;
  for (int i = 0; i < c.n_refiner_layers; ++i) {
    blocks.push_back(absl::StrCat("noise_refiner.", i));
    blocks.push_back(absl::StrCat("context_refiner.", i));
  }
  for (int i = 0; i < c.n_layers; ++i) blocks.push_back(absl::StrCat("layers.", i));
  for (const std::string& b : blocks) {
    for (const char* s : {"attention.to_q", "attention.to_k", "attention.to_v",
                          "attention.to_out.0", "feed_forward.w1", "feed_forward.w2",
                          "feed_forward.w3"}) {
      keys.insert(absl::StrCat(b, ".", s));
    }
  }
  return keys;
}

TransformerConfig TinyConfig() {
  TransformerConfig c;  // the tiny test model's transformer/config.json
  c.dim = 64;
  c.n_heads = 2;
  c.n_kv_heads = 2;
  c.n_layers = 2;
  c.cap_feat_dim = 32;
  c.axes_dims = {8, 12, 12};
  return c;
}

// Every Linear of the DiT: key -> its recipe row (nullptr = unmatched).
std::map<std::string, const Fp8RecipeRow*> Linears(torch::nn::Module& m) {
  std::map<std::string, const Fp8RecipeRow*> out;
  for (const auto& sub : m.named_modules("", false)) {
    if (dynamic_cast<LinearImpl*>(sub.value().get()) != nullptr) {
      out[sub.key()] = Fp8RecipeRowOf(sub.key());
    }
  }
  return out;
}

TEST(Fp8RecipeTest, SelectsExactlyAttentionAndFfnOfTheTinyAndTheRealLayout) {
  for (const bool real : {false, true}) {
    SCOPED_TRACE(real ? "real-size layout" : "tiny model");
    const TransformerConfig c = real ? TransformerConfig() : TinyConfig();
    // The real layout on the meta device: shapes and names, no memory.
    Transformer t(c, at::TensorOptions().dtype(at::kBFloat16).device(real ? at::kMeta : at::kCPU));
    std::vector<std::string> got = Fp8Layers(*t);
    EXPECT_EQ(std::set<std::string>(got.begin(), got.end()), Expected(c));
    EXPECT_EQ(got.size(), (2 * c.n_refiner_layers + c.n_layers) * 7u);
    std::set<std::string> kept;
    for (const auto& [key, row] : Linears(*t)) {
      ASSERT_NE(row, nullptr) << key << " matches no recipe row";
      if (!row->fp8) kept.insert(key);
    }
    std::set<std::string> want_kept = {"all_x_embedder.2-1", "t_embedder.mlp.0",
                                       "t_embedder.mlp.2", "cap_embedder.1",
                                       "all_final_layer.2-1.adaLN_modulation.1",
                                       "all_final_layer.2-1.linear"};
    for (int i = 0; i < c.n_refiner_layers; ++i) {
      want_kept.insert(absl::StrCat("noise_refiner.", i, ".adaLN_modulation.0"));
    }
    for (int i = 0; i < c.n_layers; ++i) {
      want_kept.insert(absl::StrCat("layers.", i, ".adaLN_modulation.0"));
    }
    EXPECT_EQ(kept, want_kept);
  }
}

TEST(Fp8RecipeTest, QuantizedDitKeepsTheOtherLayersAndStaysClose) {
  const TransformerConfig c = TinyConfig();
  Transformer ref(c, at::TensorOptions().dtype(at::kFloat));
  InitRandom(*ref, 11);
  Transformer q(c, at::TensorOptions().dtype(at::kFloat));
  InitRandom(*q, 11);
  std::map<std::string, at::Tensor> before;
  for (const auto& p : q->named_parameters()) before[p.key()] = p.value().clone();
  EXPECT_EQ(QuantizeFp8Layers(*q), 42);
  std::set<std::string> fp8(Expected(c));
  int scales = 0;
  for (const auto& p : q->named_parameters()) {
    const std::string& k = p.key();
    if (k.ends_with(".weight_scale")) {
      ++scales;
      EXPECT_TRUE(fp8.count(k.substr(0, k.size() - 13))) << k;
      EXPECT_EQ(p.value().scalar_type(), at::kFloat);
      continue;
    }
    const std::string module = k.substr(0, k.rfind('.'));
    if (fp8.count(module) && k.ends_with(".weight")) {
      EXPECT_EQ(p.value().scalar_type(), at::kByte) << k;
      EXPECT_TRUE(at::equal(p.value(), QuantizeWeight(before[k]).data)) << k;
    } else {
      EXPECT_TRUE(at::equal(p.value(), before[k])) << k << " changed";  // bit for bit
    }
  }
  EXPECT_EQ(scales, 42);
  at::manual_seed(3);
  at::Tensor latent = at::randn({16, 1, 8, 8});
  at::Tensor cap = at::randn({7, c.cap_feat_dim});
  at::Tensor want = ref->forward(latent, 0.4f, cap);
  at::Tensor got = q->forward(latent, 0.4f, cap);
  const double cos =
      at::cosine_similarity(got.flatten(), want.flatten(), 0).item<double>();
  EXPECT_GT(cos, 0.99);
  EXPECT_FALSE(at::equal(got, want));  // it did quantize
  // Fused projections (q/k/v and w1/w3 with their scales) give the same result.
  q->FuseProjections();
  EXPECT_TRUE(at::allclose(q->forward(latent, 0.4f, cap), got, 1e-4, 1e-5));
}

TEST(Fp8DeviceTest, RefusesCpuOldGpusAndOldTorchNamingFlagAndCapability) {
  EXPECT_THAT(CheckFp8Device("cpu", "Intel Xeon", 0, 0),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("--precision fp8"), HasSubstr("8.9"),
                             HasSubstr("cpu is a CPU"))));
  EXPECT_THAT(CheckFp8Device("cuda:1", "NVIDIA A100-SXM4-80GB", 8, 0),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("--precision fp8"), HasSubstr("8.9 or later"),
                             HasSubstr("cuda:1 (NVIDIA A100-SXM4-80GB) has compute capability 8.0"))));
  const absl::Status hopper = CheckFp8Device("cuda:0", "NVIDIA H200", 9, 0);
  const absl::Status ada = CheckFp8Device("cuda:0", "NVIDIA L40S", 8, 9);
  if (Fp8NativeBuild()) {
    EXPECT_OK(hopper);
    EXPECT_OK(ada);
  } else {
    EXPECT_THAT(hopper, StatusIs(absl::StatusCode::kFailedPrecondition,
                                 HasSubstr("libtorch 2.5 or later")));
  }
}

// The FP8 weights cache holds exactly what the pipeline makes of the source at load (bf16
// DiT, recipe layers quantized): every parameter bit for bit. Its bytes only load into a
// module prepared for FP8.
TEST(Fp8CacheTest, CacheLoadsToTheSameModuleAsQuantizingTheSource) {
  const std::string dir = testing::MakeTinyFolder();
  ASSERT_FALSE(dir.empty());
  const std::string cache = dir + "/../fp8-cache";
  std::filesystem::remove_all(cache);
  ASSERT_OK_AND_ASSIGN(ModelConfig config, LoadModelConfig(dir));
  ASSERT_OK_AND_ASSIGN(std::string cached, WriteFp8Cache(cache, dir + "/transformer"));
  ASSERT_OK_AND_ASSIGN(std::string again, WeightsCacheDir(cache, dir + "/transformer", "fp8"));
  EXPECT_EQ(cached, again);
  EXPECT_TRUE(WeightsCachePresent(cached));
  ASSERT_OK_AND_ASSIGN(std::string bf16_dir, Bf16CacheDir(cache, dir + "/transformer"));
  EXPECT_NE(bf16_dir, cached);  // its own folder beside the bf16 copy

  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(cached + "/model.safetensors"));
  int f8 = 0, scales = 0;
  for (const TensorInfo& t : file->tensors()) {
    if (t.dtype == DType::kF8E4M3) ++f8;
    if (t.name.ends_with(".weight_scale")) {
      ++scales;
      EXPECT_EQ(t.dtype, DType::kF32) << t.name;
    }
    if (t.dtype == DType::kBF16) {
      EXPECT_FALSE(Fp8Selected(t.name.substr(0, t.name.rfind('.')))) << t.name;
    }
  }
  EXPECT_EQ(f8, 42);
  EXPECT_EQ(scales, 42);

  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16);
  LoadSpec spec;
  spec.component = "transformer";
  Transformer from_source(config.transformer, bf16);
  ASSERT_OK_AND_ASSIGN(auto source, WeightSet::Open(dir + "/transformer"));
  ASSERT_OK(LoadWeights(*from_source, *source, spec));
  EXPECT_EQ(QuantizeFp8Layers(*from_source), 42);
  Transformer from_cache(config.transformer, bf16);
  ASSERT_OK_AND_ASSIGN(auto ws, WeightSet::Open(cached));
  // Without PrepareFp8Layers the FP8 bytes are refused, naming the key.
  EXPECT_THAT(LoadWeights(*from_cache, *ws, spec),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("stored as F8_E4M3 but the module holds BFloat16"),
                             HasSubstr("transformer: key '"))));
  EXPECT_EQ(PrepareFp8Layers(*from_cache), 42);
  ASSERT_OK(LoadWeights(*from_cache, *ws, spec));
  auto a = from_source->named_parameters(), b = from_cache->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& p : a) {
    const at::Tensor* q = b.find(p.key());
    ASSERT_NE(q, nullptr) << p.key();
    EXPECT_TRUE(at::equal(p.value(), *q)) << p.key();
  }
  // The reverse: a float32 source tensor into a prepared FP8 layer is refused too.
  Transformer prepared(config.transformer, bf16);
  PrepareFp8Layers(*prepared);
  EXPECT_THAT(LoadWeights(*prepared, *source, spec),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("stored as F32 but the module holds Byte")));
  std::filesystem::remove_all(cache);
}

}  // namespace
}  // namespace zfarm::worker::model
