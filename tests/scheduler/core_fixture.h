#ifndef ZFARM_TESTS_SCHEDULER_CORE_FIXTURE_H_
#define ZFARM_TESTS_SCHEDULER_CORE_FIXTURE_H_

// A fixture for the Scheduler core with a FakeClock and in-memory worker/event
// sinks (no gRPC): a fresh state dir and output root per test, Open() (again, to
// restart on the same journal), submit / get / cancel helpers, and worker
// messages (Commit() claims what WriteResult() writes).

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "scheduler/scheduler.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::scheduler::core_testing {

namespace v1 = ::zfarm::v1;
using ::zfarm::testing::FakeClock;

class RecordingSink : public WorkerSink {
 public:
  void Send(const v1::SchedulerMessage& m) override {
    absl::MutexLock l(&mu_);
    msgs_.push_back(m);
  }
  void Close(const absl::Status& s) override {
    absl::MutexLock l(&mu_);
    closed_ = s;
  }
  std::vector<v1::Lease> TakeLeases() {
    absl::MutexLock l(&mu_);
    std::vector<v1::Lease> out;
    for (auto it = msgs_.begin(); it != msgs_.end();) {
      if (it->has_assignment()) {
        for (const auto& le : it->assignment().leases()) out.push_back(le);
        it = msgs_.erase(it);
      } else {
        ++it;
      }
    }
    return out;
  }
  std::vector<v1::SchedulerMessage> Take(v1::SchedulerMessage::MsgCase kind) {
    absl::MutexLock l(&mu_);
    std::vector<v1::SchedulerMessage> out;
    for (auto it = msgs_.begin(); it != msgs_.end();) {
      if (it->msg_case() == kind) {
        out.push_back(*it);
        it = msgs_.erase(it);
      } else {
        ++it;
      }
    }
    return out;
  }
  absl::Status closed() {
    absl::MutexLock l(&mu_);
    return closed_;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::SchedulerMessage> msgs_ ABSL_GUARDED_BY(mu_);
  absl::Status closed_ ABSL_GUARDED_BY(mu_);
};

class EventLog : public EventSink {
 public:
  void OnEvent(const v1::JobEvent& e) override {
    absl::MutexLock l(&mu_);
    events.push_back(e);
  }
  absl::Mutex mu_;
  std::vector<v1::JobEvent> events ABSL_GUARDED_BY(mu_);
};

template <typename T, typename F>
absl::StatusOr<T> Call(F&& f) {
  absl::Notification n;
  absl::StatusOr<T> out = absl::UnknownError("not called");
  f([&](absl::StatusOr<T> r) {
    out = std::move(r);
    n.Notify();
  });
  n.WaitForNotification();
  return out;
}

class SchedulerCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("core-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
            "-" + std::to_string(getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ / "out");
    options_.state_dir = (dir_ / "state").string();
    options_.output_root = (dir_ / "out").string();
  }
  void Open() {
    auto s = Scheduler::Create(options_, &clock_, nullptr);
    ASSERT_OK(s.status());
    sched_ = *std::move(s);
  }
  void TearDown() override {
    sched_.reset();
    std::filesystem::remove_all(dir_);
  }
  static v1::SubmitJobRequest Request(const std::string& request_id,
                                      const std::string& prompt = "a cat", int priority = 0,
                                      int size = 512) {
    v1::SubmitJobRequest r;
    r.set_request_id(request_id);
    r.mutable_spec()->set_prompt(prompt);
    r.mutable_spec()->set_priority(priority);
    r.mutable_spec()->set_width_px(size);
    r.mutable_spec()->set_height_px(size);
    r.mutable_spec()->set_steps(2);
    return r;
  }
  absl::StatusOr<v1::SubmitJobResponse> SubmitAs(const std::string& owner,
                                                 const v1::SubmitJobRequest& r) {
    return Call<v1::SubmitJobResponse>([&](auto cb) { sched_->Submit(r, owner, std::move(cb)); });
  }
  absl::StatusOr<v1::SubmitJobResponse> Submit(const std::string& request_id,
                                               const std::string& prompt = "a cat",
                                               int priority = 0, int size = 512) {
    return SubmitAs("anonymous", Request(request_id, prompt, priority, size));
  }
  absl::StatusOr<v1::Job> TryGet(const std::string& id) {
    return Call<v1::Job>([&](auto cb) { sched_->GetJob(id, std::move(cb)); });
  }
  v1::Job Get(const std::string& id) {
    auto j = TryGet(id);
    EXPECT_OK(j.status());
    return j.ok() ? *j : v1::Job();
  }
  absl::Status CancelJob(const std::string& id) {
    v1::CancelJobRequest c;
    c.set_job_id(id);
    return Call<v1::CancelJobResponse>([&](auto cb) { sched_->Cancel(c, std::move(cb)); }).status();
  }
  static v1::WorkerHello Hello(const std::string& name, int capacity = 1,
                               int64_t memory = int64_t{80} << 30) {
    v1::WorkerHello h;
    h.set_worker_name(name);
    h.set_capacity(capacity);
    h.set_memory_total_bytes(memory);
    h.set_model("z-image-turbo");
    return h;
  }
  uint64_t Connect(const std::string& name, std::shared_ptr<RecordingSink> sink, int capacity = 1,
                   int64_t memory = int64_t{80} << 30) {
    auto s = sched_->WorkerHello(Hello(name, capacity, memory), sink);
    EXPECT_OK(s.status());
    Sync();
    return s.ok() ? *s : 0;
  }
  void Sync() { ASSERT_OK(sched_->Flush()); }
  absl::Status Msg(uint64_t session, const v1::WorkerMessage& m) {
    absl::Status s = sched_->WorkerMessage(session, m);
    EXPECT_OK(sched_->Flush());
    return s;
  }
  static v1::WorkerMessage Started(const v1::LeaseId& l) {
    v1::WorkerMessage m;
    *m.mutable_started()->mutable_lease() = l;
    return m;
  }
  // What WriteResult() writes.
  static constexpr char kPng[] = "png";
  static constexpr char kPngSha256[] =
      "8f8cbb7dcf46e0bc7d53265749a6c17d116093a6ba95e442764060c76fd4a86c";
  static v1::WorkerMessage Commit(const v1::Lease& l) {
    v1::WorkerMessage m;
    *m.mutable_commit()->mutable_lease() = l.lease();
    m.mutable_commit()->mutable_result()->set_path(l.output_path());
    m.mutable_commit()->mutable_result()->set_size_bytes(3);
    m.mutable_commit()->mutable_result()->set_sha256(kPngSha256);
    return m;
  }
  static v1::WorkerMessage Finalized(const v1::LeaseId& l) {
    v1::WorkerMessage m;
    *m.mutable_finalized()->mutable_lease() = l;
    return m;
  }
  static v1::WorkerMessage Failure(const v1::LeaseId& l, v1::FailureReason r, bool retryable) {
    v1::WorkerMessage m;
    *m.mutable_failure()->mutable_lease() = l;
    m.mutable_failure()->mutable_error()->set_reason(r);
    m.mutable_failure()->mutable_error()->set_retryable(retryable);
    return m;
  }
  void WriteResult(const v1::Lease& l) {
    auto p = std::filesystem::path(options_.output_root) / l.output_path();
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << kPng;
  }

  FakeClock clock_;
  std::filesystem::path dir_;
  Scheduler::Options options_;
  std::unique_ptr<Scheduler> sched_;
};

}  // namespace zfarm::scheduler::core_testing

#endif  // ZFARM_TESTS_SCHEDULER_CORE_FIXTURE_H_
