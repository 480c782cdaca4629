// LoRA format detection and key conversion (pure, on key lists), and reading the tiny
// LoRA files of tests/testdata/lora (make_tiny_loras.py) including damaged copies.

#include "worker/model/lora_format.h"

#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/files.h"
#include "tests/testing/status_matchers.h"
#include "worker/io/file_util.h"

namespace zfarm::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;

// "module <- down | up | alpha | third" per module, for compact expectations.
std::vector<std::string> Describe(const LoraLayout& l) {
  std::vector<std::string> out;
  for (const LoraModuleKeys& m : l.modules) {
    std::string s = m.module + " <- " + m.down_key + " | " + m.up_key;
    if (!m.alpha_key.empty()) s += " | " + m.alpha_key;
    if (m.up_third >= 0) s += " | third " + std::to_string(m.up_third);
    out.push_back(s);
  }
  return out;
}

TEST(LoraKeysTest, DiffusersPeft) {
  ASSERT_OK_AND_ASSIGN(
      LoraLayout l,
      ConvertLoraKeys({"transformer.layers.0.attention.to_q.lora_A.weight",
                       "transformer.layers.0.attention.to_q.lora_B.weight",
                       "transformer.noise_refiner.1.adaLN_modulation.0.lora_A.weight",
                       "transformer.noise_refiner.1.adaLN_modulation.0.lora_B.weight"}));
  EXPECT_EQ(l.format, LoraFormat::kDiffusers);
  EXPECT_THAT(Describe(l),
              ElementsAre("layers.0.attention.to_q <- transformer.layers.0.attention.to_q.lora_A.weight"
                          " | transformer.layers.0.attention.to_q.lora_B.weight",
                          "noise_refiner.1.adaLN_modulation.0 <- "
                          "transformer.noise_refiner.1.adaLN_modulation.0.lora_A.weight | "
                          "transformer.noise_refiner.1.adaLN_modulation.0.lora_B.weight"));
}

TEST(LoraKeysTest, BarePeftWithAlphaAndDefaultAdapterSegment) {
  ASSERT_OK_AND_ASSIGN(LoraLayout l,
                       ConvertLoraKeys({"layers.1.feed_forward.w2.lora_A.default.weight",
                                        "layers.1.feed_forward.w2.lora_B.default.weight",
                                        "layers.1.feed_forward.w2.alpha"}));
  EXPECT_EQ(l.format, LoraFormat::kDiffusers);
  EXPECT_THAT(Describe(l), ElementsAre("layers.1.feed_forward.w2 <- "
                                       "layers.1.feed_forward.w2.lora_A.default.weight | "
                                       "layers.1.feed_forward.w2.lora_B.default.weight | "
                                       "layers.1.feed_forward.w2.alpha"));
}

TEST(LoraKeysTest, KohyaNamesSplitAtUnderscoresExceptProtectedPairs) {
  std::vector<std::string> keys;
  for (const char* m : {"layers_3_attention_to_out_0", "context_refiner_1_feed_forward_w3",
                        "noise_refiner_0_adaLN_modulation_0", "layers_0_attention_to_k",
                        "t_embedder_mlp_2", "all_final_layer_2-1_linear"}) {
    for (const char* s : {".lora_down.weight", ".lora_up.weight", ".alpha"}) {
      keys.push_back(std::string("lora_unet_") + m + s);
    }
  }
  ASSERT_OK_AND_ASSIGN(LoraLayout l, ConvertLoraKeys(keys));
  EXPECT_EQ(l.format, LoraFormat::kKohya);
  std::vector<std::string> modules;
  for (const auto& m : l.modules) {
    modules.push_back(m.module);
    EXPECT_FALSE(m.alpha_key.empty()) << m.module;
  }
  EXPECT_THAT(modules, ElementsAre("all_final_layer.2-1.linear", "context_refiner.1.feed_forward.w3",
                                   "layers.0.attention.to_k", "layers.3.attention.to_out.0",
                                   "noise_refiner.0.adaLN_modulation.0", "t_embedder.mlp.2"));
  EXPECT_EQ(l.modules[3].down_key, "lora_unet_layers_3_attention_to_out_0.lora_down.weight");
}

