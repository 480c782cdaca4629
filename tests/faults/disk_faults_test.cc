// Disk faults with the real scheduler and worker (tests/testing/mounts.h; root):
//   - the output disk (a small tmpfs) fills up while a job renders: the write hits
//     ENOSPC, the job fails cleanly (no temp file, no partial PNG), the worker stays
//     READY and renders again once space is back;
//   - the state dir (ext4 on a loop device) turns read-only under the running
//     scheduler, the way a failing disk does: submits are refused with an error
//     naming the journal, and after the disk is repaired and the scheduler
//     restarted every job acknowledged before the fault is there and runs exactly
//     once (one PNG each).
#include <signal.h>
#include <sys/statvfs.h>
#include <sys/wait.h>

#include <filesystem>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/testing/farm_processes.h"
#include "tests/testing/mounts.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm {
namespace {

namespace v1 = ::zfarm::v1;
using ::testing::HasSubstr;
using ::zfarm::testing::RunCommand;
using ::zfarm::testing::ScratchMount;
using ::zfarm::testing::Spec;
using ::zfarm::testing::TestContext;
using ::zfarm::testing::WaitFor;

class DiskFaultTest : public zfarm::testing::FarmProcessTest {
 protected:
  void TearDown() override {
    // Processes first: a mount in use cannot be unmounted cleanly.
    workers_.clear();
    scheduler_.reset();
    mounts_.clear();
    FarmProcessTest::TearDown();
  }

