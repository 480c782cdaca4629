// The worker runtime against the real scheduler (in-process, over loopback
// gRPC) with a scripted renderer: results, progress, cancel and deadline at a
// step boundary, failures and health, disconnects (re-adopted or refused),
// drain and shutdown.
#include "worker/runtime/worker.h"

#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/farm_client.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/scheduler_fixture.h"
#include "tests/testing/standby_scheduler.h"
#include "tests/testing/status_matchers.h"
#include "worker/io/png.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::worker {
namespace {

namespace v1 = ::zfarm::v1;
using ::zfarm::testing::FakeWorker;
using ::zfarm::testing::FarmClient;
using ::zfarm::testing::Spec;
using ::zfarm::testing::TestScheduler;

// Renders a deterministic pattern; can pause after a step until released, or
// fail with a scripted status.
class ScriptedRenderer : public Renderer {
 public:
  struct Script {
    absl::Mutex mu;
    int pause_after_step ABSL_GUARDED_BY(mu) = -1;
    bool paused ABSL_GUARDED_BY(mu) = false;
    bool released ABSL_GUARDED_BY(mu) = false;
    int failures_left ABSL_GUARDED_BY(mu) = 0;
    absl::Status fail_with ABSL_GUARDED_BY(mu);
    int renders ABSL_GUARDED_BY(mu) = 0;

    void Release() {
      absl::MutexLock l(&mu);
      released = true;
    }
    bool WaitPaused(absl::Duration d = absl::Seconds(10)) {
      absl::MutexLock l(&mu);
      return mu.AwaitWithTimeout(absl::Condition(&paused), d);
    }
  };

  explicit ScriptedRenderer(std::shared_ptr<Script> s) : s_(std::move(s)) {}

  absl::StatusOr<Image> Render(const GenerateRequest& r, const StepCallback& on_step,
                               const CancelToken* cancel) override {
    {
      absl::MutexLock l(&s_->mu);
      ++s_->renders;
      if (s_->failures_left > 0) {
        --s_->failures_left;
        return s_->fail_with;
      }
    }
    for (int step = 1; step <= r.steps; ++step) {
      if (cancel != nullptr && cancel->cancelled()) return absl::CancelledError("cancelled");
      if (on_step) on_step(step, r.steps);
      absl::MutexLock l(&s_->mu);
      if (step == s_->pause_after_step) {
        s_->paused = true;
        auto go = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s_->mu) {
          return s_->released || (cancel != nullptr && cancel->cancelled());
        };
        // The cancel token is an atomic: poll it while waiting.
        while (!s_->mu.AwaitWithTimeout(absl::Condition(&go), absl::Milliseconds(5))) {
        }
      }
    }
    if (cancel != nullptr && cancel->cancelled()) return absl::CancelledError("cancelled");
    Image img;
    img.width = r.width;
    img.height = r.height;
    img.rgb.resize(static_cast<size_t>(r.width) * r.height * 3);
    for (size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = static_cast<uint8_t>((i + r.seed) & 255);
    img.prompt_tokens = 7;
    return img;
  }
  DeviceMemory Memory() override { return {int64_t{8} << 30, int64_t{6} << 30, 1 << 20, 2 << 20}; }

