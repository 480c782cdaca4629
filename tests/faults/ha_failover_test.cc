// High availability on the PostgreSQL journal, with real zfarm-scheduler
// processes, fake workers and a real PostgreSQL server started by the test
// (ctest label `ha`):
//   - kill -9 of the active scheduler with jobs queued and 2 running: the standby
//     (health NOT_SERVING, UNAVAILABLE naming the active one until then) is
//     active and dispatching within 10 s, and every acknowledged job finishes
//     exactly once (one PNG each). ZFARM_HA_JOBS sets the queued count (CI: 200;
//     the issue's campaign: 1000);
//   - SIGSTOP of the active one past its lease, then SIGCONT: its writes are
//     fenced, it exits 3 (steps down), nothing is duplicated; the CLI with an
//     address list (`--scheduler b,a` / `a,b`) reaches the active one either way;
//   - PostgreSQL restarted under load: submits fail with UNAVAILABLE while it is
//     down, every acknowledged job is in the journal, submits work again after;
//   - an unreachable or misconfigured --journal fails start-up naming the flag,
//     never printing the password;
//   - (with the worker built) the real zfarm-worker with `--scheduler b,a`
//     follows a kill -9 failover and every job renders once.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "scheduler/server.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/farm_checks.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"
#include "zfarm/v1/job_service.grpc.pb.h"
#include "zfarm/v1/worker_service.grpc.pb.h"

namespace zfarm::scheduler {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::zfarm::testing::AllJobs;
using ::zfarm::testing::CountOutputs;
using ::zfarm::testing::DeadlineContext;
using ::zfarm::testing::DrainQueue;
using ::zfarm::testing::FakeWorker;
using ::zfarm::testing::JobsByStateOnceRunning;
using ::zfarm::testing::OutputCount;
using ::zfarm::testing::PostgresServer;
using ::zfarm::testing::Subprocess;
using ::zfarm::testing::WorkerOpts;

class HaFailoverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (PostgresServer::BinDir().empty()) GTEST_SKIP() << "PostgreSQL is not installed";
    dir_ = (fs::temp_directory_path() /
            absl::StrCat("zfarm-ha-", getpid(), "-",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_ + "/out");
    ASSERT_OK_AND_ASSIGN(pg_, PostgresServer::Start(dir_ + "/pg"));
  }
  void TearDown() override {
    procs_.clear();
    pg_.reset();
    if (!HasFailure()) fs::remove_all(dir_);
  }

