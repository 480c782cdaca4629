// `--precision` on `zfarm-worker generate` and `serve` with the tiny model on the CPU: fp8
// fails at start-up naming the flag and the device (exit 1, nothing rendered), a bad value
// and fp8 with --lora-dir are usage errors (exit 2), bf16 renders.

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "absl/strings/str_split.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"
#include "worker/io/file_util.h"
#include "worker/io/image_file.h"

namespace zfarm::worker {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::RunCommand;

std::string Worker(const std::string& args) {
  return std::string(ZFARM_WORKER_BIN) + " " + args + " 2>&1";
}

TEST(Fp8CommandTest, GenerateRefusesFp8OnTheCpuAndBadValues) {
  const std::string out = ::testing::TempDir() + "/fp8_command_out.png";
  std::remove(out.c_str());
  const std::string base =
      std::string("generate --model ") + ZFARM_TINY_MODEL_DIR + " --prompt x --steps 1 --width 32 --height 32";
  auto r = RunCommand(Worker(base + " --precision fp8 --out " + out));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--precision fp8 needs FP8 tensor cores (CUDA compute capability "
                               "8.9 or later); device cpu is a CPU"));
  struct stat st;
  EXPECT_NE(stat(out.c_str(), &st), 0) << "nothing is rendered";
  r = RunCommand(Worker(base + " --precision fp4 --out " + out));
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--precision 'fp4': expected fp8, bf16 or fp32"));
  r = RunCommand(Worker(base + " --precision bf16 --out " + out));
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("cpu BFloat16"));
}

TEST(Fp8CommandTest, ServeRefusesFp8OnTheCpuBeforeConnecting) {
  const std::string base = std::string("serve --scheduler 127.0.0.1:1 --model ") +
                           ZFARM_TINY_MODEL_DIR + " --output-root " + ::testing::TempDir();
  auto r = RunCommand(Worker(base + " --precision fp8"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--precision fp8 needs FP8 tensor cores"));
  EXPECT_THAT(r.out, HasSubstr("device cpu is a CPU"));
  r = RunCommand(Worker(base + " --precision fp8 --lora-dir " + ::testing::TempDir()));
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--precision fp8 cannot serve --lora-dir"));
}

TEST(Fp8CommandTest, DoctorChecksTheFp8CopyAndTheDevice) {
  const std::string cache = ::testing::TempDir() + "/fp8_doctor_cache";
  std::filesystem::remove_all(cache);
  const std::string base = std::string("doctor --fast --model ") + ZFARM_TINY_MODEL_DIR +
                           " --manifest /dev/null --weights-cache " + cache + " --precision fp8";
  auto r = RunCommand(Worker(base));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr(" --weights-cache " + cache + " --precision fp8"));
  EXPECT_THAT(r.out, HasSubstr("--precision fp8 needs FP8 tensor cores"));
  ASSERT_EQ(RunCommand(Worker(std::string("cache-weights --model ") + ZFARM_TINY_MODEL_DIR +
                              " --weights-cache " + cache + " --precision fp8"))
                .exit_code,
            0);
  r = RunCommand(Worker(base + " --no-load"));
  EXPECT_THAT(r.out, HasSubstr("transformer-fp8-"));
  EXPECT_THAT(r.out, HasSubstr(": current"));
  std::filesystem::remove_all(cache);
}

TEST(Fp8CommandTest, CacheWeightsWritesTheFp8Copy) {
  const std::string cache = ::testing::TempDir() + "/fp8_command_cache";
  auto r = RunCommand(Worker(std::string("cache-weights --model ") + ZFARM_TINY_MODEL_DIR +
                             " --weights-cache " + cache + " --precision fp8"));
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("fp8 cache of "));
  EXPECT_THAT(r.out, HasSubstr(cache + "/transformer-fp8-"));
  r = RunCommand(Worker(std::string("cache-weights --model ") + ZFARM_TINY_MODEL_DIR +
                        " --weights-cache " + cache + " --precision int4"));
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--precision 'int4': expected bf16 or fp8"));
}

// compare on the CPU: fp32 against the fp8 reference path of the tiny model, and a
// precision against itself (identical: PSNR inf, SSIM 1).
TEST(Fp8CommandTest, CompareReportsPsnrSsimAndWritesSideBySide) {
  const std::string dir = ::testing::TempDir() + "/fp8_compare";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  {
    std::ofstream p(dir + "/prompts.txt");
    p << "a lighthouse at dusk\n\na red fox in the snow\n";
  }
  const std::string base = std::string("compare --model ") + ZFARM_TINY_MODEL_DIR +
                           " --prompts " + dir + "/prompts.txt --width 48 --height 32 --steps 2";
  auto r = RunCommand(Worker(base + " --a fp32 --b fp8 --out-dir " + dir + "/out"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("fp8 e4m3 DiT matmuls (42 layers, float32 reference path)"));
  EXPECT_THAT(r.out, HasSubstr("fp32 (A) vs fp8 (B), 48x32, 2 steps:"));
  EXPECT_THAT(r.out, HasSubstr("[2] PSNR "));
  std::ifstream tsv(dir + "/out/compare.tsv");
  std::string header, row;
  std::getline(tsv, header);
  EXPECT_EQ(header, "index\tprompt\tseed\tpsnr_db\tssim");
  int rows = 0;
  while (std::getline(tsv, row)) {
    ++rows;
    std::vector<std::string> cols = absl::StrSplit(row, '\t');
    ASSERT_EQ(cols.size(), 5u) << row;
    const double psnr = std::stod(cols[3]), ssim = std::stod(cols[4]);
    EXPECT_GT(psnr, 15.0) << row;  // close, but not the same picture
    EXPECT_TRUE(std::isfinite(psnr)) << row;
    EXPECT_GT(ssim, 0.5) << row;
    EXPECT_LT(ssim, 1.0) << row;
  }
  EXPECT_EQ(rows, 2);
  ASSERT_OK_AND_ASSIGN(std::string png, ReadSmallFile(dir + "/out/00002.png", 1 << 20));
  ASSERT_OK_AND_ASSIGN(ImageInfo info, ReadImageInfo(png));
  EXPECT_EQ(info.width, 96);
  EXPECT_EQ(info.height, 32);
  EXPECT_THAT(info.parameters, HasSubstr("(left: fp32, right: fp8)"));

  r = RunCommand(Worker(base + " --a fp32 --b fp32 --out-dir " + dir + "/same"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("[1] PSNR inf dB, SSIM 1.0000"));
  r = RunCommand(Worker(base + " --a fp32 --b fp16 --out-dir " + dir + "/bad"));
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--b: --precision 'fp16': expected fp8, bf16 or fp32"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace zfarm::worker
