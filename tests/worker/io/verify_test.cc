// `zfarm-worker verify` on tiny folders: OK, missing file, flipped byte, --fast, exit codes.
#include <filesystem>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"
#include "tests/worker/io/io_test_util.h"
#include "worker/io/manifest.h"

namespace zfarm::worker {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using ::zfarm::testing::StatusIs;
using ::zfarm::worker::testing::CommandResult;
using ::zfarm::worker::testing::FreshDir;
using ::zfarm::worker::testing::MakeTinyModel;
using ::zfarm::worker::testing::ReadAll;
using ::zfarm::worker::testing::RunCommand;
using ::zfarm::worker::testing::WriteAll;

CommandResult Verify(const std::string& dir, const std::string& extra) {
  return RunCommand(std::string(ZFARM_WORKER_BIN) + " verify --model '" + dir + "' --manifest '" +
                    dir + "/manifest.md5' " + extra + " 2>/dev/null");
}

class VerifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = FreshDir(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "/m";
    ASSERT_EQ(MakeTinyModel(dir_), 0);
  }
  void TearDown() override { fs::remove_all(fs::path(dir_).parent_path()); }
  std::string dir_;
};

TEST_F(VerifyTest, IntactFolderPasses) {
  CommandResult r = Verify(dir_, "");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("OK: 14 files verified"));
  r = Verify(dir_, "--fast");
  EXPECT_EQ(r.exit_code, 0) << r.out;
}

TEST_F(VerifyTest, MissingFileIsNamed) {
  fs::remove(dir_ + "/text_encoder/model-00002-of-00002.safetensors");
  CommandResult r = Verify(dir_, "");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, HasSubstr("missing    text_encoder/model-00002-of-00002.safetensors"));
  EXPECT_THAT(r.out, HasSubstr("FAILED: 1 of 14"));
  r = Verify(dir_, "--fast --json");
  EXPECT_EQ(r.exit_code, 1);
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_FALSE(j["ok"].get<bool>());
  int bad = 0;
  for (const auto& f : j["files"]) {
    if (f["status"] != "ok") {
      ++bad;
      EXPECT_EQ(f["path"], "text_encoder/model-00002-of-00002.safetensors");
      EXPECT_EQ(f["status"], "missing");
    }
  }
  EXPECT_EQ(bad, 1);
}

TEST_F(VerifyTest, FlippedByteIsNamed) {
  const std::string path = dir_ + "/vae/diffusion_pytorch_model.safetensors";
  std::string bytes = ReadAll(path);
  bytes[bytes.size() - 100] ^= 0x01;  // payload byte: header still valid
  WriteAll(path, bytes);
  CommandResult r = Verify(dir_, "");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, HasSubstr("wrong_md5  vae/diffusion_pytorch_model.safetensors: md5 "));
  EXPECT_THAT(r.out, HasSubstr("FAILED: 1 of 14"));
  // --fast does not read payloads: the folder still passes.
  EXPECT_EQ(Verify(dir_, "--fast").exit_code, 0);
}

TEST_F(VerifyTest, FastCatchesCorruptHeader) {
  const std::string path = dir_ + "/transformer/diffusion_pytorch_model-00001-of-00002.safetensors";
  std::string bytes = ReadAll(path);
  bytes[9] = '#';  // JSON header byte
  WriteAll(path, bytes);
  CommandResult r = Verify(dir_, "--fast");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, HasSubstr("bad_header transformer/diffusion_pytorch_model-00001-of-00002"));
  EXPECT_THAT(r.out, HasSubstr("not valid JSON"));
}

TEST_F(VerifyTest, UsageErrors) {
  EXPECT_EQ(RunCommand(std::string(ZFARM_WORKER_BIN) + " verify 2>/dev/null").exit_code, 2);
  EXPECT_EQ(
      RunCommand(std::string(ZFARM_WORKER_BIN) + " verify --model x --bogus 2>/dev/null").exit_code,
      2);
  WriteAll(dir_ + "/bad.md5", "not a manifest\n");
  EXPECT_EQ(RunCommand(std::string(ZFARM_WORKER_BIN) + " verify --model '" + dir_ +
                       "' --manifest '" + dir_ + "/bad.md5' 2>/dev/null")
                .exit_code,
            2);
  // The official manifest against a tiny folder: every weight file is missing.
  CommandResult r = RunCommand(std::string(ZFARM_WORKER_BIN) + " verify --fast --model '" + dir_ +
                               "' 2>/dev/null");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, HasSubstr("missing    transformer/diffusion_pytorch_model-00003-of-00003"));
}

TEST(ManifestTest, OfficialManifestHas16Entries) {
  EXPECT_EQ(OfficialManifest().size(), 16u);
  for (const ManifestEntry& e : OfficialManifest()) EXPECT_EQ(e.md5.size(), 32u) << e.path;
}

TEST(ManifestTest, ParseAndFormat) {
  ASSERT_OK_AND_ASSIGN(auto m, ParseMd5Manifest("# c\nABCDEF0123456789abcdef0123456789  a/b.json\n"
                                                "0123456789abcdef0123456789abcdef *c\n",
                                                "m.md5"));
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].md5, "abcdef0123456789abcdef0123456789");
  EXPECT_EQ(m[1].path, "c");
  EXPECT_EQ(FormatMd5Manifest({m[0]}), "abcdef0123456789abcdef0123456789  a/b.json\n");
  EXPECT_THAT(ParseMd5Manifest("xyz  a\n", "m.md5"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("m.md5: line 1")));
  EXPECT_THAT(ParseMd5Manifest("0123456789abcdef0123456789abcdef  ../x\n", "m.md5"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("relative")));
  // Paths follow the root-confinement rule: "./x" (as `md5sum ./x` writes it) is "x", a
  // name with two dots in it is a name, and no component may be empty, "." or "..".
  ASSERT_OK_AND_ASSIGN(auto dotted, ParseMd5Manifest("0123456789abcdef0123456789abcdef  ./a/b..c\n",
                                                     "m.md5"));
  ASSERT_EQ(dotted.size(), 1u);
  EXPECT_EQ(dotted[0].path, "a/b..c");
  for (const char* bad : {"a/../b", "/abs", "a//b", "a/./b", "./"}) {
    EXPECT_THAT(ParseMd5Manifest(std::string("0123456789abcdef0123456789abcdef  ") + bad + "\n",
                                 "m.md5"),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("m.md5: line 1")))
        << bad;
  }
  EXPECT_EQ(Md5Hex("abc"), "900150983cd24fb0d6963f7d28e17f72");
}

}  // namespace
}  // namespace zfarm::worker