 private:
  std::shared_ptr<Script> s_;
};

class WorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    zfarm::scheduler::ServerOptions so;
    so.scheduler.heartbeat_interval = absl::Milliseconds(200);
    so.scheduler.lease_timeout = absl::Seconds(30);
    ASSERT_OK_AND_ASSIGN(farm_, TestScheduler::Start(so));
    client_ = std::make_unique<FarmClient>(farm_->channel());
  }

  // `before`: scheduler addresses the worker tries before the farm's.
  std::unique_ptr<Worker> MakeWorker(const std::string& name, std::shared_ptr<ScriptedRenderer::Script> s,
                                     std::function<void(Worker::Options&)> tweak = nullptr,
                                     std::vector<std::string> before = {}) {
    Worker::Options o;
    o.name = name;
    o.output_root = farm_->output_root();
    o.model_fingerprint = "sha256:test";
    o.min_free_disk_bytes = 0;
    o.self_test_delay = absl::Milliseconds(50);
    o.self_test.width = o.self_test.height = 64;
    o.self_test.steps = 1;
    o.self_test.prompt = "self-test";
    if (tweak) tweak(o);
    SchedulerLink::Options l;
    l.targets = std::move(before);
    l.targets.push_back(farm_->address());
    l.initial_backoff = absl::Milliseconds(20);
    l.max_backoff = absl::Milliseconds(200);
    auto w = Worker::Create(o, std::make_unique<ScriptedRenderer>(s), l);
    EXPECT_OK(w.status());
    return w.ok() ? *std::move(w) : nullptr;
  }

  std::string Submit(int steps = 4, const std::string& prompt = "a cat",
                     std::function<void(v1::JobSpec&)> tweak = nullptr) {
    v1::JobSpec spec = Spec(prompt, 256, steps);
    if (tweak) tweak(spec);
    return client_->Submit(spec);
  }
  v1::Job GetJob(const std::string& id) { return client_->GetJob(id); }
  v1::Job WaitFinal(const std::string& id) { return client_->WaitFinal(id, absl::Seconds(15)); }
  v1::WorkerInfo WorkerInfo(const std::string& name) { return client_->Worker(name); }
  static bool WaitFor(const std::function<bool()>& pred) {
    return zfarm::testing::WaitFor(pred, absl::Seconds(15));
  }
  // The renderer pauses after `step` until released.
  static void PauseAfter(ScriptedRenderer::Script& s, int step) {
    absl::MutexLock l(&s.mu);
    s.pause_after_step = step;
  }

  // The output root's folder of a job's result (its UTC submit date).
  std::filesystem::path DateFolder(const std::string& id) {
    return std::filesystem::path(farm_->output_root()) /
           absl::FormatTime("%Y-%m-%d", absl::FromUnixSeconds(GetJob(id).create_time().seconds()),
                            absl::UTCTimeZone());
  }

  // Every regular file under the output root, relative.
  std::vector<std::string> Files() {
    std::vector<std::string> out;
    for (auto& e : std::filesystem::recursive_directory_iterator(farm_->output_root())) {
      if (e.is_regular_file()) {
        out.push_back(std::filesystem::relative(e.path(), farm_->output_root()).string());
      }
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  std::unique_ptr<TestScheduler> farm_;
  std::unique_ptr<FarmClient> client_;
};

TEST_F(WorkerTest, RendersCommitsAndReportsTheResult) {
  auto script = std::make_shared<ScriptedRenderer::Script>();
  auto w = MakeWorker("w1", script);
  w->Start();
  ASSERT_TRUE(WaitFor([&] { return w->Serving(); }));
  const std::string id = Submit(4, "a red fox");
  v1::Job j = WaitFinal(id);
  ASSERT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED) << j.DebugString();
  EXPECT_EQ(j.progress().step(), 4);
  EXPECT_EQ(j.progress().total_steps(), 4);
  EXPECT_EQ(j.worker(), "w1");
  EXPECT_EQ(j.result().model_fingerprint(), "sha256:test");
  // Exactly the final file: no temp file left behind.
  EXPECT_EQ(Files(), std::vector<std::string>{j.result().path()});
  std::ifstream in(farm_->output_root() + "/" + j.result().path(), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(static_cast<int64_t>(bytes.size()), j.result().size_bytes());
  ASSERT_OK_AND_ASSIGN(DecodedPng png, DecodePng(bytes));
  EXPECT_EQ(png.width, 256);
  bool has_params = false;
  for (const auto& [k, v] : png.text) {
    if (k == "parameters") has_params = v.find("a red fox") != std::string::npos;
  }
  EXPECT_TRUE(has_params);
  EXPECT_EQ(w->stats().images, 1);
  w->Shutdown();
}

// Another job's file at the output path survives: the worker's rename never
// replaces it (the job fails, not retried, naming the path), and a symlink planted
// at the worker's temporary name is not written through.
TEST_F(WorkerTest, AnExistingResultIsNeverReplacedAndAPlantedTempLinkIsNotFollowed) {
  namespace fs = std::filesystem;
  auto script = std::make_shared<ScriptedRenderer::Script>();
  PauseAfter(*script, 1);
  auto w = MakeWorker("w1", script);
  w->Start();
  const std::string id = Submit(2, "a cat", [](v1::JobSpec& s) { s.set_output_name("same"); });
  ASSERT_TRUE(script->WaitPaused());
  const fs::path dir = DateFolder(id);
  fs::create_directories(dir);
  std::ofstream(dir / "same.png") << "the earlier job's result";
  std::ofstream(fs::path(farm_->output_root()) / "victim") << "secret";
  fs::create_symlink(fs::path(farm_->output_root()) / "victim", dir / (id + ".1.tmp"));
  script->Release();
  v1::Job j = WaitFinal(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_FAILED) << j.DebugString();
  EXPECT_EQ(j.error().reason(), v1::FAILURE_REASON_OUTPUT_ERROR);
  EXPECT_THAT(j.error().message(), ::testing::HasSubstr("same.png already exists"));
  EXPECT_EQ(j.attempt(), 1);
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  };
  EXPECT_EQ(slurp(dir / "same.png"), "the earlier job's result");
  EXPECT_EQ(slurp(fs::path(farm_->output_root()) / "victim"), "secret");
  EXPECT_FALSE(fs::exists(fs::symlink_status(dir / (id + ".1.tmp"))));  // temp removed
  w->Shutdown();
}

