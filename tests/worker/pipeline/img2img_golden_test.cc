// Parity with diffusers for image-to-image and inpainting: the CPU float32 pipeline on the
// tiny model against goldens of ZImageImg2ImgPipeline / ZImageInpaintPipeline made by
// tests/tools/make_img2img_golden.py (CPU float32; versions in each file's metadata). The
// input pictures are the files diffusers read, decoded here by worker/io/image_decode.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/pipeline/parity_util.h"
#include "tests/worker/pipeline/tiny_pipeline_fixture.h"
#include "worker/io/file_util.h"
#include "worker/io/image_decode.h"
#include "worker/io/safetensors.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

using testing::RelErr;
using testing::WorstLevel;
constexpr auto Picture = testing::GoldenPicture;

const std::string kGoldenDir = std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/golden/";



double MaxAbs(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 1e9;
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) e = std::max(e, std::fabs(double{a[i]} - b[i]));
  return e;
}

class Img2ImgGoldenTest : public TinyPipelineFixture<::testing::TestWithParam<std::string>> {};

TEST_P(Img2ImgGoldenTest, MatchesDiffusers) {
  ASSERT_NE(pipeline_, nullptr);
  ASSERT_OK_AND_ASSIGN(auto f, SafetensorsFile::Open(kGoldenDir + GetParam() + ".safetensors"));
  auto meta = [&](const char* k) { return testing::GoldenMeta(*f, k); };
  auto golden = [&](const char* name) { return testing::GoldenTensor(*f, name); };
  GenerateRequest r;
  ASSERT_TRUE(testing::GoldenRequest(*f, &r));
  r.init_image = Picture(meta("init"));
  ASSERT_FALSE(r.init_image->rgb.empty());
  // The decoded file is what PIL's convert("RGB") gave diffusers (PNG and JPEG).
  EXPECT_EQ(WorstLevel(r.init_image->rgb, golden("init_rgb")), 0);
  const bool inpaint = !meta("mask").empty();
  if (inpaint) {
    r.mask_image = Picture(meta("mask"));
    EXPECT_EQ(WorstLevel(r.mask_image->rgb, golden("mask_rgb")), 0);
  }

  GenerateTrace trace;
  ASSERT_OK_AND_ASSIGN(Image img, pipeline_->Generate(r, nullptr, nullptr, &trace));
  // Preprocessing (Lanczos resize, [-1, 1]; the mask's grey + binarise) is exact.
  EXPECT_EQ(MaxAbs(trace.init_image, golden("init_pre")), 0.0);
  if (inpaint) {
    EXPECT_EQ(MaxAbs(trace.mask, golden("mask_pre")), 0.0);
  }
  EXPECT_EQ(trace.noise, golden("noise"));  // the second draw of the seed's CPU generator
  EXPECT_LT(RelErr(trace.image_latents, golden("image_latents")), 1e-4);
  EXPECT_LT(RelErr(trace.latents0, golden("latents0")), 1e-4);
  const std::vector<float> lat = golden("latents");
  const size_t n = trace.noise.size();
  ASSERT_EQ(lat.size(), trace.latents.size() * n);
  EXPECT_EQ(img.steps_run, static_cast<int>(trace.latents.size()));
  for (size_t k = 0; k < trace.latents.size(); ++k) {
    const std::vector<float> want(lat.begin() + k * n, lat.begin() + (k + 1) * n);
    EXPECT_LT(RelErr(trace.latents[k], want), 1e-4) << "step " << k;
  }
  const int worst = WorstLevel(img.rgb, golden("image_u8"));
  EXPECT_LE(worst, 1);
  std::printf("%s: steps run %d, image latents %.2e, final latents %.2e, image max diff %d\n",
              GetParam().c_str(), img.steps_run, RelErr(trace.image_latents, golden("image_latents")),
              RelErr(trace.latents.back(), std::vector<float>(lat.end() - n, lat.end())), worst);
}

INSTANTIATE_TEST_SUITE_P(Cases, Img2ImgGoldenTest,
                         ::testing::Values("img2img_48x32_s06", "img2img_32x48_s03",
                                           "inpaint_48x48_s07"));

class Img2ImgRequestTest : public TinyPipelineFixture<::testing::Test> {};

TEST_F(Img2ImgRequestTest, BadPicturesAndStrengthsAreRefusedNamingTheField) {
  ASSERT_NE(pipeline_, nullptr);
  GenerateRequest r;
  r.prompt = "a fox";
  r.width = 48;
  r.height = 32;
  r.steps = 2;
  r.init_image = Picture("img2img_48x32_s06_init.png");  // 61x45 -> 48x32
  for (float s : {0.0f, -0.5f, 1.5f}) {
    r.strength = s;
    auto img = pipeline_->Generate(r, nullptr, nullptr);
    ASSERT_FALSE(img.ok());
    EXPECT_EQ(img.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(img.status().message().find("strength must be within (0, 1]"), std::string::npos)
        << img.status();
  }
  r.strength = 0.5f;
  r.width = 64;
  auto size = pipeline_->Generate(r, nullptr, nullptr);
  ASSERT_FALSE(size.ok());
  EXPECT_NE(size.status().message().find("init_image: 61x45 is 48x32 after rounding down"),
            std::string::npos)
      << size.status();
  r.width = 48;
  GenerateRequest mask_only = r;
  mask_only.init_image.reset();
  mask_only.mask_image = Picture("inpaint_48x48_s07_mask.png");
  auto m = pipeline_->Generate(mask_only, nullptr, nullptr);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("mask_image: inpainting needs an init_image"),
            std::string::npos);
  // The refusals left the pipeline as it was: the request renders, with 1 of 2 steps.
  ASSERT_OK_AND_ASSIGN(Image img, pipeline_->Generate(r, nullptr, nullptr));
  EXPECT_EQ(img.steps_run, 1);
  EXPECT_EQ(img.width, 48);
  EXPECT_EQ(img.height, 32);
}

}  // namespace
}  // namespace zfarm::worker
