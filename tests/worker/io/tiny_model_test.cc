// The tiny model generator is byte-identical on every run: the sha256 of every file it
// writes is committed in tiny_model.sha256 (regenerate with the command in that file).
#include <filesystem>
#include <map>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/files.h"
#include "tests/worker/io/io_test_util.h"

namespace zfarm::worker {
namespace {

namespace fs = std::filesystem;
using ::zfarm::worker::testing::FreshDir;
using ::zfarm::worker::testing::MakeTinyModel;
using ::zfarm::worker::testing::ReadAll;

std::map<std::string, std::string> HashFolder(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) {
      out[fs::relative(e.path(), dir).string()] = base::Sha256Hex(ReadAll(e.path().string()));
    }
  }
  return out;
}

TEST(TinyModelTest, FilesMatchCommittedSha256) {
  const std::string dir = FreshDir("tiny_sha") + "/m";
  ASSERT_EQ(MakeTinyModel(dir), 0);
  std::map<std::string, std::string> got = HashFolder(dir);
  std::map<std::string, std::string> want;
  std::istringstream in(
      ReadAll(std::string(ZFARM_SOURCE_DIR) + "/tests/worker/io/tiny_model.sha256"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    want[line.substr(66)] = line.substr(0, 64);
  }
  ASSERT_FALSE(want.empty());
  EXPECT_EQ(got, want);
  fs::remove_all(dir);
}

TEST(TinyModelTest, RejectsBadArguments) {
  const std::string dir = FreshDir("tiny_args") + "/m";
  EXPECT_EQ(MakeTinyModel(dir, "--variant huge"), 2);
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_EQ(
      testing::RunCommand(std::string(ZFARM_MAKE_TINY_MODEL) + " --out " + dir + " 2>&1").exit_code,
      2);  // --tokenizer is required
}

}  // namespace
}  // namespace zfarm::worker
