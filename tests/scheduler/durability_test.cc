// Results and acknowledgements that must not be lost or replaced: temp files that
// never follow a planted symlink, a rename that never replaces a result, output
// names unique per path, and journal writes that fail (injected with
// Journal::TEST_FailWrites) without anything being acknowledged that is not on disk.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/files.h"
#include "scheduler/sqlite_journal.h"
#include "tests/scheduler/core_fixture.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::scheduler {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using ::zfarm::testing::StatusIs;
using core_testing::Call;
using core_testing::RecordingSink;
using core_testing::SchedulerCoreTest;

std::string Slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class FilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("files-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
            "-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    base::TEST_ForceLinkRename(false);
    fs::remove_all(dir_);
  }
  fs::path dir_;
};

TEST_F(FilesTest, TempFileNeverWritesThroughAPlantedSymlink) {
  const fs::path victim = dir_ / "victim", tmp = dir_ / "job.1.tmp";
  std::ofstream(victim) << "secret";
  fs::create_symlink(victim, tmp);
  ASSERT_OK(base::WriteNewFileSynced(tmp.string(), "rendered"));
  EXPECT_EQ(Slurp(victim), "secret");
  EXPECT_FALSE(fs::is_symlink(fs::symlink_status(tmp)));
  EXPECT_EQ(Slurp(tmp), "rendered");
}

TEST_F(FilesTest, RenameNoReplaceKeepsTheExistingFileWithAndWithoutRenameat2) {
  for (bool link_fallback : {false, true}) {
    SCOPED_TRACE(link_fallback ? "link + unlink" : "renameat2");
    base::TEST_ForceLinkRename(link_fallback);
    const fs::path from = dir_ / "a.tmp", to = dir_ / "same.png";
    fs::remove(to);
    std::ofstream(from) << "second";
    std::ofstream(to) << "first";
    EXPECT_THAT(base::RenameNoReplace(from.string(), to.string()),
                StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr(to.string())));
    EXPECT_EQ(Slurp(to), "first");
    EXPECT_TRUE(fs::exists(from));
    fs::remove(to);
    ASSERT_OK(base::RenameNoReplace(from.string(), to.string()));
    EXPECT_EQ(Slurp(to), "second");
    EXPECT_FALSE(fs::exists(from));
  }
}

TEST_F(FilesTest, JournalStateFileDoesNotFollowAPlantedSymlink) {
  const fs::path state = dir_ / "state", victim = dir_ / "victim";
  fs::create_directories(state);
  std::ofstream(victim) << "secret";
  // The temporary name an older scheduler used for journal.db.state.
  fs::create_symlink(victim, state / "journal.db.state.tmp");
  ASSERT_OK_AND_ASSIGN(auto j, SqliteJournal::Open({.state_dir = state.string()}));
  j.reset();
  EXPECT_EQ(Slurp(victim), "secret");
  EXPECT_EQ(Slurp(state / "journal.db.state"), "closed\n");
}

// ---------------------------------------------------------------- output names

class OutputNameTest : public SchedulerCoreTest {
 protected:
  static v1::SubmitJobRequest Named(const std::string& request_id, const std::string& name) {
    v1::SubmitJobRequest r = Request(request_id);
    r.mutable_spec()->set_output_name(name);
    return r;
  }
  // The FakeClock's UTC date.
  std::string Path(const std::string& name) {
    return absl::StrCat(absl::FormatTime("%Y-%m-%d", clock_.Now(), absl::UTCTimeZone()), "/",
                        name, ".png");
  }
};

TEST_F(OutputNameTest, ANameHeldByAnotherJobIsRefusedAtSubmit) {
  Open();
  ASSERT_OK_AND_ASSIGN(auto first, SubmitAs("alice", Named("r1", "same")));
  const std::string id = first.job().job_id();
  // Another job of the same principal: the path and the job are named.
  EXPECT_THAT(SubmitAs("alice", Named("r2", "same")),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       ::testing::AllOf(HasSubstr("spec.output_name"), HasSubstr(Path("same")),
                                        HasSubstr(id))));
  // The same request again is the idempotent case.
  ASSERT_OK_AND_ASSIGN(auto again, SubmitAs("alice", Named("r1", "same")));
  EXPECT_FALSE(again.created());
  EXPECT_EQ(again.job().job_id(), id);
  // Another principal: refused without naming alice's job.
  EXPECT_THAT(SubmitAs("bob", Named("r1", "same")),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       ::testing::AllOf(HasSubstr(Path("same")),
                                        HasSubstr("another principal's job"), Not(HasSubstr(id)))));
  // Two jobs of one batch with one name: all or nothing.
  v1::SubmitJobsRequest batch;
  *batch.add_jobs() = Named("b1", "pair");
  *batch.add_jobs() = Named("b2", "pair");
  EXPECT_THAT(Call<v1::SubmitJobsResponse>(
                  [&](auto cb) { sched_->SubmitBatch(batch, "alice", std::move(cb)); }),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("jobs[1].spec.output_name")));
  ASSERT_OK_AND_ASSIGN(auto pair, SubmitAs("alice", Named("b3", "pair")));  // nothing kept
  EXPECT_TRUE(pair.created());

  // The index survives a restart; a cancelled job (no file) releases its name.
  sched_.reset();
  Open();
  EXPECT_THAT(SubmitAs("alice", Named("r3", "same")),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr(id)));
  ASSERT_OK(CancelJob(id));
  ASSERT_OK_AND_ASSIGN(auto after_cancel, SubmitAs("alice", Named("r3", "same")));
  EXPECT_TRUE(after_cancel.created());
}

// ---------------------------------------------------------------- journal failures

