// Fault suite: a real network partition. Worker "a" runs as a child
// process (this test binary re-executed in a "netns child" mode) inside its own
// network namespace, joined to the test's namespace by a veth pair with addresses in
// a private /30. It takes a job and starts it; the test cuts the link
// (`ip link set <veth> down`) mid-job. Checks: the scheduler declares "a" lost after
// the lease timeout (FakeClock-driven, no sleeps decide it) and requeues the job to
// worker "b", exactly one final file exists, and a's late commit after the link is
// restored is refused.
//
// Needs root and the `ip` binary (iproute2, deploy/install-deps.sh): without them the
// test FAILS with a message, it never skips. Namespace and veth names are unique per
// run and removed in TearDown, also after a failure.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "scheduler/server.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/netns.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler {
namespace {

namespace fs = std::filesystem;
using ::zfarm::testing::FakeClock;
using ::zfarm::testing::FakeWorker;
using ::zfarm::testing::Subprocess;
using ::zfarm::testing::VethNamespace;

// ---- child mode: worker "a" inside the namespace --------------------------------
// Prints LEASED job=<id>, heartbeats until its stream ends (the scheduler dropped
// it), reconnects holding the old lease (as `zfarm-worker serve` does), tries to
// commit it and prints COMMIT accepted=<0|1>.
[[noreturn]] void RunChild(const std::string& addr, const std::string& out) {
  auto say = [](const std::string& s) {
    std::cout << s << std::endl;
  };
  auto channel = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
  FakeWorker::Options o;
  o.name = "a";
  auto w = FakeWorker::Connect(channel, o, absl::Seconds(20));
  if (!w.ok()) {
    say(absl::StrCat("CHILD_ERROR connect: ", w.status().ToString()));
    _exit(2);
  }
  auto lease = (*w)->NextLease(absl::Seconds(20));
  if (!lease.ok() || !(*w)->Started(lease->lease()).ok()) {
    say("CHILD_ERROR no lease");
    _exit(2);
  }
  say(absl::StrCat("LEASED job=", lease->lease().job_id(), " attempt=", lease->lease().attempt()));
  const absl::Time give_up = absl::Now() + absl::Seconds(50);
  while ((*w)->Heartbeat().ok() && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(100));
  say("STREAM_ENDED");
  (*w)->Disconnect();
  o.held_leases = {lease->lease()};
  while (absl::Now() < give_up) {
    auto again = FakeWorker::Connect(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()),
                                     o, absl::Seconds(2));
    if (!again.ok()) continue;
    auto ok = (*again)->Commit(*lease, out);
    if (!ok.ok()) continue;
    say(absl::StrCat("COMMIT accepted=", *ok ? 1 : 0));
    _exit(0);
  }
  say("CHILD_ERROR gave up");
  _exit(2);
}

const int kChildMode = [] {
  const char* addr = std::getenv("ZFARM_NETNS_CHILD_ADDR");
  const char* out = std::getenv("ZFARM_NETNS_CHILD_OUT");
  if (addr && out) RunChild(addr, out);
  return 0;
}();

// ---- the test -----------------------------------------------------------------

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return c;
}

class NetnsPartitionTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_OK_AND_ASSIGN(ns_, VethNamespace::Create()); }
  void TearDown() override {
    child_.reset();
    ns_.reset();
  }

  std::unique_ptr<VethNamespace> ns_;
  std::unique_ptr<Subprocess> child_;
};

