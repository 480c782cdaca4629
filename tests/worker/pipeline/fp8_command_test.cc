// `--precision` on `zfarm-worker generate` and `serve` with the tiny model on the CPU: fp8
// fails at start-up naming the flag and the device (exit 1, nothing rendered), a bad value
// and fp8 with --lora-dir are usage errors (exit 2), bf16 renders.

#include <sys/stat.h>

#include <cstdio>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

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

}  // namespace
}  // namespace zfarm::worker
