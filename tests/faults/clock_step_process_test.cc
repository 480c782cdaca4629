// Fault suite: the real zfarm-scheduler binary runs under libfaketime
// with only CLOCK_REALTIME faked (FAKETIME_DONT_FAKE_MONOTONIC=1), as an NTP step or
// an operator's `date -s` does. With three fake workers holding RUNNING jobs, the
// wall clock steps +2 h and later -2 h. Every job must finish exactly once (one
// accepted commit, one final file, attempt 1), and no worker may be declared lost.
// Probe jobs submitted after each step prove the binary really saw the step (their
// create_time follows the faked clock).
//
// libfaketime comes from the Debian `faketime` package (deploy/install-deps.sh); a
// missing library fails the test, it never skips.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using ::zfarm::testing::FakeWorker;
using ::zfarm::testing::Subprocess;

constexpr absl::Duration kLeaseTimeout = absl::Seconds(4);

// The path of libfaketime.so.1 from `dpkg -L libfaketime`, else "".
std::string FindLibFaketime() {
  std::string out;
  if (FILE* p = ::popen("dpkg -L libfaketime 2>/dev/null", "r")) {
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
    ::pclose(p);
  }
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (absl::EndsWith(line, "/libfaketime.so.1") && fs::exists(std::string(line))) {
      return std::string(line);
    }
  }
  for (const char* p : {"/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
                        "/usr/lib/faketime/libfaketime.so.1"}) {
    if (fs::exists(p)) return p;
  }
  return "";
}

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  return c;
}

absl::Time FromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

class ClockStepProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / absl::StrCat("zfarm-faults-clockstep-", getpid())).string();
    fs::remove_all(dir_);
    fs::create_directories(dir_ + "/out");
    offset_file_ = dir_ + "/faketime";
    SetOffset("+0");
  }
  void TearDown() override { fs::remove_all(dir_); }

  // libfaketime re-reads this file on every clock call (FAKETIME_NO_CACHE=1).
  void SetOffset(const std::string& spec) {
    const std::string tmp = offset_file_ + ".tmp";
    {
      std::ofstream f(tmp, std::ios::trunc);
      f << spec << "\n";
    }
    fs::rename(tmp, offset_file_);
  }

  // Right after a step: 1 s of silence (the heartbeat interval: a worker's last
  // message then predates the step, as in production, and the scheduler's 100 ms
  // ticker runs ~10 times), then heartbeats from every worker every 250 ms for `d` of
  // real time.
  void Pump(std::vector<std::unique_ptr<FakeWorker>>& ws, absl::Duration d) {
    absl::SleepFor(absl::Seconds(1));
    const absl::Time end = absl::Now() + d;
    while (absl::Now() < end) {
      for (auto& w : ws) ASSERT_OK(w->Heartbeat());
      absl::SleepFor(absl::Milliseconds(250));
    }
  }

  std::string Submit(v1::JobService::Stub& stub, const std::string& prompt, v1::Job* job = nullptr) {
    v1::SubmitJobRequest r;
    r.set_request_id("clockstep-" + prompt);
    r.mutable_spec()->set_prompt(prompt);
    r.mutable_spec()->set_steps(1);
    v1::SubmitJobResponse resp;
    grpc::Status s = stub.SubmitJob(Ctx().get(), r, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    if (job) *job = resp.job();
    return resp.job().job_id();
  }

  std::string dir_, offset_file_;
};

