// LoRA in the CPU float32 pipeline on the tiny model: parity with diffusers goldens made by
// tests/tools/make_lora_golden.py (load_lora_weights + set_adapters, two LoRAs stacked at
// different scales, all four file layouts), no-LoRA renders byte-identical before and after
// LoRA jobs, and every bad LoRA input failing INVALID_ARGUMENT (naming file and key) with
// the weights left as they were.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/files.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/pipeline/parity_util.h"
#include "tests/worker/pipeline/tiny_pipeline_fixture.h"
#include "worker/io/file_util.h"
#include "worker/io/safetensors.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;

std::string LoraPath(const std::string& stem) {
  return std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/lora/" + stem + ".safetensors";
}

LoraRequest Lora(const std::string& stem, float scale) {
  LoraRequest r;
  r.name = stem;
  r.path = LoraPath(stem);
  r.scale = scale;
  return r;
}

using testing::RelErr;
constexpr auto Get = testing::GoldenTensor;

int MaxDiff(const std::vector<uint8_t>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 1000;
  int worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<int>(a[i]) - static_cast<int>(b[i])));
  }
  return worst;
}

// The golden's request: prompt, size, steps, seed and "name:scale,..." LoRAs.
GenerateRequest RequestOf(const SafetensorsFile& g) {
  const auto& m = g.metadata();
  GenerateRequest r;
  r.prompt = m.at("prompt");
  EXPECT_TRUE(absl::SimpleAtoi(m.at("width"), &r.width));
  EXPECT_TRUE(absl::SimpleAtoi(m.at("height"), &r.height));
  EXPECT_TRUE(absl::SimpleAtoi(m.at("steps"), &r.steps));
  EXPECT_TRUE(absl::SimpleAtoi(m.at("seed"), &r.seed));
  for (absl::string_view item : absl::StrSplit(m.at("loras"), ',')) {
    std::vector<std::string> kv = absl::StrSplit(item, ':');
    float scale = 0;
    EXPECT_EQ(kv.size(), 2u);
    EXPECT_TRUE(absl::SimpleAtof(kv[1], &scale));
    r.loras.push_back(Lora(kv[0], scale));
  }
  return r;
}

class LoraPipelineTest : public TinyPipelineFixture<::testing::TestWithParam<std::string>> {
 protected:
  std::unique_ptr<SafetensorsFile> Golden(const std::string& name) {
    auto f = SafetensorsFile::Open(std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/golden/" +
                                   name + ".safetensors");
    EXPECT_OK(f.status());
    return f.ok() ? *std::move(f) : nullptr;
  }
};

TEST_P(LoraPipelineTest, MatchesDiffusersStackedAdapters) {
  ASSERT_NE(pipeline_, nullptr);
  auto g = Golden(GetParam());
  ASSERT_NE(g, nullptr);
  GenerateRequest r = RequestOf(*g);
  ASSERT_EQ(r.loras.size(), 2u);
  GenerateTrace trace;
  ASSERT_OK_AND_ASSIGN(Image img, pipeline_->Generate(r, nullptr, nullptr, &trace));
  EXPECT_EQ(trace.noise, Get(*g, "noise"));
  const double dit = RelErr(trace.dit_out0, Get(*g, "dit_out0"));
  EXPECT_LT(dit, 1e-4);
  const std::vector<float> lat = Get(*g, "latents");
  ASSERT_EQ(lat.size(), trace.latents.size() * trace.noise.size());
  const std::vector<float> last(lat.end() - trace.noise.size(), lat.end());
  const double lat_err = RelErr(trace.latents.back(), last);
  EXPECT_LT(lat_err, 1e-4);
  const int worst = MaxDiff(img.rgb, Get(*g, "image_u8"));
  EXPECT_LE(worst, 1);
  // The LoRAs matter: without them the picture is far from the golden.
  GenerateRequest plain = r;
  plain.loras.clear();
  ASSERT_OK_AND_ASSIGN(Image base, pipeline_->Generate(plain, nullptr, nullptr));
  const int lora_effect = MaxDiff(base.rgb, Get(*g, "image_u8"));
  EXPECT_GT(lora_effect, 10);
  ASSERT_EQ(img.loras.size(), 2u);
  ASSERT_OK_AND_ASSIGN(std::string sha, base::Sha256OfFile(r.loras[0].path));
  EXPECT_EQ(img.loras[0].sha256, sha);
  std::printf("%s: dit %.2e final latents %.2e image max diff %d (without the LoRAs: %d)\n",
              GetParam().c_str(), dit, lat_err, worst, lora_effect);
}

INSTANTIATE_TEST_SUITE_P(Cases, LoraPipelineTest,
                         ::testing::Values("lora_stack_48x32_s2", "lora_comfy_dot_32x48_s2"));