TEST_F(NetnsPartitionTest, LinkCutMidJobRequeuesToSecondWorkerAndRefusesLateCommit) {
  const std::string dir =
      (fs::temp_directory_path() / absl::StrCat("zfarm-faults-netns-", getpid())).string();
  fs::remove_all(dir);
  fs::create_directories(dir + "/out");
  FakeClock clock;
  ServerOptions o;
  o.listen = "0.0.0.0:0";
  o.tick_interval = absl::InfiniteDuration();  // Tick() only when the test says
  o.scheduler.state_dir = dir + "/state";
  o.scheduler.output_root = dir + "/out";
  ASSERT_OK_AND_ASSIGN(auto server, SchedulerServer::Start(o, &clock));
  const int port = server->port();
  auto local = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials());
  auto jobs = v1::JobService::NewStub(local);
  v1::SubmitJobRequest r;
  r.mutable_spec()->set_prompt("partitioned");
  r.mutable_spec()->set_steps(1);
  v1::SubmitJobResponse resp;
  ASSERT_TRUE(jobs->SubmitJob(Ctx().get(), r, &resp).ok());
  const std::string job = resp.job().job_id();

  // Worker a, in the namespace, reaches the scheduler only over the veth pair.
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  std::vector<std::string> argv = ns_->ExecPrefix();
  for (const std::string& a :
       {std::string("/usr/bin/env"), absl::StrCat("ZFARM_NETNS_CHILD_ADDR=", ns_->root_ip(), ":", port),
        "ZFARM_NETNS_CHILD_OUT=" + dir + "/out", self}) {
    argv.push_back(a);
  }
  child_ = std::make_unique<Subprocess>(argv, dir + "/child.log");
  std::string leased = child_->WaitForLine("LEASED job=", absl::Seconds(30));
  ASSERT_EQ(leased.rfind("LEASED job=" + job, 0), 0u) << child_->ReadLog();
  v1::GetJobRequest g;
  g.set_job_id(job);
  v1::Job j;
  for (int i = 0; i < 500 && j.state() != v1::JOB_STATE_RUNNING; ++i) {
    ASSERT_TRUE(jobs->GetJob(Ctx().get(), g, &j).ok());
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(j.state(), v1::JOB_STATE_RUNNING);
  const int64_t first_attempt = j.attempt();

  // Control: with the link up, a's heartbeats (every 100 ms over the veth) keep it
  // alive across a lease timeout's worth of clock.
  auto a_info = [&]() {
    for (const auto& w : server->scheduler()->ListWorkers()) {
      if (w.worker_name() == "a") return w;
    }
    return v1::WorkerInfo();
  };
  clock.Advance(server->scheduler()->options().lease_timeout + absl::Seconds(1));
  const absl::Time now = clock.Now();
  for (int i = 0; i < 500 && absl::FromUnixSeconds(a_info().last_seen_time().seconds()) +
                                     absl::Nanoseconds(a_info().last_seen_time().nanos()) !=
                                 now;
       ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  server->scheduler()->Tick();
  ASSERT_EQ(a_info().state(), v1::WORKER_STATE_READY) << "a's heartbeats do not cross the veth";

  // Cut the link mid-job. a keeps heartbeating into the void; once the lease timeout
  // passes with nothing received, a is lost and its job requeued. (Repeated: a
  // heartbeat in flight at the cut may still land once.)
  ASSERT_OK(ns_->SetLinkUp(false));
  bool lost = false;
  for (int i = 0; i < 5 && !lost; ++i) {
    clock.Advance(server->scheduler()->options().lease_timeout + absl::Seconds(1));
    absl::SleepFor(absl::Milliseconds(300));  // were the link up, a heartbeat lands here
    server->scheduler()->Tick();
    ASSERT_OK(server->scheduler()->Flush());
    for (const auto& w : server->scheduler()->ListWorkers()) {
      if (w.worker_name() == "a") lost = w.state() == v1::WORKER_STATE_LOST;
    }
  }
  ASSERT_TRUE(lost) << "worker a not declared lost after the link cut";
  ASSERT_TRUE(jobs->GetJob(Ctx().get(), g, &j).ok());
  EXPECT_EQ(j.state(), v1::JOB_STATE_QUEUED);

  // b (this namespace, loopback) gets the job with a new attempt and finishes it.
  FakeWorker::Options bo;
  bo.name = "b";
  ASSERT_OK_AND_ASSIGN(auto b, FakeWorker::Connect(local, bo));
  ASSERT_OK_AND_ASSIGN(v1::Lease l, b->NextLease());
  EXPECT_EQ(l.lease().job_id(), job);
  EXPECT_GT(l.lease().attempt(), first_attempt);
  ASSERT_OK(b->RunToSuccess(l, dir + "/out"));
  for (int i = 0; i < 500 && j.state() != v1::JOB_STATE_SUCCEEDED; ++i) {
    ASSERT_TRUE(jobs->GetJob(Ctx().get(), g, &j).ok());
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED);

  // The link comes back: a's stream ends, a reconnects with its old lease and
  // tries to commit what it rendered: refused.
  ASSERT_OK(ns_->SetLinkUp(true));
  std::string commit = child_->WaitForLine("COMMIT accepted=", absl::Seconds(45));
  EXPECT_EQ(commit, "COMMIT accepted=0") << child_->ReadLog();

  // Exactly one final file (b's), no temp file left.
  int pngs = 0, other = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir + "/out")) {
    if (!e.is_regular_file()) continue;
    (e.path().extension() == ".png" ? pngs : other)++;
  }
  EXPECT_EQ(pngs, 1);
  EXPECT_EQ(other, 0);
  ASSERT_TRUE(jobs->GetJob(Ctx().get(), g, &j).ok());
  EXPECT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(j.attempt(), l.lease().attempt());
  b.reset();
  server.reset();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace zfarm::scheduler