  // A scheduler on the PostgreSQL journal: lease 2 s, renewed every 0.5 s
  // ($ZFARM_HA_LEADER_LEASE / $ZFARM_HA_LEADER_RENEW to measure others).
  Subprocess* Start(const std::string& name, std::vector<std::string> extra = {}) {
    const char* lease = std::getenv("ZFARM_HA_LEADER_LEASE");
    const char* renew = std::getenv("ZFARM_HA_LEADER_RENEW");
    std::vector<std::string> argv = {ZFARM_SCHEDULER_BIN,
                                     "--listen=127.0.0.1:0",
                                     "--journal=" + pg_->Url(),
                                     "--journal-password-file=" + pg_->password_file(),
                                     "--name=" + name,
                                     absl::StrCat("--leader-lease=", lease ? lease : "2s"),
                                     absl::StrCat("--leader-renew=", renew ? renew : "500ms"),
                                     "--output-root=" + dir_ + "/out"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    procs_.push_back(std::make_unique<Subprocess>(argv, dir_ + "/" + name + ".log"));
    return procs_.back().get();
  }
  // The address once `p` is active ("" when it never is within `timeout`).
  static std::string ActiveAddress(Subprocess& p, absl::Duration timeout = absl::Seconds(30)) {
    std::string line = p.WaitForLine("listening on ", timeout);
    return line.empty() ? "" : line.substr(13);
  }
  // The address of a standby.
  static std::string StandbyAddress(Subprocess& p) {
    std::string line = p.WaitForLine("standby on ", absl::Seconds(30));
    return line.empty() ? "" : absl::StrCat("127.0.0.1:", line.substr(11));
  }
  static std::unique_ptr<v1::JobService::Stub> Jobs(const std::string& addr) {
    return v1::JobService::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  }
  static std::shared_ptr<grpc::Channel> Channel(const std::string& addr) {
    return grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
  }
  // Submits `n` one-step jobs in batches; returns the acknowledged job ids.
  static std::set<std::string> SubmitMany(v1::JobService::Stub& stub, int n,
                                          const std::string& tag) {
    std::set<std::string> acked;
    for (int done = 0; done < n;) {
      v1::SubmitJobsRequest req;
      req.set_batch_id(absl::StrCat(tag, "-", done));
      for (int i = 0; i < 1000 && done + i < n; ++i) {
        v1::SubmitJobRequest* r = req.add_jobs();
        r->set_request_id(absl::StrCat(tag, "-", done + i));
        r->mutable_spec()->set_prompt(absl::StrCat(tag, " job ", done + i));
        r->mutable_spec()->set_steps(1);
      }
      v1::SubmitJobsResponse resp;
      grpc::Status s = stub.SubmitJobs(DeadlineContext().get(), req, &resp);
      EXPECT_TRUE(s.ok()) << s.error_message();
      if (!s.ok()) return acked;
      for (const auto& j : resp.jobs()) acked.insert(j.job().job_id());
      done += req.jobs_size();
    }
    return acked;
  }
  std::string dir_;
  std::unique_ptr<PostgresServer> pg_;
  std::vector<std::unique_ptr<Subprocess>> procs_;
};

int QueuedJobs() {
  int n = 200;
  if (const char* env = std::getenv("ZFARM_HA_JOBS")) (void)absl::SimpleAtoi(env, &n);
  return n;
}

TEST_F(HaFailoverTest, Kill9OfTheActiveWithQueuedAnd2RunningStandbyTakesOverEachJobOnce) {
  const int queued = QueuedJobs(), total = queued + 2;
  Subprocess* a = Start("sched-a");
  const std::string addr_a = ActiveAddress(*a);
  ASSERT_FALSE(addr_a.empty()) << a->ReadLog();
  Subprocess* b = Start("sched-b", {"--http-listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0"});
  const std::string addr_b = StandbyAddress(*b);
  ASSERT_FALSE(addr_b.empty()) << b->ReadLog();
  const std::string rest = b->WaitForLine("REST gateway on port ", absl::Seconds(10));
  ASSERT_FALSE(rest.empty()) << b->ReadLog();
  const std::string readyz = absl::StrCat(
      "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:", rest.substr(21), "/readyz");
  const std::string metrics_line = b->WaitForLine("metrics on port ", absl::Seconds(10));
  ASSERT_FALSE(metrics_line.empty()) << b->ReadLog();
  const std::string active_metric =
      absl::StrCat("curl -s http://127.0.0.1:", metrics_line.substr(16),
                   "/metrics | grep '^zfarm_scheduler_active '");
  EXPECT_EQ(zfarm::testing::RunCommand(active_metric).out, "zfarm_scheduler_active 0\n");

  // The standby: NOT_SERVING (REST /readyz 503), and every job/worker call
  // UNAVAILABLE naming the active one.
  EXPECT_FALSE(ProbeHealth(addr_b, absl::Seconds(2), grpc::InsecureChannelCredentials()).ok());
  EXPECT_EQ(zfarm::testing::RunCommand(readyz).out, "503");
  {
    v1::SubmitJobRequest r;
    r.mutable_spec()->set_prompt("to the standby");
    v1::SubmitJobResponse resp;
    grpc::Status s = Jobs(addr_b)->SubmitJob(DeadlineContext().get(), r, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(s.error_message(),
                HasSubstr("scheduler sched-b is a standby; the active one is sched-a"));
    auto workers = v1::WorkerService::NewStub(Channel(addr_b));
    grpc::ClientContext ctx;
    auto stream = workers->Connect(&ctx);
    s = stream->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(s.error_message(), HasSubstr("the active one is sched-a"));
  }

  auto stub_a = Jobs(addr_a);
  std::set<std::string> acked = SubmitMany(*stub_a, total, "ha");
  ASSERT_EQ(acked.size(), static_cast<size_t>(total));
  v1::Lease running[2];
  {
    std::unique_ptr<FakeWorker> w[2];
    for (int i = 0; i < 2; ++i) {
      ASSERT_OK_AND_ASSIGN(w[i], FakeWorker::Connect(Channel(addr_a), WorkerOpts(absl::StrCat("w", i))));
      ASSERT_OK_AND_ASSIGN(running[i], w[i]->NextLease());
      ASSERT_OK(w[i]->Started(running[i].lease()));
    }
    std::map<v1::JobState, int> by_state = JobsByStateOnceRunning(*stub_a, 2);
    ASSERT_EQ(by_state[v1::JOB_STATE_QUEUED], queued);
    ASSERT_EQ(by_state[v1::JOB_STATE_RUNNING], 2);
    const int status = a->Stop(SIGKILL);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    for (auto& x : w) x->Disconnect();
  }
  const absl::Time killed = absl::Now();
  ASSERT_EQ(ActiveAddress(*b), addr_b) << b->ReadLog();
  while (!ProbeHealth(addr_b, absl::Seconds(1), grpc::InsecureChannelCredentials()).ok() &&
         absl::Now() - killed < absl::Seconds(30)) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  const absl::Duration serving = absl::Now() - killed;
  EXPECT_EQ(zfarm::testing::RunCommand(readyz).out, "200");  // the same REST port, now ready
  EXPECT_EQ(zfarm::testing::RunCommand(active_metric).out, "zfarm_scheduler_active 1\n");

  std::map<std::string, int> accepted;
  // w0 comes back (to the next address) holding its lease and finishes it there.
  FakeWorker::Options o0 = WorkerOpts("w0", 1);
  o0.held_leases.push_back(running[0].lease());
  ASSERT_OK_AND_ASSIGN(auto w0, FakeWorker::Connect(Channel(addr_b), o0));
  ASSERT_OK(w0->RunToSuccess(running[0], dir_ + "/out"));
  ++accepted[running[0].lease().job_id()];
  // A fresh worker gets a queued job: the new leader dispatches.
  ASSERT_OK_AND_ASSIGN(auto fresh, FakeWorker::Connect(Channel(addr_b), WorkerOpts("x0", 2)));
  ASSERT_OK_AND_ASSIGN(v1::Lease first, fresh->NextLease());
  const absl::Duration dispatching = absl::Now() - killed;
  ASSERT_OK(fresh->RunToSuccess(first, dir_ + "/out"));
  ++accepted[first.lease().job_id()];
  // w1 comes back without its lease: its late commit is refused (the job runs again).
  ASSERT_OK_AND_ASSIGN(auto w1, FakeWorker::Connect(Channel(addr_b), WorkerOpts("w1", 1)));
  ASSERT_OK_AND_ASSIGN(bool late, w1->Commit(running[1], dir_ + "/out"));
  EXPECT_FALSE(late) << "a lease from before the failover was accepted";

  std::vector<std::unique_ptr<FakeWorker>> fleet;
  fleet.push_back(std::move(w0));
  fleet.push_back(std::move(w1));
  fleet.push_back(std::move(fresh));
  for (int i = 1; i < 6; ++i) {
    ASSERT_OK_AND_ASSIGN(auto w, FakeWorker::Connect(Channel(addr_b), WorkerOpts(absl::StrCat("x", i), 2)));
    fleet.push_back(std::move(w));
  }
  EXPECT_EQ(DrainQueue(fleet, dir_ + "/out", &accepted), 0);

  auto stub_b = Jobs(addr_b);
  std::map<v1::JobState, int> by_state;
  std::set<std::string> seen;
  for (const v1::Job& j : AllJobs(*stub_b)) {
    ++by_state[j.state()];
    seen.insert(j.job_id());
  }
  EXPECT_EQ(by_state[v1::JOB_STATE_SUCCEEDED], total);
  EXPECT_EQ(seen, acked);
  EXPECT_EQ(accepted.size(), static_cast<size_t>(total));
  for (const auto& [id, n] : accepted) EXPECT_EQ(n, 1) << id << " committed " << n << " times";
  EXPECT_EQ(CountOutputs(dir_ + "/out"), (OutputCount{total, 0}));
  // The issue's bound, 10 s (flag-tunable: --leader-lease 2s + --leader-renew 0.5s here).
  EXPECT_LT(serving, absl::Seconds(10));
  EXPECT_LT(dispatching, absl::Seconds(10));
  RecordProperty("queued", queued);
  RecordProperty("serving_ms", static_cast<int>(absl::ToInt64Milliseconds(serving)));
  RecordProperty("dispatching_ms", static_cast<int>(absl::ToInt64Milliseconds(dispatching)));
  std::cout << "failover: serving after " << serving << ", first dispatch after " << dispatching
            << " (" << queued << " queued)" << std::endl;
  fleet.clear();
  const int status = b->Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

TEST_F(HaFailoverTest, PausedActivePastItsLeaseIsFencedStepsDownAndNothingIsDuplicated) {
  Subprocess* a = Start("sched-a");
  const std::string addr_a = ActiveAddress(*a);
  ASSERT_FALSE(addr_a.empty()) << a->ReadLog();
  Subprocess* b = Start("sched-b");
  const std::string addr_b = StandbyAddress(*b);
  ASSERT_FALSE(addr_b.empty()) << b->ReadLog();
  auto stub_a = Jobs(addr_a);
  std::set<std::string> acked = SubmitMany(*stub_a, 20, "paused");
  ASSERT_EQ(acked.size(), 20u);
  // The CLI with an address list, the standby first: refused there, accepted by a.
  auto cli = [](const std::string& args) {
    return zfarm::testing::RunCommand(absl::StrCat(ZFARM_CLI_BIN, " ", args, " 2>&1"));
  };
  auto r = cli("submit --prompt 'via the list, standby first' --scheduler " + addr_b + "," + addr_a);
  EXPECT_EQ(r.exit_code, 0) << r.out;

  a->Signal(SIGSTOP);
  ASSERT_EQ(ActiveAddress(*b), addr_b) << b->ReadLog();  // b took the expired lease
  a->Signal(SIGCONT);
  // a's first write after waking is refused inside its transaction (fenced): never OK.
  v1::SubmitJobRequest late;
  late.set_request_id("late");
  late.mutable_spec()->set_prompt("late write of the old leader");
  v1::SubmitJobResponse resp;
  grpc::Status s = stub_a->SubmitJob(DeadlineContext(5).get(), late, &resp);
  EXPECT_FALSE(s.ok()) << "the paused leader acknowledged " << resp.job().job_id();
  // It steps down: exit status 3.
  const int status = a->Wait(absl::Seconds(20));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 3) << status << a->ReadLog();
  EXPECT_THAT(a->ReadLog(), HasSubstr("stepping down"));
  // The same list after the failover: a is gone, b takes the submit.
  r = cli("submit --prompt 'via the list, after the failover' --scheduler " + addr_a + "," + addr_b);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  r = cli("health " + addr_a + "," + addr_b + " --timeout 2s");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr(addr_b + " SERVING"));

  std::vector<std::unique_ptr<FakeWorker>> fleet;
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(auto w, FakeWorker::Connect(Channel(addr_b), WorkerOpts(absl::StrCat("x", i), 2)));
    fleet.push_back(std::move(w));
  }
  std::map<std::string, int> accepted;
  EXPECT_EQ(DrainQueue(fleet, dir_ + "/out", &accepted), 0);
  auto stub_b = Jobs(addr_b);
  std::set<std::string> seen;
  for (const v1::Job& j : AllJobs(*stub_b)) {
    EXPECT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED) << j.job_id();
    EXPECT_NE(j.spec().prompt(), late.spec().prompt()) << "the fenced write reached the journal";
    seen.insert(j.job_id());
  }
  for (const std::string& id : acked) EXPECT_TRUE(seen.count(id)) << id;
  EXPECT_EQ(seen.size(), 22u);  // the 20 and the two CLI submits, not the fenced one
  EXPECT_EQ(accepted.size(), 22u);
  for (const auto& [id, n] : accepted) EXPECT_EQ(n, 1) << id;
  EXPECT_EQ(CountOutputs(dir_ + "/out"), (OutputCount{22, 0}));
}