class LoraStateTest : public TinyPipelineFixture<::testing::Test> {
 protected:
  static GenerateRequest Plain() {
    GenerateRequest r;
    r.prompt = "a red fox";
    r.width = 32;
    r.height = 32;
    r.steps = 2;
    r.seed = 3;
    return r;
  }
  std::vector<uint8_t> Render(const GenerateRequest& r) {
    auto img = pipeline_->Generate(r, nullptr, nullptr);
    EXPECT_OK(img.status());
    return img.ok() ? img->rgb : std::vector<uint8_t>();
  }
  std::string TempFile(const std::string& name, const std::string& bytes) {
    const std::string path = ::testing::TempDir() + "/" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
};

TEST_F(LoraStateTest, NoLoraIsByteIdenticalBeforeAndAfterLoraJobs) {
  ASSERT_NE(pipeline_, nullptr);
  const std::vector<uint8_t> before = Render(Plain());
  ASSERT_FALSE(before.empty());
  GenerateRequest a = Plain();
  a.loras = {Lora("tiny_kohya", 2.5f), Lora("tiny_comfy", -1.0f)};
  GenerateRequest b = Plain();
  b.loras = {Lora("tiny_diffusers", 4.0f), Lora("tiny_dot", 0.3f), Lora("tiny_kohya", -4.0f)};
  std::vector<uint8_t> first_a;
  for (int i = 0; i < 3; ++i) {
    const std::vector<uint8_t> ra = Render(a);
    if (i == 0) first_a = ra;
    EXPECT_EQ(ra, first_a) << "set A drifted on round " << i;
    EXPECT_NE(ra, before);
    EXPECT_THAT(pipeline_->active_loras(), ::testing::ElementsAre("tiny_kohya", "tiny_comfy"));
    EXPECT_NE(Render(b), before);
  }
  EXPECT_EQ(Render(Plain()), before);
  EXPECT_TRUE(pipeline_->active_loras().empty());
}

TEST_F(LoraStateTest, BadInputFailsNamingFileAndKeyAndChangesNothing) {
  ASSERT_NE(pipeline_, nullptr);
  const std::vector<uint8_t> before = Render(Plain());
  GenerateRequest good = Plain();
  good.loras = {Lora("tiny_kohya", 1.0f)};
  const std::vector<uint8_t> with_good = Render(good);
  ASSERT_OK_AND_ASSIGN(std::string kohya, ReadSmallFile(LoraPath("tiny_kohya"), 1 << 20));

  // A LoRA for another architecture: a 32-wide model's to_q.
  std::string other;
  {
    SafetensorsWriter w;
    std::vector<float> down(4 * 32, 0.1f), up(32 * 4, 0.1f);
    ASSERT_OK(w.Add("lora_unet_layers_0_attention_to_q.lora_down.weight", DType::kF32, {4, 32},
                    std::string(reinterpret_cast<const char*>(down.data()), down.size() * 4)));
    ASSERT_OK(w.Add("lora_unet_layers_0_attention_to_q.lora_up.weight", DType::kF32, {32, 4},
                    std::string(reinterpret_cast<const char*>(up.data()), up.size() * 4)));
    other = ::testing::TempDir() + "/other.safetensors";
    ASSERT_OK(w.Write(other));
  }
  std::string damaged = kohya;
  damaged[12] = '\x02';
  struct Case {
    std::vector<LoraRequest> loras;
    std::string message;
  };
  LoraRequest missing = Lora("nope", 1.0f);
  LoraRequest truncated{"truncated", TempFile("truncated.safetensors", kohya.substr(0, 300)), "", 1.0f};
  LoraRequest header{"header", TempFile("header.safetensors", damaged), "", 1.0f};
  LoraRequest arch{"other", other, "", 1.0f};
  LoraRequest stale = Lora("tiny_dot", 1.0f);
  stale.sha256 = std::string(64, 'a');
  const std::vector<Case> cases = {
      {{missing}, "nope.safetensors"},
      {{truncated}, "truncated.safetensors"},
      {{header}, "header.safetensors"},
      {{arch},
       "other.safetensors: LoRA key 'lora_unet_layers_0_attention_to_q.lora_down.weight' targets "
       "layers.0.attention.to_q.weight of shape [64, 64] but its update up x down is [32, 32]"},
      {{Lora("tiny_dot", 4.5f)}, "scale: 4.5 is outside [-4, 4]"},
      {{Lora("tiny_dot", NAN)}, "is outside [-4, 4]"},
      {{Lora("tiny_dot", 1), Lora("tiny_dot", 2)}, "'tiny_dot' is listed twice"},
      {std::vector<LoraRequest>(9, Lora("tiny_dot", 1)), "9 LoRAs exceeds the limit of 8"},
      {{stale}, "changed since it was catalogued"},
      // A good LoRA listed before a bad one is not applied either.
      {{Lora("tiny_dot", 1.0f), arch}, "other.safetensors"},
  };
  for (const Case& c : cases) {
    GenerateRequest r = Plain();
    r.loras = c.loras;
    EXPECT_THAT(pipeline_->Generate(r, nullptr, nullptr),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)));
    // The set applied before (tiny_kohya) is untouched, and the pipeline renders on.
    EXPECT_THAT(pipeline_->active_loras(), ::testing::ElementsAre("tiny_kohya"));
    EXPECT_EQ(Render(good), with_good) << c.message;
  }
  EXPECT_EQ(Render(Plain()), before);
}

}  // namespace
}  // namespace zfarm::worker
