#include "worker/pipeline/pipeline.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/model/tiny_folder.h"
#include "tests/worker/pipeline/tiny_pipeline_fixture.h"
#include "worker/io/weights_cache.h"

namespace zfarm::worker {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::zfarm::testing::StatusIs;

TEST(InitialNoiseTest, MatchesTorchCpuGenerator) {
  // Reference values: torch.randn([1,16,12,16], generator=torch.Generator("cpu").manual_seed(42)).
  ASSERT_OK_AND_ASSIGN(std::vector<float> n, InitialNoise(42, {1, 16, 12, 16}, "cpu"));
  ASSERT_EQ(n.size(), 3072u);
  EXPECT_FLOAT_EQ(n[0], 1.9269153f);
  EXPECT_FLOAT_EQ(n[1], 1.4872841f);
  EXPECT_FLOAT_EQ(n[2], 0.9007172f);
  EXPECT_NEAR(std::accumulate(n.begin(), n.end(), 0.0), 15.915154, 1e-3);
}

TEST(InitialNoiseTest, BadDevice) {
  EXPECT_THAT(InitialNoise(1, {1}, "gpu0"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cuda:N")));
}

TEST(ToRgb8Test, RoundsHalfToEvenAndClamps) {
  // Inputs whose (x/2 + 0.5) * 255 is exactly 124.5 / 125.5 in float32 (found by search).
  const float x124 = -0.0235294104f, x125 = -0.0156862736f;
  ASSERT_EQ((x124 / 2 + 0.5f) * 255.0f, 124.5f);
  ASSERT_EQ((x125 / 2 + 0.5f) * 255.0f, 125.5f);
  const float v[3] = {x124, x125, 3.0f};
  EXPECT_THAT(ToRgb8(v, 1, 1), ::testing::ElementsAre(124, 126, 255));  // not 125, 126
  const float w[3] = {-1.0f, 0.0f, -7.0f};
  EXPECT_THAT(ToRgb8(w, 1, 1), ::testing::ElementsAre(0, 128, 0));  // 127.5 -> 128 (even)
}

class PipelineTest : public TinyPipelineFixture<::testing::Test> {
 protected:
  static GenerateRequest Small() {
    GenerateRequest r;
    r.prompt = "a red fox in the snow";
    r.width = 48;  // 3 x 2 patches... 6x4 latent, not a multiple of 32 tokens
    r.height = 32;
    r.steps = 2;
    r.seed = 42;
    return r;
  }
};

TEST_F(PipelineTest, GeneratesDeterministicImages) {
  ASSERT_NE(pipeline_, nullptr);
  std::vector<int> steps;
  GenerateTrace trace;
  ASSERT_OK_AND_ASSIGN(Image a, pipeline_->Generate(
                                    Small(),
                                    [&](int s, int n) {
                                      steps.push_back(s);
                                      EXPECT_EQ(n, 2);
                                    },
                                    nullptr, &trace));
  EXPECT_EQ(a.width, 48);
  EXPECT_EQ(a.height, 32);
  EXPECT_EQ(a.rgb.size(), 48u * 32 * 3);
  EXPECT_THAT(steps, ::testing::ElementsAre(1, 2));
  EXPECT_EQ(a.prompt_tokens, 8 + 6);  // template (8) + "a red fox in the snow" (6)
  EXPECT_FALSE(a.prompt_truncated);
  EXPECT_EQ(trace.ids.front(), 151644);
  EXPECT_EQ(trace.latents.size(), 2u);
  EXPECT_EQ(trace.noise.size(), 16u * 4 * 6);
  ASSERT_OK_AND_ASSIGN(Image b, pipeline_->Generate(Small(), nullptr, nullptr));
  EXPECT_EQ(a.rgb, b.rgb);
  GenerateRequest other = Small();
  other.seed = 43;
  ASSERT_OK_AND_ASSIGN(Image c, pipeline_->Generate(other, nullptr, nullptr));
  EXPECT_NE(a.rgb, c.rgb);
}

TEST_F(PipelineTest, FirstStepLatentsFollowEuler) {
  ASSERT_NE(pipeline_, nullptr);
  GenerateRequest r = Small();
  r.steps = 1;  // sigma 1 -> 0: x1 = noise - DiT(noise) = x0 estimate
  GenerateTrace trace;
  ASSERT_OK(pipeline_->Generate(r, nullptr, nullptr, &trace).status());
  ASSERT_EQ(trace.latents.size(), 1u);
  EXPECT_NE(trace.latents[0], trace.noise);
}

TEST_F(PipelineTest, GuidanceRunsTheNegativeBranch) {
  ASSERT_NE(pipeline_, nullptr);
  GenerateRequest r = Small();
  ASSERT_OK_AND_ASSIGN(Image plain, pipeline_->Generate(r, nullptr, nullptr));
  r.guidance = 3.0f;
  r.negative_prompt = "blurry";
  ASSERT_OK_AND_ASSIGN(Image cfg, pipeline_->Generate(r, nullptr, nullptr));
  EXPECT_NE(plain.rgb, cfg.rgb);
  // Truncation 0 disables guidance on every step (t_in > 0 after the first... and at 0).
  r.cfg_truncation = -0.5f;
  ASSERT_OK_AND_ASSIGN(Image trunc, pipeline_->Generate(r, nullptr, nullptr));
  EXPECT_EQ(plain.rgb, trunc.rgb);
}

TEST_F(PipelineTest, RejectsBadSizesAndSteps) {
  ASSERT_NE(pipeline_, nullptr);
  GenerateRequest r = Small();
  r.width = 40;
  EXPECT_THAT(pipeline_->Generate(r, nullptr, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("multiples of 16")));
  r = Small();
  r.height = 8208;
  EXPECT_THAT(pipeline_->Generate(r, nullptr, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("8192")));
  r = Small();
  r.steps = 0;
  EXPECT_THAT(pipeline_->Generate(r, nullptr, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("steps")));
}

TEST_F(PipelineTest, CancelStopsAtAStepBoundary) {
  ASSERT_NE(pipeline_, nullptr);
  CancelToken token;
  GenerateRequest r = Small();
  r.steps = 4;
  int seen = 0;
  auto result = pipeline_->Generate(
      r,
      [&](int s, int) {
        seen = s;
        if (s == 2) token.Cancel();
      },
      &token);
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kCancelled, HasSubstr("step 3")));
  EXPECT_EQ(seen, 2);
  // Still usable.
  EXPECT_OK(pipeline_->Generate(Small(), nullptr, nullptr).status());
}

TEST_F(PipelineTest, LongPromptIsTruncatedAndReported) {
  ASSERT_NE(pipeline_, nullptr);
  GenerateRequest r = Small();
  r.prompt.clear();
  for (int i = 0; i < 600; ++i) r.prompt += " fox";
  ASSERT_OK_AND_ASSIGN(Image img, pipeline_->Generate(r, nullptr, nullptr));
  EXPECT_TRUE(img.prompt_truncated);
  EXPECT_EQ(img.prompt_tokens, 512);
  EXPECT_GT(img.untruncated_prompt_tokens, 512);
}

TEST(PipelineCreateTest, MissingFolderAndBadOptions) {
  PipelineOptions o;
  o.model_dir = "/nonexistent/zfarm-model";
  EXPECT_FALSE(Pipeline::Create(o).ok());
  o.model_dir = testing::MakeTinyFolder();
  o.device = "tpu";
  EXPECT_THAT(Pipeline::Create(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tpu")));
  testing::RemoveTinyFolder();
}


// The compute dtype is a field the worker reports as is (its hello's dtype), resolved
// from the options for the device: auto is float32 on the CPU, bf16 when asked for.
TEST(PipelineCreateTest, ComputeDtypeIsResolvedAndNamed) {
  PipelineOptions o;
  o.random_weights = true;
  o.config = SmallRandomConfig();
  ASSERT_OK_AND_ASSIGN(auto auto_cpu, Pipeline::Create(o));
  EXPECT_EQ(auto_cpu->compute_dtype(), PipelineOptions::Precision::kFloat32);
  EXPECT_STREQ(PrecisionName(auto_cpu->compute_dtype()), "float32");
  o.precision = PipelineOptions::Precision::kBFloat16;
  ASSERT_OK_AND_ASSIGN(auto bf16, Pipeline::Create(o));
  EXPECT_EQ(bf16->compute_dtype(), PipelineOptions::Precision::kBFloat16);
  EXPECT_STREQ(PrecisionName(bf16->compute_dtype()), "bfloat16");
  EXPECT_STREQ(PrecisionName(PipelineOptions::Precision::kAuto), "auto");
}

TEST(PipelineCreateTest, RandomWeightsWithTilingMatchShapes) {
  PipelineOptions o;
  o.random_weights = true;
  o.config = SmallRandomConfig();
  o.vae_tiling = true;
  o.vae_tile_latent = 8;
  o.vae_tile_overlap = 2;
  ASSERT_OK_AND_ASSIGN(auto p, Pipeline::Create(o));
  GenerateRequest r;
  r.prompt_ids = {1, 2, 3};
  r.width = 160;  // 20 latent px: 3 tiles per row
  r.height = 96;
  r.steps = 2;
  ASSERT_OK_AND_ASSIGN(Image img, p->Generate(r, nullptr, nullptr));
  EXPECT_EQ(img.rgb.size(), 160u * 96 * 3);
  // No tokenizer: a prompt without ids is refused.
  GenerateRequest t;
  t.prompt = "x";
  t.width = t.height = 32;
  EXPECT_THAT(p->Generate(t, nullptr, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("prompt_ids")));
}

// The bf16 weights cache (zfarm-worker cache-weights / --weights-cache): in bf16
// the pipeline renders exactly what it renders from the float32 source; a
// damaged copy falls back to the source; float32 runs never use it; a changed
// source gets a new cache folder.
TEST(WeightsCacheTest, Bf16CacheRendersLikeTheSourceAndFallsBack) {
  const std::string dir = testing::MakeTinyFolder();
  ASSERT_FALSE(dir.empty());
  const std::string cache = dir + "/../weights-cache";
  std::filesystem::remove_all(cache);
  ASSERT_OK_AND_ASSIGN(bool useful, Bf16CacheUseful(dir + "/transformer"));
  EXPECT_TRUE(useful);  // the tiny DiT is float32, like the real one
  ASSERT_OK_AND_ASSIGN(std::string cached, WriteBf16Cache(cache, dir + "/transformer"));
  ASSERT_OK_AND_ASSIGN(bool cache_useful, Bf16CacheUseful(cached));
  EXPECT_FALSE(cache_useful);

  GenerateRequest r;
  r.prompt = "a red fox in the snow";
  r.width = 48;
  r.height = 32;
  r.steps = 2;
  r.seed = 42;
  auto render = [&](PipelineOptions o) -> std::pair<std::string, std::vector<uint8_t>> {
    o.model_dir = dir;
    auto p = Pipeline::Create(o);
    EXPECT_OK(p.status());
    if (!p.ok()) return {};
    auto img = (*p)->Generate(r, nullptr, nullptr);
    EXPECT_OK(img.status());
    return {(*p)->Describe(), img.ok() ? img->rgb : std::vector<uint8_t>()};
  };
  PipelineOptions bf16;
  bf16.precision = PipelineOptions::Precision::kBFloat16;
  const auto source = render(bf16);
  EXPECT_THAT(source.first, Not(HasSubstr("weights cache")));
  bf16.weights_cache_dir = cache;
  const auto from_cache = render(bf16);
  EXPECT_THAT(from_cache.first, HasSubstr("DiT from the bf16 weights cache"));
  ASSERT_FALSE(source.second.empty());
  EXPECT_EQ(from_cache.second, source.second);

  // float32 compute reads the source, never the bf16 copy.
  PipelineOptions fp32;
  fp32.weights_cache_dir = cache;
  EXPECT_THAT(render(fp32).first, Not(HasSubstr("weights cache")));

  // A damaged copy (cut short) is not used: the source is, and the image is the same.
  std::filesystem::resize_file(cached + "/model.safetensors", 1000);
  const auto fallback = render(bf16);
  EXPECT_THAT(fallback.first, Not(HasSubstr("weights cache")));
  EXPECT_EQ(fallback.second, source.second);

  // A changed source file (here only its time) names another cache folder.
  const auto shard = dir + "/transformer/config.json";
  std::filesystem::last_write_time(
      shard, std::filesystem::last_write_time(shard) + std::chrono::seconds(5));
  ASSERT_OK_AND_ASSIGN(std::string other, Bf16CacheDir(cache, dir + "/transformer"));
  EXPECT_NE(other, cached);
  std::filesystem::remove_all(cache);
}

}  // namespace
}  // namespace zfarm::worker
