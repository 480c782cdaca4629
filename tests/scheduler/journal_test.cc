#include "scheduler/sqlite_journal.h"

#include <filesystem>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/scheduler/journal_contract.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::scheduler {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;

std::string TempDir(const char* name) {
  auto p = std::filesystem::path(::testing::TempDir()) /
           (std::string(name) + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  return p.string();
}

TEST(JournalTest, OpensWithWalAndSynchronousFull) {
  ASSERT_OK_AND_ASSIGN(auto j, SqliteJournal::Open({.state_dir = TempDir("pragmas")}));
  ASSERT_OK_AND_ASSIGN(std::string mode, j->Pragma("journal_mode"));
  EXPECT_EQ(mode, "wal");
  ASSERT_OK_AND_ASSIGN(std::string sync, j->Pragma("synchronous"));
  EXPECT_EQ(sync, "2");  // FULL
  ASSERT_OK_AND_ASSIGN(std::string version, j->Pragma("user_version"));
  EXPECT_EQ(version, std::to_string(SqliteJournal::kSchemaVersion));
}

TEST(JournalTest, RefusesNetworkFilesystem) {
  EXPECT_THAT(SqliteJournal::Open({.state_dir = TempDir("nfs"), .fake_fs_type = 0x6969}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("--state-dir"), HasSubstr("NFS"))));
  EXPECT_OK(CheckLocalFilesystemType("/x", 0xEF53));  // ext4
}

TEST(JournalTest, RefusesNewerSchema) {
  std::string dir = TempDir("newer");
  {
    ASSERT_OK_AND_ASSIGN(auto j, SqliteJournal::Open({.state_dir = dir}));
    ASSERT_OK(j->Pragma("user_version=99").status());
  }
  EXPECT_THAT(SqliteJournal::Open({.state_dir = dir}),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("newer")));
}

TEST(JournalTest, PersistsAcrossReopen) {
  std::string dir = TempDir("reopen");
  {
    ASSERT_OK_AND_ASSIGN(auto j, SqliteJournal::Open({.state_dir = dir}));
    Journal::Op req{Journal::Op::Kind::kPutRequest, {}, {}, {}};
    req.request = {"alice", "r1", "j1", "fp", absl::FromUnixSeconds(100)};
    j->Append({PutJob("j1", v1::JOB_STATE_QUEUED, 1), PutJob("j2", v1::JOB_STATE_RUNNING, 2), req},
              nullptr);
    Journal::Op del{Journal::Op::Kind::kDeleteJob, {}, {}, {}};
    del.job.job.set_job_id("j2");
    j->Append({del}, nullptr);
    ASSERT_OK(j->Flush());
  }
  ASSERT_OK_AND_ASSIGN(auto j, SqliteJournal::Open({.state_dir = dir}));
  ASSERT_OK_AND_ASSIGN(auto c, j->Load());
  ASSERT_EQ(c.jobs.size(), 1u);
  EXPECT_EQ(c.jobs[0].job.job_id(), "j1");
  EXPECT_EQ(c.jobs[0].runs, 2);
  ASSERT_EQ(c.requests.size(), 1u);
  EXPECT_EQ(c.requests[0].job_id, "j1");
  EXPECT_EQ(c.requests[0].create_time, absl::FromUnixSeconds(100));
}

TEST(JournalTest, GroupCommitSharesTransactions) {
  ASSERT_OK_AND_ASSIGN(auto j, SqliteJournal::Open({.state_dir = TempDir("group")}));
  ExpectGroupCommitSharesTransactions(*j);
}

TEST(JournalTest, CallbacksRunInAppendOrder) {
  ASSERT_OK_AND_ASSIGN(auto j, SqliteJournal::Open({.state_dir = TempDir("order")}));
  std::vector<int> order;
  absl::Mutex mu;
  for (int i = 0; i < 100; ++i) {
    j->Append(i % 3 ? std::vector<Journal::Op>{}
                    : std::vector<Journal::Op>{PutJob("x", v1::JOB_STATE_QUEUED, i)},
              [&, i](absl::Status) {
                absl::MutexLock l(&mu);
                order.push_back(i);
              });
  }
  ASSERT_OK(j->Flush());
  absl::MutexLock l(&mu);
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
}

}  // namespace
}  // namespace zfarm::scheduler
