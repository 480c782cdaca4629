#include "worker/sampling/sampling.h"

#include <cmath>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::worker::sampling {
namespace {

using ::zfarm::testing::StatusIs;

// diffusers' sigmas for 8 steps, shift 3 (FlowMatchEulerDiscreteScheduler).
constexpr float kSigma8[] = {1.0000000f, 0.9545454f, 0.9000000f, 0.8333333f,
                             0.7500000f, 0.6428571f, 0.5000000f, 0.3000000f};
constexpr float kTin8[] = {0.0000000f, 0.0454546f, 0.1000000f, 0.1666667f,
                           0.2500000f, 0.3571429f, 0.5000000f, 0.7000000f};
constexpr float kDt8[] = {-0.0454546f, -0.0545455f, -0.0666667f, -0.0833333f,
                          -0.1071429f, -0.1428571f, -0.2000000f, -0.3000000f};

TEST(FlowMatchSigmasTest, MatchesSpecTableForTurbo) {
  ASSERT_OK_AND_ASSIGN(std::vector<float> s, FlowMatchSigmas(8, SchedulerConfig{}));
  ASSERT_EQ(s.size(), 9u);
  for (int k = 0; k < 8; ++k) {
    EXPECT_NEAR(s[k], kSigma8[k], 1e-7) << "k=" << k;
    EXPECT_NEAR(TimestepInput(s[k]), kTin8[k], 1.5e-7) << "k=" << k;
    EXPECT_NEAR(s[k + 1] - s[k], kDt8[k], 1.5e-7) << "k=" << k;
  }
  EXPECT_EQ(s[0], 1.0f);
  EXPECT_EQ(s[8], 0.0f);
  EXPECT_EQ(TimestepInput(s[0]), 0.0f);
}

TEST(FlowMatchSigmasTest, Float32OpSequence) {
  // sigma = (3*s)/(1+2*s) with float32 s and float32 arithmetic, s = float(linspace).
  ASSERT_OK_AND_ASSIGN(std::vector<float> s, FlowMatchSigmas(8, SchedulerConfig{}));
  // torch.linspace(1, 0.125, 8)[1] in float32: start + step * 1.
  const float step = (0.125f - 1.0f) / 7.0f;
  const float base = 1.0f + step;
  EXPECT_EQ(s[1], (3.0f * base) / (1.0f + 2.0f * base));
  // t_in is (1000 - 1000*sigma)/1000 in float32, not 1 - sigma.
  const float t = s[1] * 1000.0f;
  EXPECT_EQ(TimestepInput(s[1]), (1000.0f - t) / 1000.0f);
}

TEST(FlowMatchSigmasTest, AllStepCountsAreMonotoneAndEndAtZero) {
  for (int n = 1; n <= kMaxSteps; ++n) {
    ASSERT_OK_AND_ASSIGN(std::vector<float> s, FlowMatchSigmas(n, SchedulerConfig{}));
    ASSERT_EQ(s.size(), static_cast<size_t>(n + 1));
    EXPECT_EQ(s.front(), 1.0f) << n;
    EXPECT_EQ(s.back(), 0.0f) << n;
    for (int k = 0; k < n; ++k) EXPECT_GT(s[k], s[k + 1]) << "n=" << n << " k=" << k;
    // Last non-zero sigma is shift(1/n).
    const float last = 1.0f / n;
    EXPECT_NEAR(s[n - 1], 3.0f * last / (1.0f + 2.0f * last), 1e-6) << n;
  }
}

TEST(FlowMatchSigmasTest, OneStepIsPureNoiseToZero) {
  ASSERT_OK_AND_ASSIGN(std::vector<float> s, FlowMatchSigmas(1, SchedulerConfig{}));
  EXPECT_THAT(s, ::testing::ElementsAre(1.0f, 0.0f));
}

TEST(FlowMatchSigmasTest, ShiftComesFromConfig) {
  SchedulerConfig cfg;
  cfg.shift = 1.0;
  ASSERT_OK_AND_ASSIGN(std::vector<float> s, FlowMatchSigmas(4, cfg));
  EXPECT_THAT(s, ::testing::ElementsAre(1.0f, 0.75f, 0.5f, 0.25f, 0.0f));
}

TEST(FlowMatchSigmasTest, RejectsBadInput) {
  EXPECT_THAT(FlowMatchSigmas(0, SchedulerConfig{}),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("steps")));
  EXPECT_THAT(FlowMatchSigmas(kMaxSteps + 1, SchedulerConfig{}),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("1..50")));
  SchedulerConfig dyn;
  dyn.use_dynamic_shifting = true;
  EXPECT_THAT(FlowMatchSigmas(8, dyn),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("dynamic")));
  SchedulerConfig neg;
  neg.shift = 0;
  EXPECT_THAT(FlowMatchSigmas(8, neg), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
}

