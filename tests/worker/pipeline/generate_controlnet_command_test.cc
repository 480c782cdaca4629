// `zfarm-worker generate` with the ControlNet flags on the tiny model and the tiny Union 2.1
// ControlNet: --controlnet (the folder and the single file), --control-image and
// --control-scale write a PNG that records the ControlNet, the control picture's sha256 and the
// scale, and equals diffusers' golden; ControlNet inpainting takes --init-image and --mask;
// bad flags and pictures are refused naming them.

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/files.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"
#include "tests/worker/pipeline/parity_util.h"
#include "worker/io/file_util.h"
#include "worker/io/png.h"
#include "worker/io/safetensors.h"

namespace zfarm::worker {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::RunCommand;

const std::string kTestdata = std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/";
const std::string kGolden = kTestdata + "golden/";

std::string Generate(const std::string& flags) {
  return std::string(ZFARM_WORKER_BIN) + " generate --model " + ZFARM_TINY_MODEL_DIR +
         " --seed 7 --steps 3 " + flags + " 2>&1";
}

TEST(GenerateControlNetCommandTest, ControlImageAndScaleRenderDiffusersImage) {
  const std::string out = ::testing::TempDir() + "/controlnet_command_out.png";
  const std::string control = kGolden + "control21_32x48_control.png";
  // The folder, and its weights file on its own (layout from the keys).
  for (const std::string& cn : {kTestdata + "controlnet/2.1",
                               kTestdata + "controlnet/2.1/diffusion_pytorch_model.safetensors"}) {
    const auto r = RunCommand(Generate("--prompt 'a lighthouse at dusk' --width 32 --height 48 "
                                       "--controlnet " + cn + " --control-image " + control +
                                       " --control-scale 1.3 --out " + out));
    ASSERT_EQ(r.exit_code, 0) << r.out;
    EXPECT_THAT(r.out, HasSubstr(" x1.3 on 32x48 control picture"));
    ASSERT_OK_AND_ASSIGN(std::string bytes, ReadSmallFile(out, 1 << 20));
    ASSERT_OK_AND_ASSIGN(DecodedPng png, DecodePng(bytes));
    ASSERT_OK_AND_ASSIGN(auto golden, SafetensorsFile::Open(kGolden + "control21_32x48.safetensors"));
    EXPECT_LE(testing::WorstLevel(png.rgb, testing::GoldenTensor(*golden, "image_u8")), 1);
    ASSERT_OK_AND_ASSIGN(std::string sha, base::Sha256OfFile(control));
    ASSERT_FALSE(png.text.empty());
    EXPECT_THAT(png.text[0].second,
                HasSubstr(", ControlNet: " + std::string(cn.back() == '1' ? "2.1" : "diffusion_pytorch_model") +
                          ", Control image sha256: " + sha + ", Control weight: 1.3"));
  }
}

TEST(GenerateControlNetCommandTest, InpaintingAndBadFlags) {
  const std::string cn = kTestdata + "controlnet/2.1";
  const std::string out = ::testing::TempDir() + "/controlnet_inpaint_out.png";
  auto r = RunCommand(Generate("--prompt 'a cat on a sofa' --controlnet " + cn +
                               " --control-image " + kGolden + "control21_inpaint_48x48_control.png" +
                               " --init-image " + kGolden + "control21_inpaint_48x48_init.png" +
                               " --mask " + kGolden + "control21_inpaint_48x48_mask.png" +
                               " --control-scale 0.9 --out " + out));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr(", inpainting"));
  r = RunCommand(Generate("--prompt x --control-image " + kGolden +
                          "control21_32x48_control.png --out /dev/null"));
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--controlnet and --control-image go together"));
  r = RunCommand(Generate("--prompt x --controlnet " + cn + " --control-image " + kGolden +
                          "control21_32x48_control.png --control-scale 3 --width 32 --height 48 "
                          "--out /dev/null"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("control.conditioning_scale must be within [0, 2], got 3"));
  const std::string junk = ::testing::TempDir() + "/controlnet_junk.png";
  ASSERT_OK(base::WriteFileAtomically(junk, "not a picture"));
  r = RunCommand(Generate("--prompt x --controlnet " + cn + " --control-image " + junk +
                          " --out /dev/null"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--control-image " + junk + ": not a PNG or JPEG image"));
  r = RunCommand(Generate("--prompt x --controlnet " + kTestdata + "golden --control-image " +
                          kGolden + "control21_32x48_control.png --out /dev/null"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("config.json"));
}

}  // namespace
}  // namespace zfarm::worker