// The output path is the lease's; its folder must resolve inside the output root
// (the scheduler's confinement check): a date folder that is a symlink out of the
// root gets nothing written through it, and the commit never names a path.
TEST_F(WorkerTest, AnOutputFolderLinkedOutOfTheRootIsRefused) {
  namespace fs = std::filesystem;
  auto script = std::make_shared<ScriptedRenderer::Script>();
  PauseAfter(*script, 1);
  auto w = MakeWorker("w1", script);
  w->Start();
  const std::string id = Submit(2, "a cat", [](v1::JobSpec& s) { s.set_output_name("escape"); });
  ASSERT_TRUE(script->WaitPaused());
  const fs::path outside = farm_->output_root() + "-outside";
  fs::create_directories(outside);
  const fs::path dir = DateFolder(id);
  fs::create_symlink(outside, dir);
  script->Release();
  v1::Job j = WaitFinal(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_FAILED) << j.DebugString();
  // An output error is retried (another attempt may find the folder fixed).
  EXPECT_EQ(j.error().reason(), v1::FAILURE_REASON_TOO_MANY_ATTEMPTS);
  EXPECT_THAT(j.error().message(), ::testing::HasSubstr("resolves outside the output root"));
  EXPECT_TRUE(fs::is_empty(outside));
  w->Shutdown();
  fs::remove_all(outside);
}

