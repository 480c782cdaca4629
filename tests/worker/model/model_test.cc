#include <ATen/ATen.h>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/model/tiny_folder.h"
#include "worker/io/model_folder.h"
#include "worker/io/safetensors.h"
#include "worker/model/modules.h"
#include "worker/model/torch_compat.h"
#include "worker/model/weights.h"

namespace zfarm::worker::model {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;
const at::TensorOptions kF32 = at::TensorOptions().dtype(at::kFloat);

std::set<std::string> Keys(torch::nn::Module& m) {
  std::set<std::string> s;
  for (const auto& p : m.named_parameters()) s.insert(p.key());
  return s;
}

TEST(ModuleKeysTest, RealTransformerHas521KeysWithCheckpointNames) {
  // Parameters are at::empty: the full-size module only reserves memory lazily.
  TransformerConfig c;
  c.n_layers = 1;  // keep host memory small; keys scale per layer
  Transformer t(c, kF32);
  std::set<std::string> k = Keys(*t);
  EXPECT_TRUE(k.count("all_x_embedder.2-1.weight"));
  EXPECT_TRUE(k.count("all_final_layer.2-1.adaLN_modulation.1.weight"));
  EXPECT_TRUE(k.count("t_embedder.mlp.2.bias"));
  EXPECT_TRUE(k.count("cap_embedder.0.weight"));
  EXPECT_TRUE(k.count("x_pad_token"));
  EXPECT_TRUE(k.count("noise_refiner.1.adaLN_modulation.0.weight"));
  EXPECT_FALSE(k.count("context_refiner.0.adaLN_modulation.0.weight"));
  EXPECT_TRUE(k.count("layers.0.attention.to_out.0.weight"));
  EXPECT_TRUE(k.count("layers.0.attention.norm_k.weight"));
  EXPECT_TRUE(k.count("layers.0.feed_forward.w3.weight"));
  // The checkpoint's key layout: 15 globals, 15 keys per modulated block, 13 per context-refiner block;
  // the real model (30 layers) has 15 + 2*15 + 2*13 + 30*15 = 521 keys.
  EXPECT_EQ(k.size(), 15u + 2 * 15 + 2 * 13 + 1 * 15);
}

TEST(ModuleKeysTest, TextEncoderSkipsLastLayerAndFinalNorm) {
  TextEncoderConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.intermediate_size = 16;
  TextEncoder te(c, kF32);
  std::set<std::string> k = Keys(*te);
  EXPECT_EQ(k.size(), 1u + 2 * 11);
  EXPECT_TRUE(k.count("layers.1.self_attn.q_norm.weight"));
  EXPECT_FALSE(k.count("layers.2.self_attn.q_proj.weight"));
  EXPECT_TRUE(te->IsUnusedKey("layers.2.mlp.up_proj.weight"));
  EXPECT_TRUE(te->IsUnusedKey("norm.weight"));
  EXPECT_FALSE(te->IsUnusedKey("layers.1.mlp.up_proj.weight"));
}

TEST(ModuleKeysTest, VaeDecoderKeysFollowDiffusers) {
  VaeDecoder v(VaeConfig{}, kF32);
  std::set<std::string> k = Keys(*v);
  EXPECT_TRUE(k.count("decoder.mid_block.attentions.0.to_out.0.weight"));
  EXPECT_TRUE(k.count("decoder.up_blocks.2.resnets.0.conv_shortcut.weight"));
  EXPECT_FALSE(k.count("decoder.up_blocks.0.resnets.0.conv_shortcut.weight"));
  EXPECT_TRUE(k.count("decoder.up_blocks.2.upsamplers.0.conv.bias"));
  EXPECT_FALSE(k.count("decoder.up_blocks.3.upsamplers.0.conv.bias"));
  int64_t n = 0;
  for (const auto& p : v->named_parameters()) n += p.value().numel();
  EXPECT_EQ(n, 49545475);  // the real decoder's parameter count
}

TEST(OpsTest, RmsNormUsesFloat32Statistics) {
  RmsNorm n(4, 1e-5, kF32);
  n->weight.fill_(2.0);
  at::Tensor x = at::tensor({1.0f, 2.0f, 3.0f, 4.0f});
  at::Tensor y = n(x);
  const double rms = std::sqrt((1 + 4 + 9 + 16) / 4.0 + 1e-5);
  EXPECT_NEAR(y[3].item<float>(), 2 * 4 / rms, 1e-6);
}

TEST(OpsTest, SdpaMatchesNaiveAttention) {
  at::manual_seed(1);
  at::Tensor q = at::randn({1, 2, 5, 8}), k = at::randn({1, 2, 5, 8}), v = at::randn({1, 2, 5, 8});
  at::Tensor ref =
      at::matmul(at::softmax(at::matmul(q, k.transpose(-2, -1)) / std::sqrt(8.0), -1), v);
  EXPECT_TRUE(at::allclose(Sdpa(q, k, v, false), ref, 1e-5, 1e-6));
  // Causal: the first query attends only to the first key.
  at::Tensor c = Sdpa(q, k, v, true);
  EXPECT_TRUE(at::allclose(c.select(2, 0), v.select(2, 0), 1e-5, 1e-6));
}

class TinyModelTest : public ::testing::Test {
 protected:
  static void TearDownTestSuite() { testing::RemoveTinyFolder(); }
  void SetUp() override {
    dir_ = testing::MakeTinyFolder();
    ASSERT_FALSE(dir_.empty()) << "make_tiny_model failed";
    ASSERT_OK_AND_ASSIGN(config_, LoadModelConfig(dir_));
  }
  std::string dir_;
  ModelConfig config_;
};

TEST_F(TinyModelTest, LoadsAllComponentsStrictly) {
  at::NoGradGuard ng;
  Transformer t(config_.transformer, kF32);
  ASSERT_OK_AND_ASSIGN(auto tw, WeightSet::Open(dir_ + "/transformer"));
  EXPECT_OK(LoadWeights(*t, *tw, {"transformer", nullptr, nullptr}));
  // Loaded values equal the file's (F32 on disk).
  ASSERT_OK_AND_ASSIGN(TensorView view, tw->Get("x_pad_token"));
  std::vector<float> f(view.info->numel());
  ConvertToF32(view, f.data());
  EXPECT_EQ(t->named_parameters()["x_pad_token"][0][5].item<float>(), f[5]);

  TextEncoder te(config_.text_encoder, kF32);
  ASSERT_OK_AND_ASSIGN(auto ew, WeightSet::Open(dir_ + "/text_encoder"));
  LoadSpec spec{"text_encoder", [](std::string_view k) { return std::string(StripModelPrefix(k)); },
                [&](const std::string& k) { return te->IsUnusedKey(k); }};
  EXPECT_OK(LoadWeights(*te, *ew, spec));
  // Without the ignore rule the last layer is an unexpected key.
  spec.ignore = nullptr;
  EXPECT_THAT(LoadWeights(*te, *ew, spec),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unexpected key")));

  VaeDecoder v(config_.vae, kF32);
  ASSERT_OK_AND_ASSIGN(auto vw, WeightSet::Open(dir_ + "/vae"));
  EXPECT_OK(LoadWeights(*v, *vw,
                        {"vae", nullptr, [&](const std::string& k) { return v->IsUnusedKey(k); }}));
}

TEST_F(TinyModelTest, WrongShapeAndMissingKeysAreNamed) {
  at::NoGradGuard ng;
  TransformerConfig wrong = config_.transformer;
  wrong.cap_feat_dim = 16;  // cap_embedder shapes differ from the file
  Transformer t(wrong, kF32);
  ASSERT_OK_AND_ASSIGN(auto tw, WeightSet::Open(dir_ + "/transformer"));
  EXPECT_THAT(LoadWeights(*t, *tw, {"transformer", nullptr, nullptr}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       ::testing::AllOf(HasSubstr("cap_embedder."), HasSubstr("expected shape"),
                                        HasSubstr("found"))));
  TransformerConfig more = config_.transformer;
  more.n_layers += 1;
  Transformer t2(more, kF32);
  EXPECT_THAT(LoadWeights(*t2, *tw, {"transformer", nullptr, nullptr}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       ::testing::AllOf(HasSubstr("missing key"), HasSubstr("layers.2."))));
}

TEST_F(TinyModelTest, ForwardShapesAndDeterminism) {
  at::NoGradGuard ng;
  Transformer t(config_.transformer, kF32);
  ASSERT_OK_AND_ASSIGN(auto tw, WeightSet::Open(dir_ + "/transformer"));
  ASSERT_OK(LoadWeights(*t, *tw, {"transformer", nullptr, nullptr}));
  at::manual_seed(3);
  // 6x10 latent -> 3x5 = 15 image tokens (not a multiple of 32), caption 7 rows.
  at::Tensor x = at::randn({16, 1, 6, 10});
  at::Tensor cap = at::randn({7, config_.transformer.cap_feat_dim});
  at::Tensor a = t(x, 0.25f, cap), b = t(x, 0.25f, cap);
  EXPECT_EQ(a.sizes(), x.sizes());
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_TRUE(at::isfinite(a).all().item<bool>());
  EXPECT_FALSE(at::equal(a, t(x, 0.5f, cap)));  // depends on t
  // Patchify/unpatchify keep locality: changing one latent pixel changes the output there most.
  EXPECT_GT(a.abs().sum().item<float>(), 0);

  TextEncoder te(config_.text_encoder, kF32);
  ASSERT_OK_AND_ASSIGN(auto ew, WeightSet::Open(dir_ + "/text_encoder"));
  ASSERT_OK(LoadWeights(
      *te, *ew,
      {"text_encoder", [](std::string_view k) { return std::string(StripModelPrefix(k)); },
       [&](const std::string& k) { return te->IsUnusedKey(k); }}));
  at::Tensor ids = at::tensor({151644, 872, 198, 9707, 151645}, at::kLong);
  at::Tensor h = te(ids);
  EXPECT_EQ(h.sizes(), (std::vector<int64_t>{5, config_.text_encoder.hidden_size}));
  // Causality: the first 3 rows do not depend on later tokens.
  at::Tensor h3 = te(ids.slice(0, 0, 3));
  EXPECT_TRUE(at::allclose(h3, h.slice(0, 0, 3), 1e-5, 1e-6));

  VaeDecoder v(config_.vae, kF32);
  ASSERT_OK_AND_ASSIGN(auto vw, WeightSet::Open(dir_ + "/vae"));
  ASSERT_OK(LoadWeights(*v, *vw,
                        {"vae", nullptr, [&](const std::string& k) { return v->IsUnusedKey(k); }}));
  at::Tensor z = at::randn({1, 16, 6, 10});
  at::Tensor img = v(z);
  EXPECT_EQ(img.sizes(), (std::vector<int64_t>{1, 3, 48, 80}));
  // Tiling with one tile covering the latent equals the plain decode exactly.
  EXPECT_TRUE(at::equal(v->TiledDecode(z, 16, 4), img));
  // Small tiles: same shape, finite, and close to the untiled decode away from nothing.
  at::Tensor tiled = v->TiledDecode(z, 4, 2);
  EXPECT_EQ(tiled.sizes(), img.sizes());
  EXPECT_TRUE(at::isfinite(tiled).all().item<bool>());
}

}  // namespace
}  // namespace zfarm::worker::model
