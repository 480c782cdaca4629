// Fuzz target: the scheduler's handling of worker messages.
//
// Each input is a program run against a fresh Scheduler (journal on a temp state
// dir, FakeClock): a few jobs are submitted, then the bytes choose actions on 1-3
// worker sessions — Hello (any name/capacity/model/held leases), any WorkerMessage
// (built from the leases the session really received, from made-up leases, or
// parsed raw from the bytes), disconnects — plus submits, cancels and clock
// advances with Tick(). A non-OK WorkerMessage ends the session the way the
// gRPC server does (WorkerDisconnected).
//
// Invariants after every action (abort() on violation):
//   - no crash / sanitizer report;
//   - no job is held by two workers (ListWorkers' current_job_ids are disjoint),
//     no worker holds more than its capacity, and a job a worker holds is ASSIGNED
//     or RUNNING with job.worker == that worker; every ASSIGNED/RUNNING job is held;
//   - one lease (job, attempt) is never sent to two different workers;
//   - a job's attempt never decreases; final states (SUCCEEDED/FAILED/CANCELLED)
//     never change; SUCCEEDED only after that job's commit was accepted;
//   - after a restart on the same journal (at the end), every job is still there
//     and final jobs are unchanged.
//
// libFuzzer build (clang): -DZFARM_BUILD_FUZZERS=ON -> tests/fuzz/worker_message_fuzzer.
// Normal build: worker_message_fuzz_replay replays files/directories given on its
// command line (the committed seed corpus). The state dir lives under $TMPDIR
// (use /dev/shm for speed: the journal fsyncs).
#include <fuzzer/FuzzedDataProvider.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "glog/logging.h"
#include "google/protobuf/stubs/logging.h"
#include "proto/contract/contract.h"
#include "scheduler/scheduler.h"
#include "tests/testing/fake_clock.h"

