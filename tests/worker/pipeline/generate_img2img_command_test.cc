// `zfarm-worker generate` with the image-to-image flags on the tiny model: --init-image,
// --strength, --mask and --lora FILE:SCALE together write a PNG of the picture's size that
// records the strength, both input hashes and the LoRA; a bad picture exits 1 naming it.

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/files.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"
#include "worker/io/file_util.h"
#include "worker/io/png.h"

namespace zfarm::worker {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::RunCommand;

const std::string kGolden = std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/golden/";

TEST(GenerateImg2ImgCommandTest, InitImageStrengthMaskAndLoraTogether) {
  const std::string out = ::testing::TempDir() + "/img2img_command_out.png";
  const std::string init = kGolden + "inpaint_48x48_s07_init.png";
  const std::string mask = kGolden + "inpaint_48x48_s07_mask.png";  // 40x44: resized to 48x48
  const std::string lora = std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/lora/tiny_diffusers.safetensors";
  const auto r = RunCommand(std::string(ZFARM_WORKER_BIN) + " generate --model " +
                            ZFARM_TINY_MODEL_DIR + " --prompt 'a cat' --steps 3 --seed 3" +
                            " --init-image " + init + " --strength 0.6 --mask " + mask +
                            " --lora " + lora + ":0.8 --out " + out + " 2>&1");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("inpainting from 48x48, strength 0.6: 2 of 3 steps"));
  ASSERT_OK_AND_ASSIGN(std::string bytes, ReadSmallFile(out, 1 << 20));
  ASSERT_OK_AND_ASSIGN(DecodedPng png, DecodePng(bytes));
  EXPECT_EQ(png.width, 48);
  EXPECT_EQ(png.height, 48);
  ASSERT_OK_AND_ASSIGN(std::string init_sha, base::Sha256OfFile(init));
  ASSERT_OK_AND_ASSIGN(std::string mask_sha, base::Sha256OfFile(mask));
  ASSERT_FALSE(png.text.empty());
  EXPECT_EQ(png.text[0].first, "parameters");
  EXPECT_THAT(png.text[0].second, HasSubstr("a cat <lora:tiny_diffusers:0.8>\n"));
  EXPECT_THAT(png.text[0].second, HasSubstr(", Denoising strength: 0.6, Init image sha256: " +
                                             init_sha + ", Mask sha256: " + mask_sha));
}

TEST(GenerateImg2ImgCommandTest, BadPicturesAndFlagsAreRefused) {
  const std::string junk = ::testing::TempDir() + "/img2img_command_junk.png";
  ASSERT_OK(base::WriteFileAtomically(junk, "this is not a picture"));
  auto r = RunCommand(std::string(ZFARM_WORKER_BIN) + " generate --model " + ZFARM_TINY_MODEL_DIR +
                      " --prompt x --init-image " + junk + " --out /dev/null 2>&1");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--init-image " + junk + ": not a PNG or JPEG image"));
  r = RunCommand(std::string(ZFARM_WORKER_BIN) + " generate --model " + ZFARM_TINY_MODEL_DIR +
                 " --prompt x --mask " + junk + " --out /dev/null 2>&1");
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--mask and --strength need --init-image"));
  r = RunCommand(std::string(ZFARM_WORKER_BIN) + " generate --model " + ZFARM_TINY_MODEL_DIR +
                 " --prompt x --init-image " + kGolden + "inpaint_48x48_s07_init.png" +
                 " --strength 1.5 --out /dev/null 2>&1");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("strength must be within (0, 1], got 1.5"));
}

}  // namespace
}  // namespace zfarm::worker
