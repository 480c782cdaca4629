// Fault suite: the real zfarm-scheduler binary is SIGKILLed with
// 1,000 jobs queued and 2 running on fake workers, then restarted on the same state
// dir. Every job must finish exactly once: 1,002 SUCCEEDED, one accepted commit per
// job, one final file per job, no temp file left, and the worker that comes back
// without its lease has its late commit refused.
//
// Also: the binary refuses a damaged journal with a message naming the file (exit
// status 1), and starts again once the documented recovery has been applied.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "scheduler/server.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/farm_checks.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::zfarm::testing::AllJobs;
using ::zfarm::testing::CountOutputs;
using ::zfarm::testing::DeadlineContext;
using ::zfarm::testing::DrainQueue;
using ::zfarm::testing::FakeWorker;
using ::zfarm::testing::JobsByStateOnceRunning;
using ::zfarm::testing::OutputCount;
using ::zfarm::testing::Subprocess;
using ::zfarm::testing::WorkerOpts;

class SchedulerKillTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() /
            absl::StrCat("zfarm-faults-kill-", getpid(), "-",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_ + "/out");
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<Subprocess> Start(const std::string& tag) {
    return std::make_unique<Subprocess>(
        std::vector<std::string>{ZFARM_SCHEDULER_BIN, "--listen=127.0.0.1:0",
                                 "--state-dir=" + dir_ + "/state",
                                 "--output-root=" + dir_ + "/out"},
        dir_ + "/" + tag + ".log");
  }
  static std::string Address(Subprocess& p) {
    std::string line = p.WaitForLine("listening on ", absl::Seconds(30));
    return line.empty() ? "" : line.substr(13);
  }

  std::string dir_;
};

