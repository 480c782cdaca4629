#include "worker/io/png.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "worker/io/image_file.h"

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

TEST(PngTest, ImageToImageParametersRecordStrengthAndInputHashes) {
  ImageParameters p;
  p.prompt = "a cat";
  p.seed = 7;
  p.width = 256;
  p.height = 256;
  p.strength = 0.6f;
  p.init_image_sha256 = std::string(64, 'a');
  EXPECT_EQ(A1111Parameters(p),
            "a cat\nSteps: 8, Sampler: Euler, CFG scale: 0, Seed: 7, Size: 256x256, Model: "
            "z-image-turbo, Denoising strength: 0.6, Init image sha256: " + std::string(64, 'a'));
  p.mask_sha256 = std::string(64, 'b');
  EXPECT_NE(A1111Parameters(p).find(", Mask sha256: " + std::string(64, 'b')), std::string::npos);
  const std::string json = ParametersJson(p);
  EXPECT_NE(json.find("\"strength\":0.6,"), std::string::npos) << json;
  EXPECT_NE(json.find("\"init_image_sha256\":\"" + std::string(64, 'a')), std::string::npos);
  EXPECT_NE(json.find("\"mask_sha256\":\"" + std::string(64, 'b')), std::string::npos);
  // Text-to-image keeps neither.
  EXPECT_EQ(ParametersJson(ImageParameters{}).find("strength"), std::string::npos);
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
  ASSERT_OK(WriteImage(path, rgb, p, ImageFormat::kPng, 0));
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
  EXPECT_THAT(WriteImage("/nonexistent-dir/x.png", {1, 2, 3}, p, ImageFormat::kPng, 0),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent-dir")));
}

TEST(PngTest, EveryCompressionOptionRoundTrips) {
  // A smooth gradient with some texture: every filter and level must decode to
  // the same pixels and keep the text chunks.
  const int w = 64, h = 48;
  std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      uint8_t* px = &rgb[(static_cast<size_t>(y) * w + x) * 3];
      px[0] = static_cast<uint8_t>(x * 4);
      px[1] = static_cast<uint8_t>(y * 5 + (x * y) % 7);
      px[2] = static_cast<uint8_t>((x ^ y) * 3);
    }
  }
  using F = PngOptions::Filter;
  size_t stored_size = 0, best_size = 0;
  for (int level : {-1, 0, 1, 3, 9}) {
    for (F f : {F::kAdaptive, F::kNone, F::kSub, F::kUp, F::kAverage, F::kPaeth}) {
      for (bool rle : {false, true}) {
        PngOptions o;
        o.zlib_level = level;
        o.filter = f;
        o.rle = rle;
        ASSERT_OK_AND_ASSIGN(std::string bytes, EncodePng(rgb, w, h, {{"parameters", "p"}}, o));
        ASSERT_OK_AND_ASSIGN(DecodedPng d, DecodePng(bytes));
        EXPECT_EQ(d.rgb, rgb) << "level " << level << " filter " << static_cast<int>(f);
        ASSERT_EQ(d.text.size(), 1u);
        EXPECT_EQ(d.text[0].second, "p");
        if (level == 0 && f == F::kNone && !rle) stored_size = bytes.size();
        if (level == 9 && f == F::kAdaptive && !rle) best_size = bytes.size();
      }
    }
  }
  // Level 0 stores the rows uncompressed (at least the pixel bytes); level 9 compresses.
  EXPECT_GE(stored_size, rgb.size());
  EXPECT_LT(best_size, stored_size / 2);
}

TEST(PngTest, ZlibLevelOutOfRangeIsInvalid) {
  PngOptions o;
  o.zlib_level = 10;
  EXPECT_THAT(EncodePng(std::vector<uint8_t>(12), 2, 2, {}, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("zlib_level")));
}

}  // namespace
}  // namespace zfarm::worker