TEST_F(WorkerTest, CancelStopsTheRunningJobAtAStepBoundary) {
  auto script = std::make_shared<ScriptedRenderer::Script>();
  PauseAfter(*script, 2);
  auto w = MakeWorker("w1", script);
  w->Start();
  const std::string id = Submit(8);
  ASSERT_TRUE(script->WaitPaused());
  ASSERT_TRUE(WaitFor([&] { return GetJob(id).progress().step() == 2; }));
  ASSERT_TRUE(client_->Cancel(id));
  v1::Job j = WaitFinal(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(j.error().reason(), v1::FAILURE_REASON_CANCELLED_BY_CLIENT);
  EXPECT_LE(j.progress().step(), 3);
  EXPECT_TRUE(Files().empty());
  // The worker is still serving and takes the next job.
  PauseAfter(*script, -1);
  EXPECT_EQ(WaitFinal(Submit(2)).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(w->stats().failures, 0);  // a cancel is not a failure
  w->Shutdown();
}

TEST_F(WorkerTest, DeadlineCancelsAtTheNextStep) {
  auto script = std::make_shared<ScriptedRenderer::Script>();
  PauseAfter(*script, 1);
  auto w = MakeWorker("w1", script);
  w->Start();
  const absl::Time deadline = absl::Now() + absl::Milliseconds(300);
  const std::string id = Submit(8, "late", [&](v1::JobSpec& s) {
    *s.mutable_deadline() = google::protobuf::util::TimeUtil::MicrosecondsToTimestamp(
        absl::ToUnixMicros(deadline));
  });
  ASSERT_TRUE(script->WaitPaused());
  // Wait for the deadline to pass (the scheduler's tick or the worker's own
  // check at the next step, whichever is first), then let the step finish.
  ASSERT_TRUE(WaitFor([&] { return absl::Now() > deadline; }));
  script->Release();
  v1::Job j = WaitFinal(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(j.error().reason(), v1::FAILURE_REASON_DEADLINE_EXCEEDED);
  EXPECT_TRUE(Files().empty());
  w->Shutdown();
}

TEST_F(WorkerTest, OutOfMemoryFailsOnlyThatJobAndThreeFailuresMakeItUnhealthyUntilSelfTest) {
  auto script = std::make_shared<ScriptedRenderer::Script>();
  {
    absl::MutexLock l(&script->mu);
    script->failures_left = 1;
    script->fail_with = absl::ResourceExhaustedError("out of device memory at 256x256");
  }
  auto w = MakeWorker("w1", script, [](Worker::Options& o) {
    o.self_test_delay = absl::Seconds(3600);  // keep it unhealthy for the assertions below
  });
  w->Start();
  const std::string oom = Submit(2);
  // The scheduler retries OOM only on a worker with more memory: none here.
  ASSERT_TRUE(WaitFor([&] { return GetJob(oom).error().reason() == v1::FAILURE_REASON_OUT_OF_MEMORY; }));
  EXPECT_TRUE(w->Serving());
  EXPECT_EQ(WaitFinal(Submit(2)).state(), v1::JOB_STATE_SUCCEEDED);
  // Three model errors in a row: UNHEALTHY, no more assignments.
  {
    absl::MutexLock l(&script->mu);
    script->failures_left = 3;
    script->fail_with = absl::InternalError("cuda error: an illegal memory access");
  }
  // (The scheduler retries the retryable INTERNAL failures on the same free worker.)
  const std::string bad = Submit(2, "bad");
  ASSERT_TRUE(WaitFor([&] { return WorkerInfo("w1").state() == v1::WORKER_STATE_UNHEALTHY; }));
  EXPECT_EQ(WaitFinal(bad).error().reason(), v1::FAILURE_REASON_TOO_MANY_ATTEMPTS);
  EXPECT_FALSE(w->Serving());
  EXPECT_FALSE(w->stats().healthy);
  w->Shutdown(absl::Seconds(1));
}

TEST_F(WorkerTest, UnhealthyWorkerRecoversAfterASelfTest) {
  auto script = std::make_shared<ScriptedRenderer::Script>();
  {
    absl::MutexLock l(&script->mu);
    script->failures_left = 3;
    script->fail_with = absl::InternalError("transient device error");
  }
  auto w = MakeWorker("w1", script);
  w->Start();
  const std::string bad = Submit(1, "bad");
  ASSERT_TRUE(WaitFor([&] { return w->stats().failures >= 3; }));
  EXPECT_EQ(WaitFinal(bad).state(), v1::JOB_STATE_FAILED);
  // The self-test passes: READY again, and it renders the next job.
  ASSERT_TRUE(WaitFor([&] {
    return w->stats().healthy && WorkerInfo("w1").state() == v1::WORKER_STATE_READY;
  }));
  EXPECT_EQ(WaitFinal(Submit(1, "good")).state(), v1::JOB_STATE_SUCCEEDED);
  w->Shutdown();
}

TEST_F(WorkerTest, FullOutputDiskFailsTheJobBeforeRendering) {
  auto script = std::make_shared<ScriptedRenderer::Script>();
  auto w = MakeWorker("w1", script, [](Worker::Options& o) {
    o.min_free_disk_bytes = int64_t{1} << 60;  // more than any disk
  });
  w->Start();
  const std::string id = Submit(2);
  // OUTPUT_ERROR is retryable: after max_attempts the job is FAILED with the message.
  v1::Job j = WaitFinal(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(j.error().message().find("OUTPUT_ERROR"), std::string::npos) << j.error().message();
  EXPECT_NE(j.error().message().find("--min-free-disk-mb"), std::string::npos);
  EXPECT_TRUE(Files().empty());
  absl::MutexLock l(&script->mu);
  EXPECT_EQ(script->renders, 0);
  w->Shutdown(absl::Seconds(1));
}

TEST_F(WorkerTest, ShortDisconnectMidJobIsReadoptedAndCommitsOnce) {
  auto script = std::make_shared<ScriptedRenderer::Script>();
  PauseAfter(*script, 2);
  auto w = MakeWorker("w1", script);
  w->Start();
  const std::string id = Submit(4);
  ASSERT_TRUE(script->WaitPaused());
  w->link()->DropSessionForTesting();
  // The scheduler requeues the job; the worker reconnects holding the lease and
  // the scheduler gives it back (nobody else took it).
  ASSERT_TRUE(WaitFor([&] { return w->link()->sessions_welcomed() >= 2 && w->Serving(); }));
  script->Release();
  v1::Job j = WaitFinal(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Files(), std::vector<std::string>{j.result().path()});
  w->Shutdown();
}

TEST_F(WorkerTest, AWorkerGivenADownSchedulerAndAStandbyFirstServesTheActiveOne) {
  // A port nothing listens on, then a standby (UNAVAILABLE to everything), then the farm.
  std::string dead;
  {
    zfarm::testing::StandbyScheduler gone;
    dead = gone.address();
  }
  zfarm::testing::StandbyScheduler standby;
  auto script = std::make_shared<ScriptedRenderer::Script>();
  auto w = MakeWorker("w1", script, nullptr, {dead, standby.address()});
  w->Start();
  EXPECT_EQ(WaitFinal(Submit(2)).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(w->link()->current_target(), farm_->address());
  EXPECT_GE(standby.refused(), 1);
  EXPECT_EQ(w->link()->sessions_welcomed(), 1);
  w->Shutdown();
}

TEST_F(WorkerTest, CutOffWorkerWhoseJobWasReassignedHasItsLateCommitRefused) {
  auto script = std::make_shared<ScriptedRenderer::Script>();
  PauseAfter(*script, 2);
  auto w = MakeWorker("w1", script);
  w->Start();
  const std::string id = Submit(4);
  ASSERT_TRUE(script->WaitPaused());
  // A second worker is free when the first is lost: the job goes to it at once.
  FakeWorker::Options fo;
  fo.name = "w2";
  ASSERT_OK_AND_ASSIGN(auto w2, FakeWorker::Connect(farm_->channel(), fo));
  // Cut off (no quick reconnect, which would keep the lease as a session replacement).
  w->link()->PauseReconnectsForTesting(true);
  w->link()->DropSessionForTesting();
  ASSERT_OK_AND_ASSIGN(v1::Lease lease, w2->NextLease());
  w->link()->PauseReconnectsForTesting(false);
  EXPECT_EQ(lease.lease().job_id(), id);
  EXPECT_EQ(lease.lease().attempt(), 2);
  ASSERT_OK(w2->RunToSuccess(lease, farm_->output_root()));
  v1::Job j = WaitFinal(id);
  ASSERT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(j.worker(), "w2");
  // The cut-off worker finishes late: its commit is refused, its temp file deleted.
  script->Release();
  ASSERT_TRUE(WaitFor([&] { return w->stats().commits_refused == 1; }));
  EXPECT_EQ(Files(), std::vector<std::string>{j.result().path()});
  EXPECT_EQ(GetJob(id).worker(), "w2");
  w->Shutdown();
}

TEST_F(WorkerTest, DrainFinishesTheCurrentJobAndHandsBackThePrefetchedOne) {
  auto script = std::make_shared<ScriptedRenderer::Script>();
  PauseAfter(*script, 1);
  auto w = MakeWorker("w1", script);  // capacity 2: one running + one prefetched
  w->Start();
  const std::string a = Submit(2, "a"), b = Submit(2, "b");
  ASSERT_TRUE(script->WaitPaused());
  ASSERT_TRUE(WaitFor([&] { return GetJob(b).state() == v1::JOB_STATE_ASSIGNED; }));
  ASSERT_TRUE(client_->Drain("w1"));
  ASSERT_TRUE(WaitFor([&] { return GetJob(b).state() == v1::JOB_STATE_QUEUED; }));
  script->Release();
  EXPECT_TRUE(w->WaitDrained(absl::Seconds(10)));
  EXPECT_EQ(WaitFinal(a).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_FALSE(w->Serving());
  // The handed-back job runs elsewhere.
  FakeWorker::Options fo;
  fo.name = "w2";
  ASSERT_OK_AND_ASSIGN(auto w2, FakeWorker::Connect(farm_->channel(), fo));
  ASSERT_OK_AND_ASSIGN(v1::Lease lease, w2->NextLease());
  EXPECT_EQ(lease.lease().job_id(), b);
  w->Shutdown();
}

TEST_F(WorkerTest, ResumeAfterDrainTakesLeasesAgain) {
  auto script = std::make_shared<ScriptedRenderer::Script>();
  auto w = MakeWorker("w1", script);
  w->Start();
  ASSERT_TRUE(WaitFor([&] { return w->Serving(); }));
  ASSERT_TRUE(client_->Drain("w1"));
  ASSERT_TRUE(WaitFor([&] { return !w->Serving(); }));
  ASSERT_TRUE(client_->Resume("w1"));
  ASSERT_TRUE(WaitFor([&] { return w->Serving(); }));
  const std::string a = Submit(2, "after-resume");
  EXPECT_EQ(WaitFinal(a).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(GetJob(a).worker(), "w1");
  w->Shutdown();
}

TEST_F(WorkerTest, BusyWorkerStartsThePrefetchedJobWithoutARoundTrip) {
  auto script = std::make_shared<ScriptedRenderer::Script>();
  PauseAfter(*script, 1);
  auto w = MakeWorker("w1", script);
  w->Start();
  const std::string a = Submit(2, "a"), b = Submit(3, "b");
  ASSERT_TRUE(script->WaitPaused());
  // b is held by the worker (prefetched) while a renders.
  ASSERT_TRUE(WaitFor([&] { return GetJob(b).state() == v1::JOB_STATE_ASSIGNED; }));
  EXPECT_EQ(GetJob(b).worker(), "w1");
  script->Release();
  EXPECT_EQ(WaitFinal(a).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(WaitFinal(b).state(), v1::JOB_STATE_SUCCEEDED);
  // b started from the local queue: one measured gap, image out -> next render start.
  ASSERT_EQ(w->stats().gap_seconds.size(), 1u);
  EXPECT_GE(w->stats().gap_seconds[0], 0.0);
  w->Shutdown();
}

}  // namespace
}  // namespace zfarm::worker