TEST(EulerStepTest, AddsDtTimesVelocity) {
  std::vector<float> x = {1.0f, -2.0f, 0.5f};
  const std::vector<float> v = {2.0f, 4.0f, -1.0f};
  EulerStep(absl::MakeSpan(x), v, 0.75f, 0.5f);
  EXPECT_THAT(x, ::testing::ElementsAre(0.5f, -3.0f, 0.75f));
}

TEST(EulerStepTest, RecoversDataForExactVelocity) {
  // x_sigma = (1-sigma) x0 + sigma eps; dx/dsigma = eps - x0 is exact for a straight path.
  const float x0 = 0.3f, eps = -1.2f;
  ASSERT_OK_AND_ASSIGN(std::vector<float> s, FlowMatchSigmas(8, SchedulerConfig{}));
  std::vector<float> x = {eps};
  for (int k = 0; k < 8; ++k) {
    const std::vector<float> v = {eps - x0};
    EulerStep(absl::MakeSpan(x), v, s[k], s[k + 1]);
  }
  EXPECT_NEAR(x[0], x0, 1e-6);
}

// The per-value formulas the pipeline runs on tensors, here on numbers.
TEST(SamplerFormulaTest, VelocityAndEulerUpdate) {
  EXPECT_EQ(Velocity(3.0f), -3.0f);
  // 1 + (0.5 - 0.75) * 2
  EXPECT_EQ(EulerUpdate(1.0f, Velocity(-2.0f), 0.75f, 0.5f), 0.5f);
  EXPECT_EQ(EulerUpdate(1.0f, 8.0f, 0.5f, 0.5f), 1.0f);  // no step
}

TEST(SamplerFormulaTest, ScaleNoiseMovesAlongTheStraightPath) {
  EXPECT_EQ(ScaleNoise(2.0f, 10.0f, 0.25f), 4.0f);  // 10 * 0.25 + 2 * 0.75
  EXPECT_EQ(ScaleNoise(2.0f, 10.0f, 1.0f), 10.0f);  // pure noise
  EXPECT_EQ(ScaleNoise(2.0f, 10.0f, 0.0f), 2.0f);   // the clean latents
}

TEST(SamplerFormulaTest, InpaintBlendKeepsOutsideTheMask) {
  EXPECT_EQ(InpaintBlend(5.0f, 7.0f, 1.0f), 7.0f);  // white: repainted
  EXPECT_EQ(InpaintBlend(5.0f, 7.0f, 0.0f), 5.0f);  // black: kept
}

TEST(SamplerFormulaTest, CfgGuideAndNormalizationScale) {
  EXPECT_EQ(CfgGuide(1.0f, 0.0f, 2.0f), 3.0f);
  EXPECT_EQ(CfgGuide(2.0f, 3.0f, 0.0f), 2.0f);
  EXPECT_EQ(CfgNormalizationScale(2.0f, 1.0f, 4.0f), 0.5f);  // 1 * 2 / 4
  EXPECT_EQ(CfgNormalizationScale(1.0f, 5.0f, 3.0f), 1.0f);  // below the cap: unchanged
  // Zero norms (0 / 0) leave the prediction as it is.
  EXPECT_EQ(CfgNormalizationScale(1.0f, 0.0f, 0.0f), 1.0f);
  EXPECT_EQ(CfgNormalizationFactor(1.0f, 0.0f, 0.0f), 1.0f);
}

