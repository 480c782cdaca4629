#include "worker/pipeline/png.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::worker {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;

TEST(PngTest, A1111ParametersFormat) {
  ImageParameters p;
  p.prompt = "a cat";
  p.seed = 42;
  p.width = 1024;
  p.height = 768;
  EXPECT_EQ(A1111Parameters(p),
            "a cat\nSteps: 8, Sampler: Euler, CFG scale: 0, Seed: 42, Size: 1024x768, Model: "
            "z-image-turbo");
  p.negative_prompt = "blurry";
  p.guidance = 2.5f;
  EXPECT_EQ(A1111Parameters(p),
            "a cat\nNegative prompt: blurry\nSteps: 8, Sampler: Euler, CFG scale: 2.5, Seed: 42, "
            "Size: 1024x768, Model: z-image-turbo");
}

TEST(PngTest, RoundTripWithTextChunks) {
  std::vector<uint8_t> rgb(5 * 3 * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<uint8_t>(i * 7);
  ImageParameters p;
  p.prompt = "ein Fuchs im Schnee — ünïcode";
  p.width = 5;
  p.height = 3;
  p.seed = 7;
  const std::string path = std::string(::testing::TempDir()) + "/png_test.png";
  ASSERT_OK(WritePng(path, rgb, p));
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  ASSERT_OK_AND_ASSIGN(DecodedPng d, DecodePng(ss.str()));
  EXPECT_EQ(d.width, 5);
  EXPECT_EQ(d.height, 3);
  EXPECT_EQ(d.rgb, rgb);
  ASSERT_EQ(d.text.size(), 2u);
  EXPECT_EQ(d.text[0].first, "parameters");
  EXPECT_EQ(d.text[0].second, A1111Parameters(p));
  EXPECT_EQ(d.text[1].first, "zfarm");
  EXPECT_THAT(d.text[1].second, HasSubstr("\"seed\":7"));
  EXPECT_THAT(d.text[1].second, HasSubstr("ünïcode"));
  // No temp file is left behind.
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(::testing::TempDir())) {
    if (e.path().string().find("png_test.png.tmp") != std::string::npos) ++files;
  }
  EXPECT_EQ(files, 0);
  std::filesystem::remove(path);
}

TEST(PngTest, SizeMismatchIsInvalid) {
  EXPECT_THAT(EncodePng(std::vector<uint8_t>(10), 2, 2, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("2x2")));
  ImageParameters p;
  p.width = 1;
  p.height = 1;
  EXPECT_THAT(WritePng("/nonexistent-dir/x.png", {1, 2, 3}, p),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("/nonexistent-dir")));
}

}  // namespace
}  // namespace zfarm::worker