TEST(LoraKeysTest, KohyaBareOutIsToOut) {
  ASSERT_OK_AND_ASSIGN(LoraLayout l, ConvertLoraKeys({"lora_unet_layers_2_attention_out.lora_down.weight",
                                                      "lora_unet_layers_2_attention_out.lora_up.weight",
                                                      "lora_unet_layers_2_attention_out.alpha"}));
  ASSERT_EQ(l.modules.size(), 1u);
  EXPECT_EQ(l.modules[0].module, "layers.2.attention.to_out.0");
}

TEST(LoraKeysTest, ComfyFusedQkvSplitsIntoThirds) {
  ASSERT_OK_AND_ASSIGN(LoraLayout l,
                       ConvertLoraKeys({"diffusion_model.layers.0.attention.qkv.lora_A.weight",
                                        "diffusion_model.layers.0.attention.qkv.lora_B.weight",
                                        "diffusion_model.layers.0.attention.qkv.alpha",
                                        "diffusion_model.layers.0.attention.out.lora_A.weight",
                                        "diffusion_model.layers.0.attention.out.lora_B.weight"}));
  EXPECT_EQ(l.format, LoraFormat::kComfy);
  const std::string a = "diffusion_model.layers.0.attention.qkv.lora_A.weight";
  const std::string b = "diffusion_model.layers.0.attention.qkv.lora_B.weight";
  const std::string al = "diffusion_model.layers.0.attention.qkv.alpha";
  EXPECT_THAT(Describe(l),
              ElementsAre("layers.0.attention.to_k <- " + a + " | " + b + " | " + al + " | third 1",
                          "layers.0.attention.to_out.0 <- "
                          "diffusion_model.layers.0.attention.out.lora_A.weight | "
                          "diffusion_model.layers.0.attention.out.lora_B.weight",
                          "layers.0.attention.to_q <- " + a + " | " + b + " | " + al + " | third 0",
                          "layers.0.attention.to_v <- " + a + " | " + b + " | " + al + " | third 2"));
}

TEST(LoraKeysTest, DotFormatSkipsItsRedundantQkvAndOutCopies) {
  std::vector<std::string> keys;
  const std::string p = "diffusion_model.layers.1.attention.";
  for (const char* m : {"to.q", "to.k", "to.v", "to_out.0", "qkv", "out"}) {
    keys.push_back(p + m + ".lora.down.weight");
    keys.push_back(p + m + ".lora.up.weight");
  }
  keys.push_back(p + "to_q.alpha");
  ASSERT_OK_AND_ASSIGN(LoraLayout l, ConvertLoraKeys(keys));
  EXPECT_EQ(l.format, LoraFormat::kDot);
  std::vector<std::string> modules;
  for (const auto& m : l.modules) modules.push_back(m.module);
  EXPECT_THAT(modules, ElementsAre("layers.1.attention.to_k", "layers.1.attention.to_out.0",
                                   "layers.1.attention.to_q", "layers.1.attention.to_v"));
  EXPECT_EQ(l.modules[2].alpha_key, p + "to_q.alpha");
  EXPECT_THAT(l.skipped, ElementsAre(p + "out.lora.down.weight", p + "out.lora.up.weight",
                                     p + "qkv.lora.down.weight", p + "qkv.lora.up.weight"));
}

TEST(LoraKeysTest, DotFormatQkvAloneIsUsed) {
  ASSERT_OK_AND_ASSIGN(LoraLayout l, ConvertLoraKeys({"layers.1.attention.qkv.lora.down.weight",
                                                      "layers.1.attention.qkv.lora.up.weight"}));
  EXPECT_EQ(l.modules.size(), 3u);
  EXPECT_TRUE(l.skipped.empty());
}

