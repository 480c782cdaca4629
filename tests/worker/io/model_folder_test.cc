#include "worker/io/model_folder.h"

#include <filesystem>
#include <functional>
#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"
#include "tests/worker/io/io_test_util.h"
#include "worker/io/safetensors.h"

namespace zfarm::worker {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;
using ::zfarm::worker::testing::FreshDir;
using ::zfarm::worker::testing::MakeTinyModel;
using ::zfarm::worker::testing::ReadAll;
using ::zfarm::worker::testing::WriteAll;

// One tiny folder per test binary.
const std::string& TinyDir() {
  static const std::string* dir = [] {
    auto* d = new std::string(FreshDir("tiny_shared") + "/model");
    EXPECT_EQ(MakeTinyModel(*d), 0);
    return d;
  }();
  return *dir;
}

const char* const kConfigs[] = {"model_index.json", "scheduler/scheduler_config.json",
                                "text_encoder/config.json", "transformer/config.json",
                                "vae/config.json"};

// Copies the tiny folder's JSON files into a fresh folder and applies `edit` to `file`.
std::string MutatedConfigs(const std::string& name, const std::string& file,
                           const std::function<void(nlohmann::json&)>& edit) {
  const std::string dir = FreshDir(name);
  for (const char* c : kConfigs) {
    fs::create_directories(fs::path(dir + "/" + c).parent_path());
    std::string text = ReadAll(TinyDir() + "/" + c);
    if (file == c) {
      nlohmann::json j = nlohmann::json::parse(text);
      edit(j);
      text = j.dump(2);
    }
    WriteAll(dir + "/" + c, text);
  }
  return dir;
}

TEST(ModelFolderTest, LoadsTinyFolder) {
  ASSERT_OK_AND_ASSIGN(ModelConfig m, LoadModelConfig(TinyDir() + "/"));
  EXPECT_EQ(m.root, TinyDir());
  EXPECT_EQ(m.transformer.dim, 64);
  EXPECT_EQ(m.transformer.head_dim(), 32);
  EXPECT_EQ(m.transformer.adaln_dim(), 64);  // min(dim, 256)
  EXPECT_THAT(m.transformer.axes_dims, ElementsAre(8, 12, 12));
  EXPECT_EQ(m.transformer.cap_feat_dim, m.text_encoder.hidden_size);
  EXPECT_EQ(m.text_encoder.num_attention_heads, 4);
  EXPECT_EQ(m.text_encoder.num_key_value_heads, 2);
  EXPECT_EQ(m.text_encoder.head_dim, 16);
  EXPECT_EQ(m.text_encoder.vocab_size, 151936);
  EXPECT_THAT(m.vae.block_out_channels, ElementsAre(32, 32, 64, 64));
  EXPECT_EQ(m.vae.norm_num_groups, 8);
  EXPECT_DOUBLE_EQ(m.vae.scaling_factor, 0.3611);
  EXPECT_DOUBLE_EQ(m.scheduler.shift, 3.0);
  EXPECT_TRUE(fs::exists(m.tokenizer_json_path));
}

TEST(ModelFolderTest, TinyWeightsMatchConfigs) {
  ASSERT_OK_AND_ASSIGN(ModelConfig m, LoadModelConfig(TinyDir()));
  ASSERT_OK_AND_ASSIGN(auto dit, WeightSet::Open(TinyDir() + "/transformer"));
  EXPECT_EQ(dit->files().size(), 2u);
  const TensorInfo* mod = dit->Find("layers.0.adaLN_modulation.0.weight");
  ASSERT_NE(mod, nullptr);
  EXPECT_THAT(mod->shape, ElementsAre(4 * m.transformer.dim, m.transformer.adaln_dim()));
  EXPECT_EQ(mod->dtype, DType::kF32);
  EXPECT_EQ(dit->Find("context_refiner.0.adaLN_modulation.0.weight"), nullptr);
  EXPECT_NE(dit->Find("x_pad_token"), nullptr);
  EXPECT_NE(dit->Find("all_final_layer.2-1.linear.weight"), nullptr);
  ASSERT_OK_AND_ASSIGN(auto te, WeightSet::Open(TinyDir() + "/text_encoder"));
  EXPECT_EQ(te->size(), 3u * 11 + 2);
  const TensorInfo* k = FindTextEncoderTensor(*te, "model.layers.2.self_attn.k_proj.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_THAT(k->shape, ElementsAre(2 * 16, 32));
  EXPECT_EQ(k->dtype, DType::kBF16);
  ASSERT_OK_AND_ASSIGN(auto vae, WeightSet::Open(TinyDir() + "/vae"));
  EXPECT_NE(vae->Find("decoder.up_blocks.2.resnets.0.conv_shortcut.weight"), nullptr);
  EXPECT_NE(vae->Find("encoder.down_blocks.2.resnets.0.conv_shortcut.weight"), nullptr);
  EXPECT_NE(vae->Find("decoder.mid_block.attentions.0.to_out.0.weight"), nullptr);
  EXPECT_EQ(vae->Find("decoder.up_blocks.3.upsamplers.0.conv.weight"), nullptr);
  EXPECT_EQ(vae->Find("decoder.up_blocks.2.resnets.0.conv_shortcut.weight")->dtype, DType::kBF16);
}

TEST(ModelFolderTest, UnknownClassNamesFileAndKey) {
  auto dir = MutatedConfigs("unknown_class", "model_index.json", [](nlohmann::json& j) {
    j["transformer"] = {"diffusers", "FluxTransformer2DModel"};
  });
  EXPECT_THAT(LoadModelConfig(dir),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("model_index.json"), HasSubstr("key 'transformer'"),
                             HasSubstr("FluxTransformer2DModel"))));
  dir = MutatedConfigs("unknown_pipeline", "model_index.json",
                       [](nlohmann::json& j) { j["_class_name"] = "FluxPipeline"; });
  EXPECT_THAT(LoadModelConfig(dir),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("key '_class_name'")));
}

