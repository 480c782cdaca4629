// `zfarm-worker lora-inspect` (output and exit codes) and the `--lora FILE[:SCALE]` flag of
// generate, on the tiny LoRA files and the tiny model.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/model/tiny_folder.h"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"

namespace zfarm::worker {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;

std::string Lora(const std::string& stem) {
  return std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/lora/" + stem + ".safetensors";
}

struct Result {
  int rc;
  std::string out, err;
};

Result Inspect(std::vector<std::string> args) {
  args.insert(args.begin(), "lora-inspect");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  const int rc = RunLoraInspect(static_cast<int>(argv.size()), argv.data());
  Result r{rc, ::testing::internal::GetCapturedStdout(), ::testing::internal::GetCapturedStderr()};
  return r;
}

class LoraInspectTest : public ::testing::Test {
 protected:
  static void TearDownTestSuite() { testing::RemoveTinyFolder(); }
};

TEST_F(LoraInspectTest, ReportsFormatModulesAndTheModelMatch) {
  const std::string model = testing::MakeTinyFolder();
  ASSERT_FALSE(model.empty());
  Result r = Inspect({Lora("tiny_comfy"), "--model", model});
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("format comfyui, 6 modules"));
  EXPECT_THAT(r.out, HasSubstr("layers.0.attention.to_k"));
  EXPECT_THAT(r.out, HasSubstr("rank 4    alpha 2  multiplier 0.5"));
  EXPECT_THAT(r.out, HasSubstr("every key matches " + model));

  r = Inspect({Lora("tiny_dot"), "--json"});
  EXPECT_EQ(r.rc, 0);
  EXPECT_THAT(r.out, HasSubstr("\"format\": \"dot\""));
  EXPECT_THAT(r.out, HasSubstr("diffusion_model.layers.1.attention.qkv.lora.down.weight"));
}

TEST_F(LoraInspectTest, ExitCodes) {
  // A folder that is no model (no transformer/), then a file that is no LoRA.
  Result r = Inspect({Lora("tiny_kohya"), "--model", std::string(ZFARM_SOURCE_DIR) + "/tests"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("does not match"));
  r = Inspect({std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/golden/fox_48x32_s2.safetensors"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.err, HasSubstr("not a LoRA tensor"));
  EXPECT_EQ(Inspect({}).rc, 2);
  EXPECT_EQ(Inspect({Lora("tiny_kohya"), "--bogus"}).rc, 2);
}

// The answers every zfarm-worker subcommand gives (ParseCommandFlags), seen through this one.
TEST_F(LoraInspectTest, HelpOnStdoutUsageErrorsOnStderr) {
  Result help = Inspect({"--help"});
  EXPECT_EQ(help.rc, 0);
  EXPECT_THAT(help.out, HasSubstr("usage: zfarm-worker lora-inspect FILE.safetensors"));
  EXPECT_THAT(help.out, HasSubstr("--model DIR"));
  EXPECT_THAT(help.out, HasSubstr("--json"));
  EXPECT_EQ(help.err, "");
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{Lora("tiny_kohya"), "--bogus"},
        std::vector<std::string>{Lora("tiny_kohya"), "--model"},
        std::vector<std::string>{Lora("tiny_kohya"), "--json=maybe"},
        std::vector<std::string>{Lora("tiny_kohya"), Lora("tiny_dot")}}) {
    Result r = Inspect(args);
    EXPECT_EQ(r.rc, 2) << args.back();
    EXPECT_EQ(r.out, "") << args.back();
    EXPECT_THAT(r.err, HasSubstr("zfarm-worker lora-inspect: ")) << args.back();
    EXPECT_THAT(r.err, HasSubstr("\nusage: zfarm-worker lora-inspect")) << args.back();
  }
  EXPECT_THAT(Inspect({Lora("tiny_kohya"), "--bogus"}).err, HasSubstr("unknown flag '--bogus'"));
  EXPECT_THAT(Inspect({Lora("tiny_kohya"), "--model"}).err, HasSubstr("'--model' needs a value"));
  // The flags may come before the file, in both forms.
  Result r = Inspect({"--json=true", Lora("tiny_kohya")});
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"format\": \"kohya\""));
}

TEST(LoraFlagTest, FileScaleAndNamesInTheLoraDir) {
  ASSERT_OK_AND_ASSIGN(LoraFlag a, ParseLoraFlag(Lora("tiny_kohya") + ":-0.5", ""));
  EXPECT_EQ(a.name, "tiny_kohya");
  EXPECT_EQ(a.path, Lora("tiny_kohya"));
  EXPECT_FLOAT_EQ(a.scale, -0.5f);
  ASSERT_OK_AND_ASSIGN(LoraFlag b, ParseLoraFlag("tiny_dot", std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/lora"));
  EXPECT_EQ(b.path, Lora("tiny_dot"));
  EXPECT_FLOAT_EQ(b.scale, 1.0f);
  EXPECT_THAT(ParseLoraFlag("/nowhere/x.safetensors:2", ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--lora /nowhere/x.safetensors:2: no such file")));
}

}  // namespace
}  // namespace zfarm::worker