TEST_F(ClockStepProcessTest, WallClockStepsForwardAndBackWhileJobsRun) {
  const std::string lib = FindLibFaketime();
  ASSERT_FALSE(lib.empty()) << "libfaketime.so.1 not found (`dpkg -L libfaketime`): install the "
                               "Debian package `faketime` (deploy/install-deps.sh)";
  Subprocess p({"/usr/bin/env", "LD_PRELOAD=" + lib, "FAKETIME_TIMESTAMP_FILE=" + offset_file_,
                "FAKETIME_NO_CACHE=1", "FAKETIME_DONT_FAKE_MONOTONIC=1", ZFARM_SCHEDULER_BIN,
                "--listen=127.0.0.1:0", "--state-dir=" + dir_ + "/state",
                "--output-root=" + dir_ + "/out",
                absl::StrCat("--lease_timeout=", absl::FormatDuration(kLeaseTimeout)),
                "--heartbeat_interval=1s"},
               dir_ + "/scheduler.log");
  std::string line = p.WaitForLine("listening on ", absl::Seconds(30));
  ASSERT_FALSE(line.empty()) << p.ReadLog();
  auto channel = grpc::CreateChannel(line.substr(13), grpc::InsecureChannelCredentials());
  auto stub = v1::JobService::NewStub(channel);

  std::vector<std::unique_ptr<FakeWorker>> ws;
  for (int i = 0; i < 3; ++i) {
    FakeWorker::Options o;
    o.name = absl::StrCat("w", i);
    ASSERT_OK_AND_ASSIGN(auto w, FakeWorker::Connect(channel, o));
    ws.push_back(std::move(w));
  }
  std::vector<std::string> ids;
  for (int i = 0; i < 12; ++i) ids.push_back(Submit(*stub, absl::StrCat("job-", i)));

  std::map<std::string, int> accepted;  // job id -> accepted commits
  // Each worker starts one job; returns the leases.
  auto start_one_each = [&]() {
    std::vector<v1::Lease> leases;
    for (auto& w : ws) {
      auto l = w->NextLease();
      EXPECT_TRUE(l.ok()) << l.status();
      if (!l.ok()) continue;
      EXPECT_OK(w->Started(l->lease()));
      leases.push_back(*l);
    }
    return leases;
  };
  auto finish = [&](const std::vector<v1::Lease>& leases) {
    for (size_t i = 0; i < leases.size(); ++i) {
      EXPECT_OK(ws[i]->RunToSuccess(leases[i], dir_ + "/out"));
      ++accepted[leases[i].lease().job_id()];
    }
  };

  // Step +2 h with three jobs RUNNING; live for a lease timeout + 2 s of real time.
  std::vector<v1::Lease> first = start_one_each();
  ASSERT_EQ(first.size(), 3u);
  SetOffset("+7200");
  Pump(ws, kLeaseTimeout + absl::Seconds(1));
  v1::Job probe;
  ids.push_back(Submit(*stub, "probe-after-forward-step", &probe));
  EXPECT_GT(FromProto(probe.create_time()), absl::Now() + absl::Minutes(110))
      << "the scheduler did not see the +2 h step (libfaketime not effective?)";
  finish(first);

  // Step back -2 h (offset +0 again) with three more jobs RUNNING.
  std::vector<v1::Lease> second = start_one_each();
  ASSERT_EQ(second.size(), 3u);
  SetOffset("+0");
  Pump(ws, kLeaseTimeout + absl::Seconds(1));
  ids.push_back(Submit(*stub, "probe-after-backward-step", &probe));
  EXPECT_LT(absl::AbsDuration(FromProto(probe.create_time()) - absl::Now()), absl::Minutes(10))
      << "the scheduler did not see the -2 h step";
  finish(second);

  // Drain the rest.
  for (bool any = true; any;) {
    any = false;
    for (auto& w : ws) {
      auto l = w->NextLease(absl::Milliseconds(500));
      if (!l.ok()) continue;
      any = true;
      ASSERT_OK(w->RunToSuccess(*l, dir_ + "/out"));
      ++accepted[l->lease().job_id()];
    }
  }

  // Exactly once, first attempt, nobody lost.
  for (const auto& id : ids) {
    v1::GetJobRequest g;
    g.set_job_id(id);
    v1::Job j;
    ASSERT_TRUE(stub->GetJob(Ctx().get(), g, &j).ok()) << id;
    EXPECT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED) << id;
    EXPECT_EQ(j.attempt(), 1) << id << " was requeued";
    EXPECT_EQ(accepted[id], 1) << id;
  }
  EXPECT_EQ(accepted.size(), ids.size());
  int pngs = 0, other = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir_ + "/out")) {
    if (!e.is_regular_file()) continue;
    (e.path().extension() == ".png" ? pngs : other)++;
  }
  EXPECT_EQ(pngs, static_cast<int>(ids.size()));
  EXPECT_EQ(other, 0);
  // Read before the workers disconnect (a disconnect is logged as a lost worker).
  const std::string log = p.ReadLog();
  EXPECT_THAT(log, Not(HasSubstr("event=worker_lost"))) << log;
  EXPECT_THAT(log, Not(HasSubstr("event=job_requeued")));

  // The scheduler still expires leases after both steps (its ticker did not stall):
  // the worker that gets one more job starts it and goes silent while the other two
  // keep heartbeating.
  const std::string silent_job = Submit(*stub, "silent-worker-probe");
  int silent = -1;
  for (int tries = 0; silent < 0 && tries < 500; ++tries) {
    for (int i = 0; i < 3 && silent < 0; ++i) {
      if (ws[i]->PendingLeases() > 0) silent = i;
    }
    if (silent < 0) absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_GE(silent, 0) << "the probe job was not leased";
  ASSERT_OK_AND_ASSIGN(v1::Lease sl, ws[silent]->NextLease());
  ASSERT_EQ(sl.lease().job_id(), silent_job);
  ASSERT_OK(ws[silent]->Started(sl.lease()));
  const std::string needle = absl::StrCat("event=worker_lost worker=w", silent);
  bool lost = false;
  for (absl::Time end = absl::Now() + 5 * kLeaseTimeout; !lost && absl::Now() < end;) {
    for (int i = 0; i < 3; ++i) {
      if (i == silent) continue;
      ASSERT_OK(ws[i]->Heartbeat());
    }
    absl::SleepFor(absl::Milliseconds(250));
    lost = absl::StrContains(p.ReadLog(), needle);
  }
  EXPECT_TRUE(lost) << "a silent worker was not declared lost after the clock steps";
  std::vector<std::string> parts = absl::StrSplit(p.ReadLog(), "event=worker_lost");
  EXPECT_EQ(parts.size(), 2u) << "only the silent worker may be lost";
  ws.clear();
  int status = p.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

}  // namespace
}  // namespace zfarm::scheduler