TEST_F(HaFailoverTest, PostgresRestartUnderLoadFailsSubmitsUnavailableAndNeverAcknowledgesFalsely) {
  Subprocess* a = Start("sched-a");
  const std::string addr_a = ActiveAddress(*a);
  ASSERT_FALSE(addr_a.empty()) << a->ReadLog();
  auto stub = Jobs(addr_a);
  absl::Mutex mu;
  std::set<std::string> acked;
  std::map<grpc::StatusCode, int> codes;
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; !stop; ++i) {
        v1::SubmitJobRequest r;
        r.set_request_id(absl::StrCat("load-", c, "-", i));
        r.mutable_spec()->set_prompt(absl::StrCat("load ", c, "/", i));
        v1::SubmitJobResponse resp;
        grpc::Status s = stub->SubmitJob(DeadlineContext(5).get(), r, &resp);
        absl::MutexLock l(&mu);
        ++codes[s.error_code()];
        if (s.ok()) acked.insert(resp.job().job_id());
        if (!s.ok()) absl::SleepFor(absl::Milliseconds(20));
      }
    });
  }
  auto count = [&](grpc::StatusCode code) {
    absl::MutexLock l(&mu);
    return codes[code];
  };
  auto wait_for = [&](grpc::StatusCode code, int more) {
    const int target = count(code) + more;
    for (absl::Time end = absl::Now() + absl::Seconds(30); absl::Now() < end;) {
      if (count(code) >= target) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  };
  EXPECT_TRUE(wait_for(grpc::StatusCode::OK, 50));
  ASSERT_OK(pg_->Stop());
  EXPECT_TRUE(wait_for(grpc::StatusCode::UNAVAILABLE, 20));
  ASSERT_OK(pg_->StartServer());
  EXPECT_TRUE(wait_for(grpc::StatusCode::OK, 50)) << a->ReadLog();
  stop = true;
  for (auto& t : clients) t.join();
  {
    absl::MutexLock l(&mu);
    for (const auto& [code, n] : codes) {
      EXPECT_TRUE(code == grpc::StatusCode::OK || code == grpc::StatusCode::UNAVAILABLE)
          << "code " << code << " x" << n;
    }
  }
  // No false acknowledgement: a new leader, reading only PostgreSQL, has every
  // acknowledged job.
  a->Stop(SIGKILL);
  Subprocess* c = Start("sched-c");
  const std::string addr_c = ActiveAddress(*c);
  ASSERT_FALSE(addr_c.empty()) << c->ReadLog();
  std::set<std::string> stored;
  for (const v1::Job& j : AllJobs(*Jobs(addr_c))) stored.insert(j.job_id());
  for (const std::string& id : acked) EXPECT_TRUE(stored.count(id)) << id << " acknowledged, lost";
  RecordProperty("acked", static_cast<int>(acked.size()));
}