  // SubmitJob with `request_id`; the raw status (FarmClient::Submit expects OK).
  grpc::Status TrySubmit(const std::string& request_id, int steps, std::string* job_id) {
    auto stub = v1::JobService::NewStub(
        grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
    v1::SubmitJobRequest r;
    r.set_request_id(request_id);
    *r.mutable_spec() = Spec("a lighthouse at dusk", 256, steps);
    v1::SubmitJobResponse resp;
    grpc::Status s = stub->SubmitJob(TestContext().get(), r, &resp);
    if (job_id) *job_id = resp.job().job_id();
    return s;
  }

  // Every job the scheduler lists.
  std::set<std::string> ListedJobs() {
    auto stub = v1::JobService::NewStub(
        grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
    v1::ListJobsRequest r;
    r.set_page_size(1000);
    v1::ListJobsResponse resp;
    EXPECT_TRUE(stub->ListJobs(TestContext().get(), r, &resp).ok());
    std::set<std::string> ids;
    for (const auto& j : resp.jobs()) ids.insert(j.job_id());
    return ids;
  }

  // SIGTERM, 30 s to exit, then SIGKILL; true if it exited by itself.
  bool StopScheduler() {
    scheduler_->Signal(SIGTERM);
    const bool exited = scheduler_->Wait(absl::Seconds(30)) != -1;
    if (!exited) scheduler_->Stop(SIGKILL);
    return exited;
  }

  std::vector<std::unique_ptr<ScratchMount>> mounts_;
};

TEST_F(DiskFaultTest, OutputDiskFillsDuringTheWriteTheJobFailsCleanly) {
  const std::string root = dir() + "/out";
  ASSERT_OK_AND_ASSIGN(auto out, ScratchMount::Tmpfs(root, "8m"));
  mounts_.push_back(std::move(out));
  StartScheduler(0, {"--max-attempts=1"});  // no retry: the failure itself is checked
  // --min-free-disk-mb=0: only the write itself can notice the full disk.
  StartWorker("w1", {"--min-free-disk-mb=0"});
  const std::string id = Submit(50);
  // The free-space check at the start of the render has passed; fill the disk.
  ASSERT_TRUE(WaitFor([&] { return GetJob(id).progress().step() >= 1; }));
  RunCommand("dd if=/dev/zero of=" + root + "/filler bs=64k 2>/dev/null");
  struct statvfs vfs {};
  ASSERT_EQ(statvfs(root.c_str(), &vfs), 0);
  ASSERT_LT(vfs.f_bavail * vfs.f_frsize, 64u << 10) << "the filler did not fill the disk";
  ASSERT_EQ(GetJob(id).state(), v1::JOB_STATE_RUNNING) << "the render ended before the disk was full";

  v1::Job j = WaitFinal(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(j.error().message(), HasSubstr("FAILURE_REASON_OUTPUT_ERROR")) << j.error().message();
  EXPECT_THAT(j.error().message(), HasSubstr("No space left on device")) << j.error().message();
  EXPECT_TRUE(Files(".png").empty());
  EXPECT_TRUE(Files(".tmp").empty());  // the partial temp file was removed
  EXPECT_EQ(WorkerState("w1"), v1::WORKER_STATE_READY);

  std::filesystem::remove(root + "/filler");
  const std::string next = Submit(2);
  EXPECT_EQ(WaitFinal(next).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Files(".png").size(), 1u);
}

TEST_F(DiskFaultTest, StateDirTurnsReadOnlyNothingAcknowledgedIsLost) {
  ASSERT_OK_AND_ASSIGN(auto state,
                       ScratchMount::Ext4(dir() + "/state", dir() + "/state.img", 64));
  ScratchMount* disk = state.get();
  mounts_.push_back(std::move(state));
  StartScheduler();
  StartWorker("w1");
  std::vector<std::string> acked;  // acknowledged before the fault
  std::string id;
  ASSERT_TRUE(TrySubmit("before-done", 2, &id).ok());
  ASSERT_EQ(WaitFinal(id).state(), v1::JOB_STATE_SUCCEEDED);
  acked.push_back(id);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(TrySubmit(absl::StrCat("before-", i), 20, &id).ok());
    acked.push_back(id);
  }
  ASSERT_TRUE(WaitFor([&] { return GetJob(acked[1]).progress().step() >= 1; }));

  ASSERT_OK(disk->BreakToReadOnly());
  // What cannot be journaled is refused, naming the journal; nothing half-done
  // is acknowledged.
  grpc::Status s = TrySubmit("during-ro", 2, nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("journal")) << s.error_message();
  grpc::Status s2 = TrySubmit("during-ro-2", 2, nullptr);
  EXPECT_FALSE(s2.ok());
  // The running job finishes rendering meanwhile; its commit cannot be journaled.
  const bool clean_exit = StopScheduler();
  std::cout << "read-only state dir: submit refused with \"" << s.error_message()
            << "\"; SIGTERM " << (clean_exit ? "exited" : "hung (killed)") << std::endl;

  ASSERT_OK(disk->Repair());
  StartScheduler(port_);  // same state dir and address; the worker reconnects
  const std::set<std::string> listed = ListedJobs();
  for (const std::string& a : acked) {
    EXPECT_TRUE(listed.count(a)) << a << " was acknowledged before the fault and is gone";
    EXPECT_EQ(WaitFinal(a).state(), v1::JOB_STATE_SUCCEEDED) << a;
  }
  // Exactly once: one PNG per acknowledged job, no temp file left.
  EXPECT_EQ(Files(".png").size(), acked.size());
  EXPECT_TRUE(Files(".tmp").empty());
}

// A submit whose journal write failed must not stay in memory: the client's retry
// with the same request id (the CLI retries UNAVAILABLE) may be answered OK only
// for a job that is on disk and survives a restart. Likewise a cancel is
// acknowledged only if it survives the restart.
TEST_F(DiskFaultTest, RetryOfARefusedSubmitIsNotAcknowledgedUnlessJournaled) {
  ASSERT_OK_AND_ASSIGN(auto state,
                       ScratchMount::Ext4(dir() + "/state", dir() + "/state.img", 64));
  ScratchMount* disk = state.get();
  mounts_.push_back(std::move(state));
  StartScheduler();
  std::string queued;
  ASSERT_TRUE(TrySubmit("queued-before", 2, &queued).ok());  // no worker: stays QUEUED
  ASSERT_OK(disk->BreakToReadOnly());
  std::string id;
  grpc::Status first = TrySubmit("retried", 2, &id);
  EXPECT_FALSE(first.ok());
  grpc::Status retry = TrySubmit("retried", 2, &id);
  // A cancel that cannot be journaled either fails or, once acknowledged, holds.
  const bool cancel_acked = client_->Cancel(queued);
  StopScheduler();
  ASSERT_OK(disk->Repair());
  StartScheduler(port_);
  if (retry.ok()) {  // acknowledged: it must have survived the restart
    EXPECT_TRUE(ListedJobs().count(id)) << "job " << id << " was acknowledged and is gone";
  }
  EXPECT_EQ(GetJob(queued).state() == v1::JOB_STATE_CANCELLED, cancel_acked)
      << "cancel acknowledged: " << cancel_acked << ", state after restart: "
      << v1::JobState_Name(GetJob(queued).state());
}

}  // namespace
}  // namespace zfarm