TEST(ModelFolderTest, WrongTypeNamesFileAndKey) {
  auto dir = MutatedConfigs("wrong_type", "transformer/config.json",
                            [](nlohmann::json& j) { j["n_heads"] = "2"; });
  EXPECT_THAT(LoadModelConfig(dir),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("transformer/config.json"), HasSubstr("key 'n_heads'"),
                             HasSubstr("expected an integer"))));
  dir = MutatedConfigs("wrong_type_vae", "vae/config.json", [](nlohmann::json& j) {
    j["block_out_channels"] = {32, "x"};
  });
  EXPECT_THAT(LoadModelConfig(dir),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("vae/config.json"), HasSubstr("key 'block_out_channels'"))));
}

TEST(ModelFolderTest, MissingKeyNamesFileAndKey) {
  auto dir = MutatedConfigs("missing_key", "text_encoder/config.json",
                            [](nlohmann::json& j) { j.erase("hidden_size"); });
  EXPECT_THAT(LoadModelConfig(dir),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("text_encoder/config.json"), HasSubstr("'hidden_size'"))));
}

TEST(ModelFolderTest, MissingAndInvalidFiles) {
  const std::string dir = MutatedConfigs("missing_file", "", nullptr);
  fs::remove(dir + "/scheduler/scheduler_config.json");
  EXPECT_THAT(LoadModelConfig(dir),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("scheduler/scheduler_config.json")));
  WriteAll(dir + "/scheduler/scheduler_config.json", "{\"shift\": ");
  EXPECT_THAT(LoadModelConfig(dir),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("scheduler_config.json"), HasSubstr("invalid JSON"))));
}