TEST_F(HaFailoverTest, BadJournalFailsStartupNamingTheFlagWithThePasswordMasked) {
  // Nobody listens there.
  Subprocess* p = Start("unreachable",
                        {absl::StrCat("--journal=postgres://zfarm@127.0.0.1:",
                                      PostgresServer::FreePort(), "/zfarm?connect_timeout=2")});
  int status = p->Wait(absl::Seconds(30));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  EXPECT_THAT(p->ReadLog(), AllOf(HasSubstr("--journal postgres://zfarm@127.0.0.1:"),
                                  HasSubstr("cannot connect")));
  // A password on the command line: refused (exit 2), masked.
  p = Start("in-url", {absl::StrCat("--journal=postgres://zfarm:", PostgresServer::kPassword,
                                    "@127.0.0.1:", pg_->port(), "/zfarm")});
  status = p->Wait(absl::Seconds(30));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << status;
  EXPECT_THAT(p->ReadLog(), AllOf(HasSubstr("zfarm:****@"), HasSubstr("--journal-password-file"),
                                  Not(HasSubstr(PostgresServer::kPassword))));
  // A wrong password in the file.
  std::ofstream(dir_ + "/wrong") << "not-the-Passw0rd\n";
  p = Start("wrong", {"--journal-password-file=" + dir_ + "/wrong"});
  status = p->Wait(absl::Seconds(30));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  EXPECT_THAT(p->ReadLog(), AllOf(HasSubstr("--journal postgres://"),
                                  HasSubstr("password authentication failed"),
                                  Not(HasSubstr("not-the-Passw0rd"))));
}

