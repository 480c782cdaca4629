// The built-in canny preprocessor (worker/io/canny.h): edges along a square's border and
// nowhere else, all three channels equal, the thresholds deciding whether a faint edge counts;
// bad sizes and thresholds refused. Without OpenCV in the build: UNIMPLEMENTED.

#include <cstdint>
#include <cstdlib>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "worker/io/canny.h"

namespace zfarm::worker {
namespace {

// w x h RGB: `level` inside [x0, x1) x [y0, y1), black elsewhere.
std::vector<uint8_t> Square(int w, int h, int x0, int y0, int x1, int y1, uint8_t level) {
  std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3, 0);
  for (int y = y0; y < y1; ++y) {
    for (int x = x0; x < x1; ++x) {
      for (int c = 0; c < 3; ++c) rgb[(static_cast<size_t>(y) * w + x) * 3 + c] = level;
    }
  }
  return rgb;
}

TEST(CannyTest, EdgesFollowTheBorderOnly) {
  const int w = 40, h = 32;
  auto edges = CannyRgb(Square(w, h, 10, 8, 30, 24, 255), w, h);
  if (!CannyAvailable()) {
    EXPECT_EQ(edges.status().code(), absl::StatusCode::kUnimplemented);
    GTEST_SKIP() << "built without OpenCV";
  }
  ASSERT_OK(edges.status());
  ASSERT_EQ(edges->size(), static_cast<size_t>(w) * h * 3);
  int on = 0;
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const uint8_t* p = &(*edges)[(static_cast<size_t>(y) * w + x) * 3];
      EXPECT_TRUE(p[0] == p[1] && p[1] == p[2]);
      EXPECT_TRUE(p[0] == 0 || p[0] == 255);
      if (p[0] == 0) continue;
      ++on;
      // Within one pixel of the square's border.
      const bool near_x = (std::abs(x - 10) <= 1 || std::abs(x - 29) <= 1) && y >= 7 && y <= 24;
      const bool near_y = (std::abs(y - 8) <= 1 || std::abs(y - 23) <= 1) && x >= 9 && x <= 30;
      EXPECT_TRUE(near_x || near_y) << x << "," << y;
    }
  }
  // Most of the 2 * (20 + 16) border pixels are edges.
  EXPECT_GE(on, 60);
  // A faint square (level 20: gradient below the low threshold) has no edges at all.
  auto faint = CannyRgb(Square(w, h, 10, 8, 30, 24, 20), w, h);
  ASSERT_OK(faint.status());
  for (uint8_t v : *faint) ASSERT_EQ(v, 0);
  // ...with lower thresholds it has.
  auto low = CannyRgb(Square(w, h, 10, 8, 30, 24, 20), w, h, 10, 20);
  ASSERT_OK(low.status());
  int low_on = 0;
  for (uint8_t v : *low) low_on += v != 0;
  EXPECT_GT(low_on, 0);
}

TEST(CannyTest, BadInputIsRefused) {
  EXPECT_EQ(CannyRgb(std::vector<uint8_t>(10), 4, 4).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CannyRgb(std::vector<uint8_t>(48), 4, 4, 200, 100).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace zfarm::worker