namespace {

namespace v1 = ::zfarm::v1;
using ::zfarm::contract::IsFinal;
using ::zfarm::scheduler::Scheduler;

void Die(const std::string& what) {
  std::fprintf(stderr, "worker_message_fuzzer: invariant violated: %s\n", what.c_str());
  std::abort();
}

// Records what the scheduler sends on one session.
class Sink : public zfarm::scheduler::WorkerSink {
 public:
  void Send(const v1::SchedulerMessage& m) override {
    absl::MutexLock l(&mu_);
    if (m.has_assignment()) {
      for (const auto& lease : m.assignment().leases()) leases_.push_back(lease.lease());
    }
    if (m.has_commit_reply() && m.commit_reply().accepted()) {
      accepted_.push_back(m.commit_reply().lease());
    }
  }
  void Close(const absl::Status&) override {
    absl::MutexLock l(&mu_);
    closed_ = true;
  }
  std::vector<v1::LeaseId> leases() {
    absl::MutexLock l(&mu_);
    return leases_;
  }
  std::vector<v1::LeaseId> TakeAccepted() {
    absl::MutexLock l(&mu_);
    return std::exchange(accepted_, {});
  }
  bool closed() {
    absl::MutexLock l(&mu_);
    return closed_;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::LeaseId> leases_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::LeaseId> accepted_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

struct Session {
  uint64_t id = 0;  // 0 = not connected
  std::string name;
  std::shared_ptr<Sink> sink;
};

// gRPC parses every message: proto3 strings that are not UTF-8 never reach the
// scheduler. Messages that would not survive the wire are dropped here too.
template <typename M>
bool Transportable(const M& m) {
  M copy;
  return copy.ParseFromString(m.SerializeAsString());
}

const char* const kNames[] = {"w0", "w1", "w2", "w3"};
const char* const kModels[] = {"z-image-turbo", "", "other-model"};

std::string StateDir() {
  static const std::string dir = [] {
    const char* t = std::getenv("TMPDIR");
    std::string base = t && *t ? t : (std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp");
    return base + "/zfarm-wm-fuzz-" + std::to_string(getpid());
  }();
  return dir;
}

class Harness {
 public:
  explicit Harness(FuzzedDataProvider& in) : in_(in) {}

  void Run() {
    std::filesystem::remove_all(StateDir());
    Scheduler::Options o;
    o.state_dir = StateDir() + "/state";
    o.output_root = StateDir() + "/out";
    o.max_attempts = 1 + in_.ConsumeIntegralInRange(0, 3);
    o.max_queued_jobs = 50;
    std::filesystem::create_directories(o.output_root);
    options_ = o;
    auto s = Scheduler::Create(o, &clock_, nullptr);
    if (!s.ok()) Die("Create: " + std::string(s.status().message()));
    sched_ = std::move(*s);
    int initial = in_.ConsumeIntegralInRange(1, 6);
    for (int i = 0; i < initial; ++i) Submit();
    for (int steps = 0; steps < 64 && in_.remaining_bytes() > 0; ++steps) {
      Step();
      Check();
    }
    Restart();
    sched_.reset();
    std::filesystem::remove_all(StateDir());
  }

 private:
  void Submit() {
    v1::SubmitJobRequest r;
    r.mutable_spec()->set_prompt("p");
    r.mutable_spec()->set_steps(in_.ConsumeIntegralInRange(1, 4));
    int size = in_.ConsumeBool() ? 512 : 1024;
    r.mutable_spec()->set_width_px(size);
    r.mutable_spec()->set_height_px(size);
    if (in_.ConsumeBool()) r.mutable_spec()->set_model(kModels[in_.ConsumeIntegralInRange(0, 2)]);
    if (in_.ConsumeIntegralInRange(0, 7) == 0) {
      absl::Time d = clock_.Now() + absl::Seconds(in_.ConsumeIntegralInRange(1, 120));
      r.mutable_spec()->mutable_deadline()->set_seconds(absl::ToUnixSeconds(d));
    }
    if (in_.ConsumeBool()) r.set_request_id("r" + std::to_string(in_.ConsumeIntegralInRange(0, 9)));
    sched_->Submit(r, "fuzz", [this](absl::StatusOr<v1::SubmitJobResponse> resp) {
      if (resp.ok()) {
        absl::MutexLock l(&mu_);
        job_ids_.insert(resp->job().job_id());
      }
    });
    Flush();
  }

  void Flush() {
    // Every callback of everything appended so far has run once this returns.
    sched_->Flush().IgnoreError();
  }

  std::vector<std::string> JobIds() {
    absl::MutexLock l(&mu_);
    return {job_ids_.begin(), job_ids_.end()};
  }

  v1::LeaseId PickLease(Session& s) {
    v1::LeaseId id;
    std::vector<v1::LeaseId> got = s.sink ? s.sink->leases() : std::vector<v1::LeaseId>{};
    int how = in_.ConsumeIntegralInRange(0, 3);
    if (how <= 1 && !got.empty()) {
      id = got[in_.ConsumeIntegralInRange<size_t>(0, got.size() - 1)];
      if (how == 1) id.set_attempt(id.attempt() + in_.ConsumeIntegralInRange(-1, 1));
      return id;
    }
    std::vector<std::string> jobs = JobIds();
    if (how == 2 && !jobs.empty()) {
      id.set_job_id(jobs[in_.ConsumeIntegralInRange<size_t>(0, jobs.size() - 1)]);
    } else {
      id.set_job_id(in_.ConsumeRandomLengthString(12));
    }
    id.set_attempt(in_.ConsumeIntegralInRange(-1, 4));
    return id;
  }

  void Hello(Session& s) {
    v1::WorkerHello h;
    h.set_worker_name(in_.ConsumeIntegralInRange(0, 9) == 0
                          ? in_.ConsumeRandomLengthString(8)
                          : kNames[in_.ConsumeIntegralInRange(0, 3)]);
    h.set_version("fuzz");
    h.set_device("cpu");
    h.set_model(kModels[in_.ConsumeIntegralInRange(0, 2)]);
    h.set_memory_total_bytes(in_.ConsumeIntegralInRange<int64_t>(-1, int64_t{100} << 30));
    h.set_max_width_px(in_.ConsumeBool() ? 2048 : in_.ConsumeIntegralInRange(-1, 1024));
    h.set_max_height_px(in_.ConsumeBool() ? 2048 : in_.ConsumeIntegralInRange(-1, 1024));
    h.set_capacity(in_.ConsumeIntegralInRange(-1, 4));
    int held = in_.ConsumeIntegralInRange(0, 3);
    for (int i = 0; i < held; ++i) *h.add_held_leases() = PickLease(s);
    if (!Transportable(h)) return;
    if (s.id != 0) Disconnect(s);
    s.sink = std::make_shared<Sink>();
    auto r = sched_->WorkerHello(h, s.sink);
    if (r.ok()) {
      s.id = *r;
      s.name = h.worker_name();
    } else {
      s.id = 0;
    }
    Flush();
  }

  void Disconnect(Session& s) {
    if (s.id == 0) return;
    sched_->WorkerDisconnected(s.id, "fuzz");
    s.id = 0;
    Flush();
  }

  void Message(Session& s) {
    v1::WorkerMessage m;
    switch (in_.ConsumeIntegralInRange(0, 9)) {
      case 0:
        m.mutable_heartbeat()->set_memory_free_bytes(in_.ConsumeIntegral<int64_t>());
        break;
      case 1:
        *m.mutable_started()->mutable_lease() = PickLease(s);
        break;
      case 2: {
        auto* p = m.mutable_progress();
        *p->mutable_lease() = PickLease(s);
        p->set_step(in_.ConsumeIntegralInRange(-1, 5));
        p->set_total_steps(in_.ConsumeIntegralInRange(-1, 5));
        break;
      }
      case 3:
      case 4: {
        auto* c = m.mutable_commit();
        *c->mutable_lease() = PickLease(s);
        c->set_temp_path(in_.ConsumeRandomLengthString(16));
        c->mutable_result()->set_path(in_.ConsumeRandomLengthString(16));
        c->mutable_result()->set_size_bytes(in_.ConsumeIntegral<int64_t>());
        break;
      }
      case 5:
        *m.mutable_finalized()->mutable_lease() = PickLease(s);
        break;
      case 6: {
        auto* f = m.mutable_failure();
        *f->mutable_lease() = PickLease(s);
        f->mutable_error()->set_reason(
            static_cast<v1::FailureReason>(in_.ConsumeIntegralInRange(0, 12)));
        f->mutable_error()->set_retryable(in_.ConsumeBool());
        f->set_memory_required_bytes(in_.ConsumeIntegral<int64_t>());
        break;
      }
      case 7:
        m.mutable_status()->set_healthy(in_.ConsumeBool());
        break;
      case 8:
        *m.mutable_hello() = v1::WorkerHello();  // a second hello
        break;
      default: {
        std::string raw = in_.ConsumeRandomLengthString(64);
        if (!m.ParseFromString(raw)) m.Clear();
        break;
      }
    }
    if (!Transportable(m)) return;
    // Remember commits the scheduler accepts for this session (from the sink).
    absl::Status st = sched_->WorkerMessage(s.id, m);
    Flush();
    for (const auto& l : s.sink->TakeAccepted()) accepted_.insert({l.job_id(), l.attempt()});
    if (!st.ok()) Disconnect(s);  // the server ends the stream on an error
  }

  void Step() {
    Session& s = sessions_[in_.ConsumeIntegralInRange(0, 2)];
    switch (in_.ConsumeIntegralInRange(0, 15)) {
      case 0:
      case 1:
        Hello(s);
        break;
      case 2:
        Disconnect(s);
        break;
      case 3:
        Submit();
        break;
      case 4: {
        v1::CancelJobRequest c;
        std::vector<std::string> jobs = JobIds();
        if (jobs.empty()) break;
        c.set_job_id(jobs[in_.ConsumeIntegralInRange<size_t>(0, jobs.size() - 1)]);
        sched_->Cancel(c, [](absl::StatusOr<v1::CancelJobResponse>) {});
        Flush();
        break;
      }
      case 5: {
        // Clock jumps forwards (lease expiry, deadlines) and sometimes backwards.
        int64_t sec = in_.ConsumeIntegralInRange<int64_t>(-60, 90);
        clock_.Advance(absl::Seconds(sec));
        sched_->Tick();
        Flush();
        break;
      }
      case 6: {
        if (s.id == 0) break;
        auto d = sched_->DrainWorker(s.name);
        (void)d;
        Flush();
        break;
      }
      default:
        if (s.id == 0) {
          Hello(s);
        } else {
          Message(s);
        }
        break;
    }
  }

  std::vector<v1::Job> AllJobs() {
    std::vector<v1::Job> out;
    v1::ListJobsRequest r;
    r.set_page_size(1000);
    sched_->ListJobs(r, [&](absl::StatusOr<v1::ListJobsResponse> resp) {
      if (!resp.ok()) Die("ListJobs: " + std::string(resp.status().message()));
      out.assign(resp->jobs().begin(), resp->jobs().end());
    });
    Flush();
    return out;
  }

  void Check() {
    // Leases handed out: (job, attempt) -> worker name, never two names.
    for (Session& s : sessions_) {
      if (!s.sink) continue;
      for (const auto& l : s.sink->leases()) {
        auto [it, inserted] = lease_owner_.insert({{l.job_id(), l.attempt()}, s.name});
        if (!inserted && it->second != s.name) {
          Die("lease " + l.job_id() + "#" + std::to_string(l.attempt()) + " sent to " + it->second +
              " and " + s.name);
        }
      }
    }
    std::map<std::string, std::string> holder;
    for (const v1::WorkerInfo& w : sched_->ListWorkers()) {
      if (w.current_job_ids_size() > std::max(0, w.capacity())) {
        Die("worker " + w.worker_name() + " holds more than its capacity");
      }
      for (const auto& id : w.current_job_ids()) {
        auto [it, inserted] = holder.insert({id, w.worker_name()});
        if (!inserted) Die("job " + id + " held by " + it->second + " and " + w.worker_name());
      }
    }
    for (const v1::Job& j : AllJobs()) {
      const std::string& id = j.job_id();
      bool leased = j.state() == v1::JOB_STATE_ASSIGNED || j.state() == v1::JOB_STATE_RUNNING;
      auto h = holder.find(id);
      if (leased && (h == holder.end() || h->second != j.worker())) {
        Die("job " + id + " leased to '" + j.worker() + "' but not held by it");
      }
      if (!leased && h != holder.end()) Die("job " + id + " held but not leased");
      auto prev = last_.find(id);
      if (prev != last_.end()) {
        if (j.attempt() < prev->second.attempt()) Die("attempt decreased for " + id);
        if (IsFinal(prev->second.state()) &&
            prev->second.SerializeAsString() != Stable(j).SerializeAsString()) {
          Die("final job " + id + " changed");
        }
      }
      if (j.state() == v1::JOB_STATE_SUCCEEDED && !accepted_.count({id, j.attempt()})) {
        Die("job " + id + " SUCCEEDED without an accepted commit");
      }
      last_[id] = Stable(j);
    }
  }

  static v1::Job Stable(v1::Job j) {
    j.clear_queue_position();
    return j;
  }

  // Close and reopen on the same journal: every job back, final ones unchanged.
  void Restart() {
    sched_->Shutdown();
    sched_.reset();
    auto s = Scheduler::Create(options_, &clock_, nullptr);
    if (!s.ok()) Die("restart: " + std::string(s.status().message()));
    sched_ = std::move(*s);
    std::set<std::string> seen;
    for (const v1::Job& j : AllJobs()) {
      seen.insert(j.job_id());
      auto prev = last_.find(j.job_id());
      if (prev != last_.end() && IsFinal(prev->second.state()) &&
          prev->second.SerializeAsString() != Stable(j).SerializeAsString()) {
        Die("final job " + j.job_id() + " changed across a restart");
      }
    }
    for (const auto& [id, j] : last_) {
      if (!seen.count(id)) Die("job " + id + " lost across a restart");
    }
  }

  FuzzedDataProvider& in_;
  zfarm::testing::FakeClock clock_;
  Scheduler::Options options_;
  std::unique_ptr<Scheduler> sched_;
  Session sessions_[3];
  absl::Mutex mu_;
  std::set<std::string> job_ids_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, int>, std::string> lease_owner_;
  std::set<std::pair<std::string, int>> accepted_;
  std::map<std::string, v1::Job> last_;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // The scheduler logs every transition; ZFARM_FUZZ_LOG=1 shows them (to debug a finding).
  FLAGS_minloglevel = std::getenv("ZFARM_FUZZ_LOG") ? 0 : 3;
  FLAGS_logtostderr = true;
  google::protobuf::SetLogHandler(nullptr);  // Transportable() parses invalid UTF-8
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Harness(in).Run();
  return 0;
}

#ifndef ZFARM_LIBFUZZER
#include <fstream>
#include <iterator>

int main(int argc, char** argv) {
  LLVMFuzzerInitialize(&argc, &argv);
  int n = 0;
  for (int i = 1; i < argc; ++i) {
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(argv[i])) {
      for (const auto& e : std::filesystem::recursive_directory_iterator(argv[i])) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
    } else {
      files.emplace_back(argv[i]);
    }
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), {});
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      ++n;
    }
  }
  std::printf("worker_message_fuzz_replay: %d inputs, all invariants held\n", n);
  return n > 0 ? 0 : 1;
}
#endif