#ifdef ZFARM_WORKER_BIN
// The real `zfarm-worker serve` (tiny model, CPU) with an address list, the
// standby first: it passes the standby to the active one, and after kill -9 of
// the active one it moves on, is welcomed by the new active one with the job it
// holds, and every job renders once.
TEST_F(HaFailoverTest, RealWorkerWithAnAddressListFollowsTheFailoverEachJobOnce) {
  constexpr int kJobs = 12;
  Subprocess* a = Start("sched-a");
  const std::string addr_a = ActiveAddress(*a);
  ASSERT_FALSE(addr_a.empty()) << a->ReadLog();
  Subprocess* b = Start("sched-b");
  const std::string addr_b = StandbyAddress(*b);
  ASSERT_FALSE(addr_b.empty()) << b->ReadLog();
  Subprocess worker({ZFARM_WORKER_BIN, "serve", "--scheduler", addr_b + "," + addr_a, "--model",
                     ZFARM_TINY_MODEL_DIR, "--output-root", dir_ + "/out", "--name", "real-w",
                     "--device", "cpu"},
                    dir_ + "/worker.log");
  auto stub_a = Jobs(addr_a);
  for (int i = 0; i < kJobs; ++i) {
    v1::SubmitJobRequest r;
    r.set_request_id(absl::StrCat("real-", i));
    r.mutable_spec()->set_prompt(absl::StrCat("a lighthouse, variant ", i));
    r.mutable_spec()->set_width_px(256);
    r.mutable_spec()->set_height_px(256);
    r.mutable_spec()->set_steps(2);
    v1::SubmitJobResponse resp;
    grpc::Status s = stub_a->SubmitJob(DeadlineContext().get(), r, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  auto pngs = [&] {
    int n = 0;
    for (const auto& e : fs::recursive_directory_iterator(dir_ + "/out")) {
      n += e.is_regular_file() && e.path().extension() == ".png";
    }
    return n;
  };
  auto wait_until = [&](auto done, absl::Duration timeout) {
    for (absl::Time end = absl::Now() + timeout; absl::Now() < end;) {
      if (done()) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return done();
  };
  ASSERT_TRUE(wait_until([&] { return pngs() >= 3; }, absl::Seconds(120))) << worker.ReadLog();
  ASSERT_LT(pngs(), kJobs) << "the queue drained before the failover; raise kJobs";
  a->Stop(SIGKILL);
  ASSERT_EQ(ActiveAddress(*b), addr_b) << b->ReadLog();
  auto stub_b = Jobs(addr_b);
  auto succeeded = [&] {
    int n = 0;
    for (const v1::Job& j : AllJobs(*stub_b)) n += j.state() == v1::JOB_STATE_SUCCEEDED;
    return n;
  };
  EXPECT_TRUE(wait_until([&] { return succeeded() == kJobs; }, absl::Seconds(120)))
      << worker.ReadLog();
  EXPECT_EQ(pngs(), kJobs);  // one file per job: nothing rendered twice into a second file
  const std::string log = worker.ReadLog();
  EXPECT_THAT(log, HasSubstr("is a standby; the active one is sched-a"));  // passed b first
  EXPECT_THAT(log, HasSubstr("target=" + addr_a));
  int status = worker.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}
#endif  // ZFARM_WORKER_BIN

}  // namespace
}  // namespace zfarm::scheduler
