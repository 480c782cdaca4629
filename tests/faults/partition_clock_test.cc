// Fault suite, in process with a FakeClock (time driven by hand,
// no sleeps decide anything):
//   - a network partition between a fake worker and the scheduler, made by a TCP
//     proxy that stops forwarding (a blackhole, as a dropped link looks): the
//     worker's leases expire and are requeued, another worker finishes them, the
//     partitioned worker's late commit (after the link heals) is refused, and every
//     job has exactly one final file;
//   - the wall clock jumping backwards and forwards (FakeClock::JumpWall): no
//     lease-expiry storm, a dead worker still detected, deadlines honoured.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler {
namespace {

namespace fs = std::filesystem;
using ::zfarm::testing::FakeClock;
using ::zfarm::testing::FakeWorker;
using ::zfarm::testing::TestScheduler;

FakeWorker::Options WorkerOpts(const std::string& name, int capacity = 1) {
  FakeWorker::Options o;
  o.name = name;
  o.capacity = capacity;
  return o;
}

// A loopback TCP proxy to `target_port`. Partition() stops forwarding in both
// directions without closing anything (bytes stay in the kernel buffers, like a
// link that drops everything); Heal() resumes.
class Proxy {
 public:
  explicit Proxy(int target_port) : target_port_(target_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    ::listen(listen_fd_, 16);
    socklen_t len = sizeof(a);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }
  ~Proxy() {
    stop_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    ::close(listen_fd_);
    acceptor_.join();
    for (auto& t : pumps_) t.join();
    for (int fd : fds_) ::close(fd);
  }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  void Partition() { open_ = false; }
  void Heal() { open_ = true; }

 private:
  void AcceptLoop() {
    for (;;) {
      int c = ::accept(listen_fd_, nullptr, nullptr);
      if (c < 0) return;
      int s = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(target_port_));
      if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
        ::close(c);
        ::close(s);
        continue;
      }
      absl::MutexLock l(&mu_);
      fds_.push_back(c);
      fds_.push_back(s);
      pumps_.emplace_back([this, c, s] { Pump(c, s); });
      pumps_.emplace_back([this, c, s] { Pump(s, c); });
    }
  }
  void Pump(int from, int to) {
    char buf[16384];
    while (!stop_) {
      if (!open_) {  // partitioned: read nothing, forward nothing
        absl::SleepFor(absl::Milliseconds(5));
        continue;
      }
      pollfd p{from, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      ssize_t n = ::read(from, buf, sizeof(buf));
      if (n <= 0) {
        ::shutdown(to, SHUT_WR);
        return;
      }
      for (ssize_t off = 0; off < n;) {
        ssize_t w = ::write(to, buf + off, n - off);
        if (w <= 0) return;
        off += w;
      }
    }
  }

  const int target_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false}, open_{true};
  std::thread acceptor_;
  absl::Mutex mu_;
  std::vector<std::thread> pumps_;
  std::vector<int> fds_;
};

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return c;
}

class FaultsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions o;
    o.tick_interval = absl::InfiniteDuration();  // Tick() only when the test says
    ASSERT_OK_AND_ASSIGN(farm_, TestScheduler::Start(o, &clock_));
    jobs_ = v1::JobService::NewStub(farm_->channel());
  }

  std::string Submit(const std::string& prompt, std::optional<absl::Time> deadline = {}) {
    v1::SubmitJobRequest r;
    r.mutable_spec()->set_prompt(prompt);
    r.mutable_spec()->set_steps(1);
    if (deadline) r.mutable_spec()->mutable_deadline()->set_seconds(absl::ToUnixSeconds(*deadline));
    v1::SubmitJobResponse resp;
    grpc::Status s = jobs_->SubmitJob(Ctx().get(), r, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.job().job_id();
  }
  v1::Job Get(const std::string& id) {
    v1::GetJobRequest g;
    g.set_job_id(id);
    v1::Job j;
    EXPECT_TRUE(jobs_->GetJob(Ctx().get(), g, &j).ok());
    return j;
  }
  // Waits (bounded) until the job reaches `state`; transitions land asynchronously.
  v1::Job WaitFor(const std::string& id, v1::JobState state) {
    v1::Job j;
    for (int i = 0; i < 500; ++i) {
      j = Get(id);
      if (j.state() == state) break;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return j;
  }
  void Tick() {
    farm_->scheduler()->Tick();
    ASSERT_OK(farm_->scheduler()->Flush());
  }
  // Waits (bounded) until every connected worker's last message is from `t` (the
  // wall time, which stands still while waiting). Equality, not >=: after a backward
  // jump the last message before it lies in the "future".
  void WaitUntilSeenAt(absl::Time t) {
    for (int i = 0; i < 500; ++i) {
      bool all = true;
      for (const auto& w : farm_->scheduler()->ListWorkers()) {
        if (w.state() != v1::WORKER_STATE_LOST &&
            absl::FromUnixSeconds(w.last_seen_time().seconds()) +
                    absl::Nanoseconds(w.last_seen_time().nanos()) !=
                t) {
          all = false;
        }
      }
      if (all) return;
      absl::SleepFor(absl::Milliseconds(5));
    }
    ADD_FAILURE() << "heartbeats not seen";
  }
  std::map<std::string, v1::WorkerState> Workers() {
    std::map<std::string, v1::WorkerState> out;
    for (const auto& w : farm_->scheduler()->ListWorkers()) out[w.worker_name()] = w.state();
    return out;
  }

  FakeClock clock_;
  std::unique_ptr<TestScheduler> farm_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
};

TEST_F(FaultsTest, PartitionedWorkerIsRequeuedAndItsLateCommitRefused) {
  const std::string out = farm_->output_root();
  Proxy proxy(farm_->server()->port());
  auto via_proxy = grpc::CreateChannel(proxy.address(), grpc::InsecureChannelCredentials());
  ASSERT_OK_AND_ASSIGN(auto a, FakeWorker::Connect(via_proxy, WorkerOpts("a", 2)));
  std::vector<std::string> ids;
  for (int i = 0; i < 20; ++i) ids.push_back(Submit(absl::StrCat("p", i)));
  // a runs one job and has a second one prefetched.
  ASSERT_OK_AND_ASSIGN(v1::Lease running, a->NextLease());
  ASSERT_OK_AND_ASSIGN(v1::Lease prefetched, a->NextLease());
  ASSERT_OK(a->Started(running.lease()));
  ASSERT_EQ(WaitFor(running.lease().job_id(), v1::JOB_STATE_RUNNING).state(),
            v1::JOB_STATE_RUNNING);

  proxy.Partition();
  clock_.Advance(farm_->scheduler()->options().lease_timeout + absl::Seconds(1));
  Tick();
  EXPECT_EQ(Workers()["a"], v1::WORKER_STATE_LOST);
  EXPECT_EQ(Get(running.lease().job_id()).state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(Get(prefetched.lease().job_id()).state(), v1::JOB_STATE_QUEUED);

  // b (not partitioned) finishes everything, including a's two jobs.
  absl::Mutex mu;
  std::map<std::string, int> accepted;
  ASSERT_OK_AND_ASSIGN(auto b, FakeWorker::Connect(farm_->channel(), WorkerOpts("b", 2)));
  for (size_t n = 0; n < ids.size(); ++n) {
    ASSERT_OK_AND_ASSIGN(v1::Lease l, b->NextLease());
    // Each new lease has a new attempt, so a's old leases can never match it.
    if (l.lease().job_id() == running.lease().job_id() ||
        l.lease().job_id() == prefetched.lease().job_id()) {
      EXPECT_GT(l.lease().attempt(), running.lease().attempt());
    }
    ASSERT_OK(b->RunToSuccess(l, out));
    ++accepted[l.lease().job_id()];
  }
  for (const auto& id : ids) {
    EXPECT_EQ(WaitFor(id, v1::JOB_STATE_SUCCEEDED).state(), v1::JOB_STATE_SUCCEEDED) << id;
  }

  // The link heals; a reconnects (as a real worker does) still holding its leases,
  // and tries to commit what it rendered during the partition: refused.
  proxy.Heal();
  a.reset();
  FakeWorker::Options ao = WorkerOpts("a", 2);
  ao.held_leases = {running.lease(), prefetched.lease()};
  ASSERT_OK_AND_ASSIGN(auto a2, FakeWorker::Connect(via_proxy, ao));
  for (const v1::Lease& l : {running, prefetched}) {
    ASSERT_OK_AND_ASSIGN(bool ok, a2->Commit(l, out));
    EXPECT_FALSE(ok) << "stale lease " << l.lease().job_id() << " accepted after a partition";
  }
  // Exactly one final file per job, written by b; no temp file left.
  EXPECT_EQ(accepted.size(), ids.size());
  for (const auto& [id, n] : accepted) EXPECT_EQ(n, 1) << id;
  int pngs = 0, other = 0;
  for (const auto& e : fs::recursive_directory_iterator(out)) {
    if (!e.is_regular_file()) continue;
    (e.path().extension() == ".png" ? pngs : other)++;
  }
  EXPECT_EQ(pngs, static_cast<int>(ids.size()));
  EXPECT_EQ(other, 0);
}

TEST_F(FaultsTest, ClockJumpingBackwardsCausesNoLeaseExpiryStorm) {
  std::vector<std::unique_ptr<FakeWorker>> ws;
  std::vector<v1::Lease> leases;
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(auto w,
                         FakeWorker::Connect(farm_->channel(), WorkerOpts(absl::StrCat("w", i))));
    ws.push_back(std::move(w));
  }
  for (int i = 0; i < 6; ++i) Submit(absl::StrCat("p", i));
  for (auto& w : ws) {
    ASSERT_OK_AND_ASSIGN(v1::Lease l, w->NextLease());
    ASSERT_OK(w->Started(l.lease()));
    leases.push_back(l);
  }
  for (const auto& l : leases) WaitFor(l.lease().job_id(), v1::JOB_STATE_RUNNING);
  clock_.JumpWall(-absl::Hours(1));
  Tick();
  // Then 2 minutes of normal operation at the new time, heartbeats every 5 s.
  for (int i = 0; i < 24; ++i) {
    clock_.Advance(absl::Seconds(5));
    for (auto& w : ws) ASSERT_OK(w->Heartbeat());
    WaitUntilSeenAt(clock_.Now());  // heartbeats arrive asynchronously
    Tick();
  }
  for (const auto& [name, state] : Workers()) EXPECT_EQ(state, v1::WORKER_STATE_READY) << name;
  for (const auto& l : leases) {
    v1::Job j = Get(l.lease().job_id());
    EXPECT_EQ(j.state(), v1::JOB_STATE_RUNNING);
    EXPECT_EQ(j.attempt(), l.lease().attempt());
  }
  // The jobs finish normally: nothing was requeued, so nothing runs twice.
  for (size_t i = 0; i < ws.size(); ++i) {
    ASSERT_OK(ws[i]->RunToSuccess(leases[i], farm_->output_root()));
    EXPECT_EQ(WaitFor(leases[i].lease().job_id(), v1::JOB_STATE_SUCCEEDED).state(),
              v1::JOB_STATE_SUCCEEDED);
  }
}

TEST_F(FaultsTest, ClockJumpingForwardsHonoursDeadlines) {
  const absl::Time t0 = clock_.Now();
  std::string soon = Submit("soon", t0 + absl::Minutes(10));
  std::string later = Submit("later", t0 + absl::Hours(3));
  std::string none = Submit("no deadline");
  clock_.Advance(absl::Hours(1));
  Tick();
  v1::Job j = Get(soon);
  EXPECT_EQ(j.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(j.error().reason(), v1::FAILURE_REASON_DEADLINE_EXCEEDED);
  EXPECT_EQ(Get(later).state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(Get(none).state(), v1::JOB_STATE_QUEUED);
  clock_.Advance(absl::Hours(2) + absl::Seconds(1));
  Tick();
  EXPECT_EQ(Get(later).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Get(none).state(), v1::JOB_STATE_QUEUED);
}

// Fixed (was: Tick() measured worker silence with the wall clock, so a forward
// jump larger than the lease timeout declared every live worker lost — an expiry
// storm requeueing every RUNNING job with attempt + 1). Silence is now measured
// with Clock::MonotonicNow(), which a wall-clock step does not move.
TEST_F(FaultsTest, ClockJumpingForwardsDoesNotExpireLiveWorkers) {
  ASSERT_OK_AND_ASSIGN(auto w, FakeWorker::Connect(farm_->channel(), WorkerOpts("w")));
  Submit("p");
  ASSERT_OK_AND_ASSIGN(v1::Lease l, w->NextLease());
  ASSERT_OK(w->Started(l.lease()));
  WaitFor(l.lease().job_id(), v1::JOB_STATE_RUNNING);
  clock_.JumpWall(absl::Hours(1));  // NTP step; the worker's heartbeats stay on time
  Tick();
  EXPECT_EQ(Workers()["w"], v1::WORKER_STATE_READY);
  EXPECT_EQ(Get(l.lease().job_id()).state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(Get(l.lease().job_id()).attempt(), l.lease().attempt());
  // Real silence is still detected after the jump.
  clock_.Advance(farm_->scheduler()->options().lease_timeout + absl::Seconds(1));
  Tick();
  EXPECT_EQ(Workers()["w"], v1::WORKER_STATE_LOST);
  EXPECT_EQ(Get(l.lease().job_id()).state(), v1::JOB_STATE_QUEUED);
}

// Fixed (was: after a backward jump of one hour, a worker whose last message
// predated the jump was detected as lost only an hour later — its last_seen lay in
// the "future" — so its leases stayed stranded that long).
TEST_F(FaultsTest, WorkerDyingAtABackwardJumpIsStillDetected) {
  ASSERT_OK_AND_ASSIGN(auto w, FakeWorker::Connect(farm_->channel(), WorkerOpts("w")));
  Submit("p");
  ASSERT_OK_AND_ASSIGN(v1::Lease l, w->NextLease());
  ASSERT_OK(w->Started(l.lease()));
  WaitFor(l.lease().job_id(), v1::JOB_STATE_RUNNING);
  clock_.JumpWall(-absl::Hours(1));
  clock_.Advance(farm_->scheduler()->options().lease_timeout + absl::Seconds(1));
  Tick();  // w sent nothing since the jump
  EXPECT_EQ(Workers()["w"], v1::WORKER_STATE_LOST);
  EXPECT_EQ(Get(l.lease().job_id()).state(), v1::JOB_STATE_QUEUED);
}

// Regression (worker_message_fuzzer finding, fixed in d34c829): a new session that
// replaces a live session of the same worker keeps at most its new capacity of the
// leases it lists in held_leases; the rest are requeued.
TEST_F(FaultsTest, ReplacingSessionKeepsAtMostItsCapacity) {
  ASSERT_OK_AND_ASSIGN(auto w, FakeWorker::Connect(farm_->channel(), WorkerOpts("w", 3)));
  for (int i = 0; i < 3; ++i) Submit(absl::StrCat("p", i));
  std::vector<v1::Lease> held;
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(v1::Lease l, w->NextLease());
    held.push_back(l);
  }
  FakeWorker::Options again = WorkerOpts("w", 1);
  again.held_leases = {held[0].lease(), held[1].lease()};
  ASSERT_OK_AND_ASSIGN(auto w2, FakeWorker::Connect(farm_->channel(), again));
  for (const auto& info : farm_->scheduler()->ListWorkers()) {
    if (info.worker_name() == "w") {
      EXPECT_LE(info.current_job_ids_size(), 1);
    }
  }
}

}  // namespace
}  // namespace zfarm::scheduler