TEST(LoraKeysTest, ErrorsNameTheKey) {
  EXPECT_THAT(ConvertLoraKeys({}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no tensors")));
  EXPECT_THAT(ConvertLoraKeys({"transformer.layers.0.attention.to_q.lora_A.weight",
                               "transformer.layers.0.attention.to_q.lora_B.weight",
                               "transformer.layers.0.attention.to_q.weight"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("'transformer.layers.0.attention.to_q.weight': not a LoRA tensor")));
  EXPECT_THAT(ConvertLoraKeys({"transformer.layers.0.attention.to_q.lora_A.weight"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("'transformer.layers.0.attention.to_q.lora_A.weight': down "
                                 "weight without its up weight")));
  EXPECT_THAT(ConvertLoraKeys({"layers.0.attention.to_q.lora_B.weight"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("without its down weight")));
  EXPECT_THAT(ConvertLoraKeys({"lora_unet_layers_0_attention_to_q.alpha"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("alpha without LoRA weights")));
  EXPECT_THAT(ConvertLoraKeys({"text_encoder.layers.0.self_attn.q_proj.lora_A.weight"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("text encoder")));
  EXPECT_THAT(ConvertLoraKeys({"layers.0.attention.to_q.lora_A.weight",
                               "layers.0.attention.to_q.lora_B.weight",
                               "layers.0.attention.to_q.dora_scale"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("DoRA")));
  // Two names for one module: a fused qkv and a separate to_q (not the dot format's copies).
  EXPECT_THAT(ConvertLoraKeys({"layers.0.attention.qkv.lora_A.weight",
                               "layers.0.attention.qkv.lora_B.weight",
                               "layers.0.attention.to_q.lora_A.weight",
                               "layers.0.attention.to_q.lora_B.weight"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("targets layers.0.attention.to_q, which")));
  // The same module twice in two naming styles.
  EXPECT_THAT(ConvertLoraKeys({"layers.0.attention.to_q.lora_A.weight",
                               "layers.0.attention.to_q.lora_down.weight",
                               "layers.0.attention.to_q.lora_B.weight"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("duplicates")));
}

// ------------------------------------------------------------------ files

std::string LoraPath(const std::string& stem) {
  return std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/lora/" + stem + ".safetensors";
}

const LoraModule* Find(const LoraFile& f, const std::string& module) {
  for (const LoraModule& m : f.modules) {
    if (m.module == module) return &m;
  }
  return nullptr;
}

TEST(LoraFileTest, ReadsEveryTinyFormat) {
  const std::map<std::string, std::pair<LoraFormat, size_t>> want = {
      {"tiny_diffusers", {LoraFormat::kDiffusers, 8}},
      {"tiny_kohya", {LoraFormat::kKohya, 6}},
      {"tiny_comfy", {LoraFormat::kComfy, 6}},
      {"tiny_dot", {LoraFormat::kDot, 6}}};
  for (const auto& [stem, w] : want) {
    ASSERT_OK_AND_ASSIGN(LoraFile f, ReadLoraFile(LoraPath(stem)));
    EXPECT_EQ(f.layout.format, w.first) << stem;
    EXPECT_EQ(f.modules.size(), w.second) << stem;
    EXPECT_EQ(f.sha256.size(), 64u);
    ASSERT_OK_AND_ASSIGN(std::string sha, base::Sha256OfFile(LoraPath(stem)));
    EXPECT_EQ(f.sha256, sha);
  }
}

TEST(LoraFileTest, MultipliersFromAlphaAndAdapterMetadata) {
  ASSERT_OK_AND_ASSIGN(LoraFile d, ReadLoraFile(LoraPath("tiny_diffusers")));
  // lora_alpha 3 / r 4; rank_pattern r 2 for to_out.0; alpha_pattern 6 for the adaLN.
  ASSERT_NE(Find(d, "layers.0.attention.to_q"), nullptr);
  EXPECT_FLOAT_EQ(Find(d, "layers.0.attention.to_q")->multiplier, 0.75f);
  EXPECT_EQ(Find(d, "layers.0.attention.to_out.0")->rank, 2);
  EXPECT_FLOAT_EQ(Find(d, "layers.0.attention.to_out.0")->multiplier, 1.5f);
  EXPECT_FLOAT_EQ(Find(d, "noise_refiner.0.adaLN_modulation.0")->multiplier, 1.5f);
  ASSERT_OK_AND_ASSIGN(LoraFile k, ReadLoraFile(LoraPath("tiny_kohya")));
  EXPECT_FLOAT_EQ(Find(k, "layers.1.attention.to_k")->multiplier, 2.0f);  // alpha 8, rank 4
  EXPECT_EQ(Find(k, "layers.0.adaLN_modulation.0")->out, 256);
}

TEST(LoraFileTest, FusedQkvUpIsCutByRows) {
  ASSERT_OK_AND_ASSIGN(LoraFile c, ReadLoraFile(LoraPath("tiny_comfy")));
  const LoraModule* q = Find(c, "layers.0.attention.to_q");
  const LoraModule* v = Find(c, "layers.0.attention.to_v");
  ASSERT_NE(q, nullptr);
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(q->out, 64);
  EXPECT_EQ(q->down, v->down);  // shared lora_A
  EXPECT_NE(q->up, v->up);
  EXPECT_FLOAT_EQ(q->multiplier, 0.5f);  // alpha 2, rank 4
}

class DamagedLoraTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& bytes) {
    const std::string path = ::testing::TempDir() + "/" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  std::string Original() {
    auto s = ReadSmallFile(LoraPath("tiny_kohya"), 1 << 20);
    return s.ok() ? *s : "";
  }
};

TEST_F(DamagedLoraTest, TruncatedFileNamesTheFile) {
  const std::string bytes = Original();
  ASSERT_FALSE(bytes.empty());
  const std::string path = Write("truncated.safetensors", bytes.substr(0, bytes.size() - 100));
  EXPECT_THAT(ReadLoraFile(path),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("truncated.safetensors")));
}

TEST_F(DamagedLoraTest, DamagedHeaderNamesTheFile) {
  std::string bytes = Original();
  ASSERT_GT(bytes.size(), 20u);
  bytes[10] = '\x01';  // inside the JSON header
  const std::string path = Write("header.safetensors", bytes);
  EXPECT_THAT(ReadLoraFile(path),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("header.safetensors")));
}

TEST(LoraModelCheckTest, NamesKeyAndBothShapes) {
  ASSERT_OK_AND_ASSIGN(LoraFile k, ReadLoraFile(LoraPath("tiny_kohya")));
  // A model of another width: every 64-wide weight is 128 wide.
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const LoraModule& m : k.modules) shapes[m.module + ".weight"] = {m.out * 2, m.in * 2};
  auto fn = [&](const std::string& n) -> const std::vector<int64_t>* {
    auto it = shapes.find(n);
    return it == shapes.end() ? nullptr : &it->second;
  };
  EXPECT_THAT(CheckLoraAgainstModel(k, fn),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("LoRA key 'lora_unet_context_refiner_0_feed_forward_w2.lora_down."
                                 "weight' targets context_refiner.0.feed_forward.w2.weight of shape "
                                 "[128, 340] but its update up x down is [64, 170]")));
  shapes.erase("context_refiner.0.feed_forward.w2.weight");
  EXPECT_THAT(CheckLoraAgainstModel(k, fn),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("targets context_refiner.0.feed_forward.w2.weight, which the "
                                 "model does not have")));
  for (const LoraModule& m : k.modules) shapes[m.module + ".weight"] = {m.out, m.in};
  EXPECT_OK(CheckLoraAgainstModel(k, fn));
}

}  // namespace
}  // namespace zfarm::worker