TEST(ModelFolderTest, ValidationErrors) {
  auto dir = MutatedConfigs("axes", "transformer/config.json", [](nlohmann::json& j) {
    j["axes_dims"] = {8, 12, 14};
  });
  EXPECT_THAT(LoadModelConfig(dir),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("key 'axes_dims'"), HasSubstr("sum 34 != head_dim 32"))));
  dir = MutatedConfigs("heads", "transformer/config.json",
                       [](nlohmann::json& j) { j["n_heads"] = 3; });
  EXPECT_THAT(LoadModelConfig(dir), StatusIs(absl::StatusCode::kInvalidArgument,
                                             HasSubstr("not divisible by n_heads 3")));
  dir = MutatedConfigs("gqa", "text_encoder/config.json",
                       [](nlohmann::json& j) { j["num_key_value_heads"] = 3; });
  EXPECT_THAT(LoadModelConfig(dir),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("key 'num_key_value_heads'")));
  dir = MutatedConfigs("groups", "vae/config.json",
                       [](nlohmann::json& j) { j["norm_num_groups"] = 5; });
  EXPECT_THAT(LoadModelConfig(dir),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("norm_num_groups 5")));
  dir = MutatedConfigs("cap", "transformer/config.json",
                       [](nlohmann::json& j) { j["cap_feat_dim"] = 48; });
  EXPECT_THAT(LoadModelConfig(dir),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("key 'cap_feat_dim'")));
}

TEST(ModelFolderTest, TextEncoderPrefixHelper) {
  EXPECT_EQ(StripModelPrefix("model.norm.weight"), "norm.weight");
  EXPECT_EQ(StripModelPrefix("norm.weight"), "norm.weight");
  const std::string dir = FreshDir("prefix");
  SafetensorsWriter w;
  const float one = 1.0f;
  ASSERT_OK(w.Add("model.norm.weight", DType::kF32, {1},
                  std::string(reinterpret_cast<const char*>(&one), 4)));
  ASSERT_OK(w.Write(dir + "/model.safetensors"));
  ASSERT_OK_AND_ASSIGN(auto ws, WeightSet::Open(dir));
  EXPECT_NE(FindTextEncoderTensor(*ws, "norm.weight"), nullptr);
  EXPECT_NE(FindTextEncoderTensor(*ws, "model.norm.weight"), nullptr);
  EXPECT_OK(GetTextEncoderTensor(*ws, "norm.weight"));
  EXPECT_THAT(GetTextEncoderTensor(*ws, "embed_tokens.weight"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("embed_tokens.weight")));
}

// The full-size configuration, headers only (sparse shards): real key counts and shapes.
TEST(ModelFolderTest, FullRandomSparseHasRealKeySet) {
  const std::string dir = FreshDir("full_sparse") + "/model";
  ASSERT_EQ(MakeTinyModel(dir, "--variant full-random --sparse"), 0);
  ASSERT_OK_AND_ASSIGN(ModelConfig m, LoadModelConfig(dir));
  EXPECT_EQ(m.transformer.dim, 3840);
  EXPECT_EQ(m.transformer.adaln_dim(), 256);
  ASSERT_OK_AND_ASSIGN(auto dit, WeightSet::Open(dir + "/transformer"));
  EXPECT_EQ(dit->size(), 521u);  // the published checkpoint
  EXPECT_EQ(dit->files().size(), 3u);
  uint64_t params = 0;
  for (const std::string& n : dit->Names()) params += static_cast<uint64_t>(dit->Find(n)->numel());
  EXPECT_EQ(params, 6'154'908'736u);
  ASSERT_OK_AND_ASSIGN(auto te, WeightSet::Open(dir + "/text_encoder"));
  EXPECT_EQ(te->size(), 398u);
  uint64_t te_params = 0;
  for (const std::string& n : te->Names()) te_params += static_cast<uint64_t>(te->Find(n)->numel());
  EXPECT_EQ(te_params, 4'022'468'096u);
  ASSERT_OK_AND_ASSIGN(auto vae, WeightSet::Open(dir + "/vae"));
  uint64_t dec = 0, enc = 0;
  for (const std::string& n : vae->Names()) {
    (n.rfind("decoder.", 0) == 0 ? dec : enc) += static_cast<uint64_t>(vae->Find(n)->numel());
  }
  EXPECT_EQ(dec, 49'545'475u);
  EXPECT_EQ(enc, 34'274'208u);
  EXPECT_THAT(vae->Find("decoder.up_blocks.2.resnets.0.conv_shortcut.weight")->shape,
              ElementsAre(256, 512, 1, 1));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace zfarm::worker
