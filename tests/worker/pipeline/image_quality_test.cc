// PSNR and SSIM of `zfarm-worker compare` (worker/commands/image_quality.h).

#include "worker/commands/image_quality.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::worker {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;

std::vector<uint8_t> Noise(int w, int h, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<uint8_t> v(static_cast<size_t>(w) * h * 3);
  for (auto& x : v) x = static_cast<uint8_t>(gen() & 0xff);
  return v;
}

TEST(ImageQualityTest, IdenticalPicturesArePerfect) {
  const auto a = Noise(32, 24, 1);
  ASSERT_OK_AND_ASSIGN(double psnr, Psnr(a, a, 32, 24));
  EXPECT_TRUE(std::isinf(psnr));
  ASSERT_OK_AND_ASSIGN(double ssim, Ssim(a, a, 32, 24));
  EXPECT_NEAR(ssim, 1.0, 1e-12);
}

TEST(ImageQualityTest, KnownValues) {
  // Every byte off by 10: MSE 100, PSNR 10 log10(65025 / 100).
  std::vector<uint8_t> a(20 * 16 * 3, 100), b(20 * 16 * 3, 110);
  ASSERT_OK_AND_ASSIGN(double psnr, Psnr(a, b, 20, 16));
  EXPECT_NEAR(psnr, 10 * std::log10(65025.0 / 100.0), 1e-9);
  // Flat pictures: only the luminance term, (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
  const double c1 = std::pow(0.01 * 255, 2);
  ASSERT_OK_AND_ASSIGN(double ssim, Ssim(a, b, 20, 16));
  EXPECT_NEAR(ssim, (2 * 100.0 * 110 + c1) / (100.0 * 100 + 110.0 * 110 + c1), 1e-9);
  // Inverted noise is anti-correlated: SSIM well below zero.
  const auto n = Noise(24, 24, 3);
  std::vector<uint8_t> inv(n.size());
  for (size_t i = 0; i < n.size(); ++i) inv[i] = static_cast<uint8_t>(255 - n[i]);
  ASSERT_OK_AND_ASSIGN(double anti, Ssim(n, inv, 24, 24));
  EXPECT_LT(anti, -0.5);
}

TEST(ImageQualityTest, MoreNoiseScoresLower) {
  const int w = 40, h = 40;
  std::vector<uint8_t> base(w * h * 3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      for (int c = 0; c < 3; ++c) base[(y * w + x) * 3 + c] = static_cast<uint8_t>(3 * x + 2 * y + 40 * c);
    }
  }
  auto noisy = [&](int amp) {
    std::mt19937 gen(9);
    std::vector<uint8_t> v = base;
    for (auto& x : v) x = static_cast<uint8_t>(std::clamp<int>(x + static_cast<int>(gen() % (2 * amp + 1)) - amp, 0, 255));
    return v;
  };
  const auto a = noisy(4), b = noisy(30);
  ASSERT_OK_AND_ASSIGN(double psnr_a, Psnr(base, a, w, h));
  ASSERT_OK_AND_ASSIGN(double psnr_b, Psnr(base, b, w, h));
  ASSERT_OK_AND_ASSIGN(double ssim_a, Ssim(base, a, w, h));
  ASSERT_OK_AND_ASSIGN(double ssim_b, Ssim(base, b, w, h));
  EXPECT_GT(psnr_a, psnr_b + 10);
  EXPECT_GT(ssim_a, ssim_b + 0.1);
  EXPECT_LT(ssim_a, 1.0);
}

TEST(ImageQualityTest, BadSizesAreRefused) {
  const auto a = Noise(8, 8, 1);
  EXPECT_THAT(Ssim(a, a, 8, 8), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("at least 11x11 pixels, got 8x8")));
  EXPECT_THAT(Psnr(a, Noise(8, 4, 1), 8, 8), StatusIs(absl::StatusCode::kInvalidArgument,
                                                      HasSubstr("for 8x8 RGB")));
}

TEST(ImageQualityTest, SideBySidePutsAOnTheLeft) {
  std::vector<uint8_t> a(2 * 2 * 3, 1), b(2 * 2 * 3, 2);
  const std::vector<uint8_t> s = SideBySide(a, b, 2, 2);
  ASSERT_EQ(s.size(), 24u);
  for (int y = 0; y < 2; ++y) {
    for (int x = 0; x < 4; ++x) EXPECT_EQ(s[(y * 4 + x) * 3], x < 2 ? 1 : 2) << x << "," << y;
  }
}

}  // namespace
}  // namespace zfarm::worker
