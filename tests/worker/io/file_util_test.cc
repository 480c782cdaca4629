// worker/io/file_util: AtomicFile's temporary file never writes through a planted
// symlink (it used the predictable "<path>.tmp.<pid>", created with O_TRUNC).
#include "worker/io/file_util.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::worker {
namespace {

namespace fs = std::filesystem;

std::string Slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

TEST(AtomicFileTest, APlantedSymlinkAtATemporaryNameIsNotWrittenThrough) {
  const fs::path dir = fs::path(::testing::TempDir()) / absl::StrCat("atomic-", getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path target = dir / "config.json", victim = dir / "victim";
  std::ofstream(victim) << "secret";
  fs::create_symlink(victim, absl::StrCat(target.string(), ".tmp.", getpid()));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<AtomicFile> f, AtomicFile::Create(target.string()));
  ASSERT_OK(f->Write("{}"));
  ASSERT_OK(f->Commit());
  EXPECT_EQ(Slurp(victim), "secret");
  EXPECT_EQ(Slurp(target), "{}");
  EXPECT_FALSE(fs::is_symlink(fs::symlink_status(target)));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace zfarm::worker