TEST(CfgTest, GuidanceOffAndTruncation) {
  EXPECT_EQ(GuidanceForStep(CfgOptions{}, 0.5f), 0.0f);
  CfgOptions o;
  o.guidance = 4.0f;
  EXPECT_EQ(GuidanceForStep(o, 0.9f), 4.0f);  // truncation 1 keeps all steps
  o.truncation = 0.5f;
  EXPECT_EQ(GuidanceForStep(o, 0.5f), 4.0f);
  EXPECT_EQ(GuidanceForStep(o, 0.6f), 0.0f);
  EXPECT_FALSE(CfgActive(o, 0.6f));
  EXPECT_TRUE(CfgActive(o, 0.1f));
  o.truncation = 1.5f;  // > 1 disables truncation
  EXPECT_EQ(GuidanceForStep(o, 1.0f), 4.0f);
}

TEST(CfgTest, CombineIsPosPlusGTimesDifference) {
  const std::vector<float> pos = {1.0f, 2.0f};
  const std::vector<float> neg = {0.0f, 3.0f};
  EXPECT_THAT(CfgCombine(pos, neg, 2.0f, 0.0f), ::testing::ElementsAre(3.0f, 0.0f));
  EXPECT_THAT(CfgCombine(pos, neg, 0.0f, 0.0f), ::testing::ElementsAre(1.0f, 2.0f));
}

TEST(CfgTest, NormalizationCapsTheNorm) {
  const std::vector<float> pos = {3.0f, 4.0f};  // norm 5
  const std::vector<float> neg = {0.0f, 0.0f};
  // pred = 3*pos, norm 15; cap at 1.0 * 5 -> pred == pos.
  std::vector<float> p = CfgCombine(pos, neg, 2.0f, 1.0f);
  EXPECT_NEAR(p[0], 3.0f, 1e-5);
  EXPECT_NEAR(p[1], 4.0f, 1e-5);
  // A generous cap leaves it unchanged.
  p = CfgCombine(pos, neg, 2.0f, 10.0f);
  EXPECT_FLOAT_EQ(p[0], 9.0f);
  EXPECT_EQ(CfgNormalizationFactor(0.0f, 1.0f, 100.0f), 1.0f);
  EXPECT_FLOAT_EQ(CfgNormalizationFactor(2.0f, 1.0f, 4.0f), 0.5f);
}

TEST(ImageToImageStartTest, TrimsTheScheduleAsGetTimestepsDoes) {
  // t_start = int(N - N*strength) in Python doubles.
  EXPECT_EQ(*ImageToImageStart(4, 0.6f), 1);  // 4 - 2.4 = 1.6
  EXPECT_EQ(*ImageToImageStart(4, 0.3f), 2);  // 4 - 1.2 = 2.8
  EXPECT_EQ(*ImageToImageStart(4, 0.7f), 1);
  EXPECT_EQ(*ImageToImageStart(8, 0.5f), 4);
  EXPECT_EQ(*ImageToImageStart(8, 1.0f), 0);  // every step runs
  EXPECT_EQ(*ImageToImageStart(1, 0.01f), 0);  // at least one step always runs
  EXPECT_EQ(*ImageToImageStart(50, 0.02f), 49);
  // 0.1f is 0.10000000149 as a float: 10 * that = 1.0000000149 would give 8; the
  // decimal the user typed (0.1) gives 10 - 1.0 = 9, as diffusers computes.
  EXPECT_EQ(*ImageToImageStart(10, 0.1f), 9);
}

TEST(ImageToImageStartTest, RefusesStrengthOutsideTheRange) {
  for (float s : {0.0f, -0.1f, 1.01f, std::nanf("")}) {
    auto r = ImageToImageStart(8, s);
    ASSERT_FALSE(r.ok()) << s;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("strength must be within (0, 1]"), std::string::npos);
  }
  EXPECT_FALSE(ImageToImageStart(0, 0.5f).ok());
}

}  // namespace
}  // namespace zfarm::worker::sampling