class JournalFailureTest : public SchedulerCoreTest {
 protected:
  void FailNextWrite() {
    sched_->journal()->TEST_FailWrites(1, absl::InternalError("injected: disk I/O error"));
  }
  int64_t JobsWithRequest(const std::string& request_id) {
    v1::ListJobsRequest req;
    auto list = Call<v1::ListJobsResponse>([&](auto cb) { sched_->ListJobs(req, std::move(cb)); });
    EXPECT_OK(list.status());
    int64_t n = 0;
    if (list.ok()) {
      for (const auto& j : list->jobs()) n += j.request_id() == request_id;
    }
    return n;
  }
  void Restart() {
    sched_.reset();
    Open();
  }
};

TEST_F(JournalFailureTest, ARetryAfterAFailedSubmitIsNotAcknowledgedUntilWritten) {
  Open();
  FailNextWrite();
  EXPECT_THAT(Submit("r1"), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("injected")));
  // The retry must not find the unwritten job in memory and answer success.
  EXPECT_THAT(Submit("r1"), StatusIs(absl::StatusCode::kUnavailable, ::testing::_));
  Restart();
  EXPECT_EQ(JobsWithRequest("r1"), 0);  // never acknowledged, never there

  // Fail again; this time the scheduler reloads from the journal (next Tick) and
  // the retry creates the job, which then survives a restart.
  FailNextWrite();
  EXPECT_THAT(Submit("r1"), StatusIs(absl::StatusCode::kUnavailable, ::testing::_));
  sched_->Tick();
  ASSERT_OK_AND_ASSIGN(auto sub, Submit("r1"));
  EXPECT_TRUE(sub.created());
  Restart();
  EXPECT_EQ(JobsWithRequest("r1"), 1);
  EXPECT_EQ(Get(sub.job().job_id()).state(), v1::JOB_STATE_QUEUED);
}

TEST_F(JournalFailureTest, AFailedCancelIsRolledBackNotAcknowledgedOnRetry) {
  Open();
  ASSERT_OK_AND_ASSIGN(auto sub, Submit("r1"));
  const std::string id = sub.job().job_id();
  FailNextWrite();
  EXPECT_THAT(CancelJob(id), StatusIs(absl::StatusCode::kUnavailable, ::testing::_));
  EXPECT_THAT(CancelJob(id), StatusIs(absl::StatusCode::kUnavailable, ::testing::_));  // the retry
  EXPECT_THAT(TryGet(id), StatusIs(absl::StatusCode::kUnavailable, ::testing::_));    // not CANCELLED
  sched_->Tick();  // reload: memory is what the journal says again
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_QUEUED);
  ASSERT_OK(CancelJob(id));
  Restart();
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_CANCELLED);
}

TEST_F(JournalFailureTest, FailedWorkerTransitionsAreReloadedAndTheJobStillRuns) {
  Open();
  ASSERT_OK_AND_ASSIGN(auto sub, Submit("r1"));
  const std::string id = sub.job().job_id();
  // The dispatch (ASSIGNED) fails to reach the disk: the lease is never sent.
  FailNextWrite();
  auto sink = std::make_shared<RecordingSink>();
  ASSERT_OK(sched_->WorkerHello(Hello("w1"), sink).status());
  sched_->Flush().IgnoreError();
  EXPECT_TRUE(sink->TakeLeases().empty());
  EXPECT_THAT(TryGet(id), StatusIs(absl::StatusCode::kUnavailable, ::testing::_));  // not ASSIGNED
  sched_->Tick();
  EXPECT_THAT(sink->closed(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("reloading")));
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_QUEUED);

  // The worker reconnects and runs it; now the final transition fails to write.
  sink = std::make_shared<RecordingSink>();
  uint64_t s = Connect("w1", sink);
  auto leases = sink->TakeLeases();
  ASSERT_EQ(leases.size(), 1u);
  ASSERT_OK(Msg(s, Started(leases[0].lease())));
  ASSERT_OK(Msg(s, Commit(leases[0])));
  WriteResult(leases[0]);
  FailNextWrite();
  ASSERT_OK(sched_->WorkerMessage(s, Finalized(leases[0].lease())));
  sched_->Flush().IgnoreError();
  EXPECT_THAT(TryGet(id), StatusIs(absl::StatusCode::kUnavailable, ::testing::_));  // SUCCEEDED is not on disk
  EXPECT_THAT(sched_->Result(id), StatusIs(absl::StatusCode::kUnavailable, ::testing::_));
  sched_->Tick();
  // Reloaded: the journal holds the accepted commit and the file checks out.
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_SUCCEEDED);
  Restart();
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(JobsWithRequest("r1"), 1);
}

TEST_F(JournalFailureTest, ReloadsBackOffWhileWritesKeepFailing) {
  Open();
  auto listing = [&] {
    v1::ListJobsRequest req;
    return Call<v1::ListJobsResponse>([&](auto cb) { sched_->ListJobs(req, std::move(cb)); })
        .status();
  };
  sched_->journal()->TEST_FailWrites(2, absl::InternalError("injected: disk I/O error"));
  EXPECT_THAT(Submit("r1"), StatusIs(absl::StatusCode::kUnavailable, ::testing::_));
  sched_->Tick();  // the first failure reloads at once
  ASSERT_OK(listing());
  EXPECT_THAT(Submit("r2"), StatusIs(absl::StatusCode::kUnavailable, ::testing::_));
  sched_->Tick();  // the second in a row waits 100 ms
  EXPECT_THAT(listing(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("reloading")));
  clock_.Advance(absl::Milliseconds(100));
  sched_->Tick();
  ASSERT_OK(listing());
  ASSERT_OK_AND_ASSIGN(auto sub, Submit("r2"));  // writes work again
  EXPECT_TRUE(sub.created());
}

}  // namespace
}  // namespace zfarm::scheduler