TEST_F(SchedulerKillTest, Sigkill1000QueuedAnd2RunningThenRestartFinishesEachJobOnce) {
  constexpr int kJobs = 1002;
  std::set<std::string> acked;
  v1::Lease running[2];
  {
    auto p = Start("first");
    std::string addr = Address(*p);
    ASSERT_FALSE(addr.empty()) << p->ReadLog();
    auto channel = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
    auto stub = v1::JobService::NewStub(channel);
    for (int b = 0; b < 2; ++b) {
      v1::SubmitJobsRequest req;
      req.set_batch_id(absl::StrCat("batch-", b));
      for (int i = 0; i < (b == 0 ? 1000 : kJobs - 1000); ++i) {
        v1::SubmitJobRequest* r = req.add_jobs();
        r->set_request_id(absl::StrCat("kill-", b, "-", i));
        r->mutable_spec()->set_prompt(absl::StrCat("job ", b, "/", i));
        r->mutable_spec()->set_steps(1);
      }
      v1::SubmitJobsResponse resp;
      grpc::Status s = stub->SubmitJobs(DeadlineContext().get(), req, &resp);
      ASSERT_TRUE(s.ok()) << s.error_message();
      for (const auto& j : resp.jobs()) acked.insert(j.job().job_id());
    }
    ASSERT_EQ(acked.size(), static_cast<size_t>(kJobs));
    // Two workers start one job each (RUNNING), then the scheduler dies.
    std::unique_ptr<FakeWorker> w[2];
    for (int i = 0; i < 2; ++i) {
      ASSERT_OK_AND_ASSIGN(w[i], FakeWorker::Connect(channel, WorkerOpts(absl::StrCat("w", i))));
      ASSERT_OK_AND_ASSIGN(running[i], w[i]->NextLease());
      ASSERT_OK(w[i]->Started(running[i].lease()));
    }
    std::map<v1::JobState, int> by_state = JobsByStateOnceRunning(*stub, 2);
    ASSERT_EQ(by_state[v1::JOB_STATE_QUEUED], 1000);
    ASSERT_EQ(by_state[v1::JOB_STATE_RUNNING], 2);
    int status = p->Stop(SIGKILL);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    for (auto& x : w) x->Disconnect();
  }

  auto p = Start("second");
  std::string addr = Address(*p);
  ASSERT_FALSE(addr.empty()) << p->ReadLog();
  auto channel = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
  auto stub = v1::JobService::NewStub(channel);

  std::map<std::string, int> accepted;  // job id -> accepted commits
  // w0 comes back holding its lease (what `zfarm-worker serve` does) and finishes it.
  FakeWorker::Options o0 = WorkerOpts("w0", 1);
  o0.held_leases.push_back(running[0].lease());
  ASSERT_OK_AND_ASSIGN(auto w0, FakeWorker::Connect(channel, o0));
  ASSERT_OK(w0->RunToSuccess(running[0], dir_ + "/out"));
  ++accepted[running[0].lease().job_id()];
  // w1 comes back without it (lost its state); its late commit must be refused.
  ASSERT_OK_AND_ASSIGN(auto w1, FakeWorker::Connect(channel, WorkerOpts("w1", 1)));
  ASSERT_OK_AND_ASSIGN(bool late, w1->Commit(running[1], dir_ + "/out"));
  EXPECT_FALSE(late) << "a lease from before the restart was accepted";

  // Eight more workers drain the queue; w0 and w1 join in.
  std::vector<std::unique_ptr<FakeWorker>> fleet;
  fleet.push_back(std::move(w0));
  fleet.push_back(std::move(w1));
  for (int i = 0; i < 8; ++i) {
    ASSERT_OK_AND_ASSIGN(auto w, FakeWorker::Connect(channel, WorkerOpts(absl::StrCat("x", i), 2)));
    fleet.push_back(std::move(w));
  }
  EXPECT_EQ(DrainQueue(fleet, dir_ + "/out", &accepted), 0);

  // Exactly once: every acknowledged job SUCCEEDED, one accepted commit each.
  std::map<v1::JobState, int> by_state;
  std::set<std::string> seen, paths;
  for (const v1::Job& j : AllJobs(*stub)) {
    ++by_state[j.state()];
    seen.insert(j.job_id());
    EXPECT_TRUE(paths.insert(j.result().path()).second) << "two jobs share " << j.result().path();
  }
  EXPECT_EQ(by_state[v1::JOB_STATE_SUCCEEDED], kJobs);
  EXPECT_EQ(seen, acked);
  EXPECT_EQ(accepted.size(), static_cast<size_t>(kJobs));
  for (const auto& [id, n] : accepted) EXPECT_EQ(n, 1) << id << " committed " << n << " times";
  // One final file per job, holding that job's bytes; no temp file left.
  EXPECT_EQ(CountOutputs(dir_ + "/out"), (OutputCount{kJobs, 0}));
  RecordProperty("succeeded", by_state[v1::JOB_STATE_SUCCEEDED]);
  fleet.clear();
  int status = p->Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST_F(SchedulerKillTest, DamagedJournalStopsTheBinaryWithFileAndRecovery) {
  {
    auto p = Start("first");
    std::string addr = Address(*p);
    ASSERT_FALSE(addr.empty()) << p->ReadLog();
    auto stub =
        v1::JobService::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
    for (int i = 0; i < 20; ++i) {
      v1::SubmitJobRequest r;
      r.mutable_spec()->set_prompt(absl::StrCat("p", i));
      v1::SubmitJobResponse resp;
      ASSERT_TRUE(stub->SubmitJob(DeadlineContext().get(), r, &resp).ok());
    }
    p->Stop(SIGKILL);
  }
  // SIGKILL left journal.db-wal; deleting it loses acknowledged jobs: refused.
  const std::string db = dir_ + "/state/journal.db";
  ASSERT_TRUE(fs::exists(db + "-wal"));
  fs::rename(db + "-wal", dir_ + "/saved-wal");
  {
    auto p = Start("refused");
    EXPECT_EQ(Address(*p), "");
    int status = p->Wait(absl::Seconds(30));
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
    EXPECT_THAT(p->ReadLog(), AllOf(HasSubstr(db + "-wal"), HasSubstr("Recovery")));
  }
  // Recovery: put the log back -> starts with every job.
  fs::rename(dir_ + "/saved-wal", db + "-wal");
  auto p = Start("recovered");
  std::string addr = Address(*p);
  ASSERT_FALSE(addr.empty()) << p->ReadLog();
  auto stub =
      v1::JobService::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  v1::ListJobsRequest r;
  r.set_page_size(100);
  v1::ListJobsResponse resp;
  ASSERT_TRUE(stub->ListJobs(DeadlineContext().get(), r, &resp).ok());
  EXPECT_EQ(resp.jobs_size(), 20);
}

}  // namespace
}  // namespace zfarm::scheduler
