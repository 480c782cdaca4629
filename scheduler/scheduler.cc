#include "scheduler/scheduler.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "glog/logging.h"
#include "google/protobuf/util/time_util.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "proto/files.h"
#include "proto/security/paths.h"
#include "proto/status_macros.h"

namespace zfarm::scheduler {

namespace v1 = ::zfarm::v1;
using google::protobuf::util::TimeUtil;

namespace {

// Retention caps: when `items` (time, id) hold more than `cap` (> 0), moves the
// ids of the oldest surplus into `out`; returns how many.
int64_t TakeOldestBeyond(int64_t cap, std::vector<std::pair<absl::Time, std::string>>* items,
                         std::vector<std::string>* out) {
  const int64_t surplus = static_cast<int64_t>(items->size()) - cap;
  if (cap <= 0 || surplus <= 0) return 0;
  std::nth_element(items->begin(), items->begin() + surplus, items->end());
  for (int64_t i = 0; i < surplus; ++i) out->push_back(std::move((*items)[i].second));
  return surplus;
}

google::protobuf::Timestamp ToProto(absl::Time t) {
  return TimeUtil::MicrosecondsToTimestamp(absl::ToUnixMicros(t));
}
absl::Time FromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixMicros(TimeUtil::TimestampToMicroseconds(t));
}
bool IsFinal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}
bool Leased(v1::JobState s) { return s == v1::JOB_STATE_ASSIGNED || s == v1::JOB_STATE_RUNNING; }
// FAILED and CANCELLED jobs wrote no result: their output path is free again.
bool ReleasesOutput(v1::JobState s) {
  return s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}
// The extension follows the job's output format (the worker checks it does).
std::string OutputPathFor(absl::Time submit_time, const std::string& name, v1::OutputFormat format) {
  const char* ext = format == v1::OUTPUT_FORMAT_JPEG ? ".jpg"
                    : format == v1::OUTPUT_FORMAT_WEBP ? ".webp"
                                                       : ".png";
  return absl::StrCat(absl::FormatTime("%Y-%m-%d", submit_time, absl::UTCTimeZone()), "/", name,
                      ext);
}

}  // namespace

struct Scheduler::Worker {
  v1::WorkerHello hello;
  v1::WorkerState state = v1::WORKER_STATE_READY;
  uint64_t session = 0;
  std::shared_ptr<WorkerSink> sink;
  std::set<std::string> leases;                   // job ids
  absl::Time connect_time, last_seen, lost_time;  // wall: shown to users
  absl::Time last_seen_mono, lost_mono;           // monotonic: silence, lost TTL
  int64_t jobs_done = 0, jobs_failed = 0;
  int consecutive_failures = 0;
};

struct Scheduler::Txn {
  std::vector<Journal::Op> ops;
  std::vector<absl::AnyInvocable<void() &&>> after;
};

struct Scheduler::Subscribers {
  using List = std::vector<std::shared_ptr<EventSink>>;
  absl::flat_hash_map<std::string, List> by_job, by_batch, by_label;
  static void Erase(absl::flat_hash_map<std::string, List>& m,
                    const std::shared_ptr<EventSink>& s) {
    for (auto it = m.begin(); it != m.end();) {
      auto& l = it->second;
      l.erase(std::remove(l.begin(), l.end(), s), l.end());
      if (l.empty()) {
        m.erase(it++);
      } else {
        ++it;
      }
    }
  }
};

struct Scheduler::Metrics {
  explicit Metrics(std::shared_ptr<prometheus::Registry> r) : registry(std::move(r)) {
    if (!registry) registry = std::make_shared<prometheus::Registry>();
    depth = &prometheus::BuildGauge()
                 .Name("zfarm_queue_depth")
                 .Help("QUEUED jobs by priority level")
                 .Register(*registry);
    jobs = &prometheus::BuildGauge()
                .Name("zfarm_jobs")
                .Help("Jobs in the journal by state")
                .Register(*registry);
    workers = &prometheus::BuildGauge()
                   .Name("zfarm_workers")
                   .Help("Workers by state")
                   .Register(*registry);
    auto& submits_f = prometheus::BuildCounter()
                          .Name("zfarm_submits_total")
                          .Help("Jobs accepted (new)")
                          .Register(*registry);
    submits = &submits_f.Add({});
    auto& rej = prometheus::BuildCounter()
                    .Name("zfarm_submit_rejections_total")
                    .Help("Rejected submits by reason")
                    .Register(*registry);
    rejected_invalid = &rej.Add({{"reason", "invalid_argument"}});
    rejected_full = &rej.Add({{"reason", "queue_full"}});
    rejected_conflict = &rej.Add({{"reason", "request_id_conflict"}});
    prometheus::Histogram::BucketBoundaries b = {0.001, 0.01, 0.1, 0.5, 1,   2,   5,
                                                 10,    30,   60,  300, 900, 3600};
    queue_wait = &prometheus::BuildHistogram()
                      .Name("zfarm_queue_wait_seconds")
                      .Help("Time from submit (or requeue) to assignment")
                      .Register(*registry)
                      .Add({}, b);
    run_time = &prometheus::BuildHistogram()
                    .Name("zfarm_run_time_seconds")
                    .Help("Time from RUNNING to SUCCEEDED")
                    .Register(*registry)
                    .Add({}, b);
    for (int s = v1::JobState_MIN; s <= v1::JobState_MAX; ++s) {
      if (s == 0) continue;
      job_state[s] = &jobs->Add({{"state", v1::JobState_Name(s)}});
    }
    for (int s = v1::WorkerState_MIN; s <= v1::WorkerState_MAX; ++s) {
      if (s == 0) continue;
      worker_state[s] = &workers->Add({{"state", v1::WorkerState_Name(s)}});
    }
  }
  std::shared_ptr<prometheus::Registry> registry;
  prometheus::Family<prometheus::Gauge>*depth, *jobs, *workers;
  std::map<int, prometheus::Gauge*> depth_by_priority, job_state, worker_state;
  prometheus::Counter *submits, *rejected_invalid, *rejected_full, *rejected_conflict;
  prometheus::Histogram *queue_wait, *run_time;
};

Scheduler::Scheduler(const Options& options, Clock* clock, std::unique_ptr<Journal> journal)
    : options_(options),
      clock_(clock),
      journal_(std::move(journal)),
      queue_(options.aging_per_minute),
      subs_(std::make_unique<Subscribers>()) {}

Scheduler::~Scheduler() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(
    const Options& options, Clock* clock, std::shared_ptr<prometheus::Registry> registry) {
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError("--max-attempts must be >= 1");
  }
  if (options.max_queued_jobs < 1) {
    return absl::InvalidArgumentError("--max-queued-jobs must be >= 1");
  }
  Journal::Options jo;
  jo.state_dir = options.state_dir;
  jo.fake_fs_type = options.fake_fs_type;
  ZFARM_ASSIGN_OR_RETURN(std::unique_ptr<Journal> journal, Journal::Open(jo));
  std::unique_ptr<Scheduler> s(new Scheduler(options, clock, std::move(journal)));
  s->metrics_ = std::make_unique<Metrics>(std::move(registry));
  ZFARM_RETURN_IF_ERROR(s->Recover());
  return s;
}

absl::Status Scheduler::Recover() {
  ZFARM_ASSIGN_OR_RETURN(Journal::Contents contents, journal_->Load());
  {
    absl::MutexLock lock(&mu_);
    Txn txn;
    RebuildLocked(std::move(contents), txn);
    CommitTxn(txn, nullptr);
  }
  return journal_->Flush();
}

void Scheduler::RebuildLocked(Journal::Contents contents, Txn& txn) {
  int requeued = 0;
  for (JobRecord& r : contents.jobs) {
    next_seq_ = std::max(next_seq_, r.seq + 1);
    const std::string id = r.job.job_id();
    by_seq_[r.seq] = id;
    auto [it, inserted] = jobs_.emplace(id, std::move(r));
    JobRecord& rec = it->second;
    if (!rec.job.spec().output_name().empty()) outputs_[OutputPath(rec)] = id;
    if (Leased(rec.job.state())) {
      ++requeued;
      if (rec.commit_pending && VerifyResult(rec.job.result()).ok()) {
        FinishLocked(rec, v1::JOB_STATE_SUCCEEDED, v1::FAILURE_REASON_UNSPECIFIED, "", txn);
        continue;
      }
      rec.commit_pending = false;
      rec.job.clear_result();
      if (rec.cancel_requested) {
        FinishLocked(rec, v1::JOB_STATE_CANCELLED, rec.job.error().reason(),
                     rec.job.error().message(), txn);
        continue;
      }
      rec.job.set_state(v1::JOB_STATE_QUEUED);
      rec.job.clear_worker();
      rec.job.clear_progress();
      txn.ops.push_back({Journal::Op::Kind::kPutJob, rec, {}, {}});
    }
    if (rec.job.state() == v1::JOB_STATE_QUEUED) EnqueueLocked(rec);
    if (!IsFinal(rec.job.state()) && rec.job.spec().has_deadline()) {
      deadlines_.emplace(FromProto(rec.job.spec().deadline()), id);
    }
  }
  for (RequestRecord& r : contents.requests) {
    if (r.owner.empty()) {
      // Written before request ids were scoped to their principal (schema v3):
      // scope it to its job's owner. Without its job the owner is unknown and the
      // tombstone matches nobody until it expires.
      auto j = jobs_.find(r.job_id);
      if (j != jobs_.end()) {
        txn.ops.push_back({Journal::Op::Kind::kDeleteRequest, {}, r, {}});
        r.owner = j->second.job.owner();
        txn.ops.push_back({Journal::Op::Kind::kPutRequest, {}, r, {}});
      }
    }
    RequestKey key{r.owner, r.request_id};
    requests_[std::move(key)] = std::move(r);
  }
  for (WorkerRecord& w : contents.workers) worker_owners_[w.worker_name] = std::move(w.principal);
  LOG(INFO) << "event=recovered jobs=" << jobs_.size() << " queued=" << queue_.size()
            << " requeued=" << requeued << " tombstones=" << requests_.size()
            << " workers=" << worker_owners_.size() << " journal=" << journal_->path();
}

absl::Status Scheduler::JournalFailure() const {
  absl::MutexLock lock(&fail_mu_);
  return journal_failure_;
}

void Scheduler::ReloadAfterJournalFailure() {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    // Their leases may rest on transitions that never reached the disk: they
    // reconnect and re-adopt what the journal says they hold (as after a restart).
    for (auto& [session, w] : sessions_) {
      if (w->sink) {
        w->sink->Close(absl::UnavailableError(
            "the scheduler is reloading its journal after a failed write; reconnect"));
      }
      w->sink.reset();
      w->state = v1::WORKER_STATE_LOST;
      w->lost_time = clock_->Now();
      w->lost_mono = clock_->MonotonicNow();
      w->leases.clear();
    }
    sessions_.clear();
    free_workers_.clear();
  }
  // Nothing new is appended meanwhile (CommitTxn refuses): this drains the
  // batches that were queued behind the failed write (they fail too).
  journal_->Flush().IgnoreError();
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  journal_->ClearFailure();
  absl::StatusOr<Journal::Contents> contents = journal_->Load();
  if (!contents.ok()) {
    LOG(ERROR) << "event=journal_reload_failed journal=" << journal_->path() << " error=\""
               << contents.status() << "\"";
    absl::MutexLock f(&fail_mu_);
    journal_failure_ = absl::UnavailableError(
        absl::StrCat("journal: cannot reload after a failed write: ", contents.status().message()));
    return;
  }
  for (const auto& [id, r] : jobs_) queue_.Remove(id);
  jobs_.clear();
  by_seq_.clear();
  requests_.clear();
  deadlines_.clear();
  outputs_.clear();
  worker_owners_.clear();
  Txn txn;
  RebuildLocked(*std::move(contents), txn);
  {
    absl::MutexLock f(&fail_mu_);
    journal_failure_ = absl::OkStatus();
  }
  LOG(WARNING) << "event=journal_reloaded journal=" << journal_->path() << " jobs=" << jobs_.size();
  CommitTxn(txn, nullptr);
}

void Scheduler::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  journal_->Flush().IgnoreError();
  journal_->Close();
}

absl::Status Scheduler::Flush() { return journal_->Flush(); }

int64_t Scheduler::QueuedJobs() {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

// ---------------------------------------------------------------- helpers

void Scheduler::CommitTxn(Txn& txn, absl::AnyInvocable<void(absl::Status) &&> done) {
  if (txn.ops.empty() && txn.after.empty() && !done) return;
  if (absl::Status f = JournalFailure(); !f.ok()) {
    // Memory may be ahead of the disk until the reload: write and tell nothing.
    txn = Txn();
    if (done) std::move(done)(f);
    return;
  }
  const bool writes = !txn.ops.empty();  // a barrier proves nothing about the disk
  journal_->Append(std::move(txn.ops), [this, writes, after = std::move(txn.after),
                                        done = std::move(done)](absl::Status s) mutable {
    if (s.ok()) {
      if (writes) {
        absl::MutexLock lock(&fail_mu_);
        write_failures_ = 0;
      }
      for (auto& f : after) std::move(f)();
    } else {
      absl::MutexLock lock(&fail_mu_);
      if (journal_failure_.ok()) {
        journal_failure_ = absl::UnavailableError(absl::StrCat(
            "journal write failed (", s.message(),
            "); the scheduler is reloading its state from the journal, retry"));
      }
      // 0, 0.1 s, 0.2 s, ... 10 s between reloads while writes keep failing.
      const int n = ++write_failures_;
      const absl::Duration backoff =
          n <= 1 ? absl::ZeroDuration()
                 : std::min(absl::Milliseconds(100) * (int64_t{1} << std::min(n - 2, 7)),
                            absl::Seconds(10));
      reload_at_ = clock_->MonotonicNow() + backoff;
    }
    if (done) std::move(done)(s);
  });
  txn = Txn();
}

v1::Job Scheduler::ViewLocked(const JobRecord& r) const {
  v1::Job j = r.job;
  j.set_queue_position(r.job.state() == v1::JOB_STATE_QUEUED ? queue_.Position(r.job.job_id())
                                                             : -1);
  return j;
}

void Scheduler::PutLocked(const JobRecord& r, Txn& txn, v1::JobEventType type) {
  if (type != v1::JOB_EVENT_TYPE_PROGRESS) {
    txn.ops.push_back({Journal::Op::Kind::kPutJob, r, {}, {}});
  }
  Subscribers::List sinks;
  auto add = [&](const absl::flat_hash_map<std::string, Subscribers::List>& m,
                 const std::string& key) {
    auto it = m.find(key);
    if (it != m.end()) sinks.insert(sinks.end(), it->second.begin(), it->second.end());
  };
  add(subs_->by_job, r.job.job_id());
  if (!r.job.batch_id().empty()) add(subs_->by_batch, r.job.batch_id());
  for (const auto& [k, v] : r.job.spec().labels()) add(subs_->by_label, absl::StrCat(k, "=", v));
  if (sinks.empty()) return;
  std::sort(sinks.begin(), sinks.end());
  sinks.erase(std::unique(sinks.begin(), sinks.end()), sinks.end());
  v1::JobEvent ev;
  ev.set_type(type);
  *ev.mutable_job() = ViewLocked(r);
  *ev.mutable_event_time() = ToProto(clock_->Now());
  txn.after.push_back([sinks = std::move(sinks), ev = std::move(ev)]() mutable {
    for (auto& s : sinks) s->OnEvent(ev);
  });
}

void Scheduler::EnqueueLocked(JobRecord& r) {
  queue_.Push(r.job.job_id(), r.job.spec().priority(), r.seq, FromProto(r.job.create_time()),
              r.job.owner());
}

std::string Scheduler::OutputPath(const JobRecord& r) const {
  return OutputPathFor(FromProto(r.job.create_time()),
                       r.job.spec().output_name().empty() ? r.job.job_id()
                                                          : r.job.spec().output_name(),
                       r.job.spec().output_format());
}

absl::Status Scheduler::OutputPathFreeLocked(const std::string& path, const std::string& owner,
                                             const std::string& field) const {
  if (auto it = outputs_.find(path); it != outputs_.end()) {
    auto j = jobs_.find(it->second);
    if (j != jobs_.end() && !ReleasesOutput(j->second.job.state())) {
      return absl::AlreadyExistsError(absl::StrCat(
          field, "spec.output_name: ", path, " is already the output of ",
          j->second.job.owner() == owner ? absl::StrCat("job ", j->first)
                                         : std::string("another principal's job"),
          "; choose another output_name"));
    }
  }
  // The output root is not looked at here: a pruned job's file can only collide
  // after an early prune, and the worker's no-replace rename catches that. (A
  // lookup now would also leave an NFS client caching "no such file" for the very
  // name VerifyResult must find a few seconds later.)
  return absl::OkStatus();
}

absl::Status Scheduler::VerifyResult(const v1::JobResult& result) const {
  if (options_.output_root.empty()) {
    return absl::FailedPreconditionError("no output root to check the result against");
  }
  // Only a regular file inside the output root counts (a symlink out of it does not).
  ZFARM_ASSIGN_OR_RETURN(std::string path,
                         security::ResolveBeneath(options_.output_root, result.path()));
  ZFARM_ASSIGN_OR_RETURN(files::FileDigest d, files::DigestFile(path));
  if (d.size_bytes != result.size_bytes()) {
    return absl::FailedPreconditionError(absl::StrCat(result.path(), " has ", d.size_bytes,
                                                      " bytes, the worker reported ",
                                                      result.size_bytes()));
  }
  if (d.sha256 != absl::AsciiStrToLower(result.sha256())) {
    return absl::FailedPreconditionError(absl::StrCat(
        result.path(), " has sha256 ", d.sha256, ", the worker reported \"", result.sha256(), "\""));
  }
  return absl::OkStatus();
}

void Scheduler::CountDeviceFailureLocked(Worker& w, const std::string& why) {
  if (++w.consecutive_failures >= 3 && w.state == v1::WORKER_STATE_READY) {
    w.state = v1::WORKER_STATE_UNHEALTHY;
    free_workers_.erase(w.hello.worker_name());
    LOG(WARNING) << "event=worker_unhealthy worker=" << w.hello.worker_name()
                 << " reason=3_failures last=\"" << why << "\"";
  }
}

void Scheduler::ReleaseLeaseLocked(JobRecord& r) {
  auto it = workers_.find(r.job.worker());
  if (it == workers_.end()) return;
  Worker& w = *it->second;
  if (w.leases.erase(r.job.job_id()) && w.state == v1::WORKER_STATE_READY && w.sink) {
    free_workers_.insert(it->first);
  }
}

void Scheduler::FinishLocked(JobRecord& r, v1::JobState state, v1::FailureReason reason,
                             const std::string& message, Txn& txn) {
  if (Leased(r.job.state())) ReleaseLeaseLocked(r);
  queue_.Remove(r.job.job_id());
  absl::Time now = clock_->Now();
  r.job.set_state(state);
  r.commit_pending = false;
  *r.job.mutable_end_time() = ToProto(now);
  if (state != v1::JOB_STATE_SUCCEEDED) {
    r.job.clear_result();
    r.job.mutable_error()->set_reason(reason);
    r.job.mutable_error()->set_message(message);
    r.job.mutable_error()->set_retryable(false);
  } else {
    r.job.clear_error();
  }
  if (state == v1::JOB_STATE_SUCCEEDED && r.job.has_start_time()) {
    metrics_->run_time->Observe(absl::ToDoubleSeconds(now - FromProto(r.job.start_time())));
  }
  LOG(INFO) << "event=job_final job=" << r.job.job_id() << " request=" << r.job.request_id()
            << " state=" << v1::JobState_Name(state)
            << (state == v1::JOB_STATE_SUCCEEDED ? "" : " reason=" + v1::FailureReason_Name(reason))
            << " attempt=" << r.job.attempt();
  PutLocked(r, txn);
  if (options_.on_final) {
    // Runs after the transition is durable, never under mu_.
    txn.after.push_back([cb = options_.on_final, job = ViewLocked(r)] { cb(job); });
  }
}

void Scheduler::LeaseEndedLocked(JobRecord& r, v1::FailureReason reason, bool retryable,
                                 const std::string& message, Txn& txn) {
  if (r.cancel_requested) {
    FinishLocked(r, v1::JOB_STATE_CANCELLED, r.job.error().reason(), r.job.error().message(), txn);
    return;
  }
  bool counts = r.job.state() == v1::JOB_STATE_RUNNING || reason != v1::FAILURE_REASON_WORKER_LOST;
  if (counts) ++r.runs;
  if (!retryable) {
    FinishLocked(r, v1::JOB_STATE_FAILED, reason, message, txn);
    return;
  }
  if (r.runs >= options_.max_attempts) {
    FinishLocked(r, v1::JOB_STATE_FAILED, v1::FAILURE_REASON_TOO_MANY_ATTEMPTS,
                 absl::StrCat("gave up after ", r.runs,
                              " attempts; last: ", v1::FailureReason_Name(reason), ": ", message),
                 txn);
    return;
  }
  ReleaseLeaseLocked(r);
  r.job.set_state(v1::JOB_STATE_QUEUED);
  r.job.clear_progress();
  r.commit_pending = false;
  r.job.clear_result();
  r.job.mutable_error()->set_reason(reason);
  r.job.mutable_error()->set_message(message);
  r.job.mutable_error()->set_retryable(true);
  EnqueueLocked(r);
  LOG(INFO) << "event=job_requeued job=" << r.job.job_id() << " request=" << r.job.request_id()
            << " reason=" << v1::FailureReason_Name(reason) << " runs=" << r.runs;
  PutLocked(r, txn);
}

void Scheduler::CancelJobLocked(JobRecord& r, v1::FailureReason reason, const std::string& message,
                                Txn& txn) {
  if (IsFinal(r.job.state())) return;
  if (r.job.state() == v1::JOB_STATE_QUEUED) {
    FinishLocked(r, v1::JOB_STATE_CANCELLED, reason, message, txn);
    return;
  }
  if (r.cancel_requested) return;
  r.cancel_requested = true;
  r.job.mutable_error()->set_reason(reason);
  r.job.mutable_error()->set_message(message);
  r.job.mutable_error()->set_retryable(false);
  PutLocked(r, txn);
  auto it = workers_.find(r.job.worker());
  if (it != workers_.end() && it->second->sink) {
    v1::SchedulerMessage m;
    m.mutable_cancel()->mutable_lease()->set_job_id(r.job.job_id());
    m.mutable_cancel()->mutable_lease()->set_attempt(r.job.attempt());
    *m.mutable_cancel()->mutable_reason() = r.job.error();
    txn.after.push_back([sink = it->second->sink, m = std::move(m)] { sink->Send(m); });
  }
}

bool Scheduler::CanRunLocked(const Worker& w, const JobRecord& r) const {
  const v1::JobSpec& s = r.job.spec();
  if (!s.model().empty() && s.model() != w.hello.model()) return false;
  if (w.hello.max_width_px() > 0 && s.width_px() > w.hello.max_width_px()) return false;
  if (w.hello.max_height_px() > 0 && s.height_px() > w.hello.max_height_px()) return false;
  if (r.min_memory_bytes > 0 && w.hello.memory_total_bytes() < r.min_memory_bytes) return false;
  return true;
}

void Scheduler::DispatchLocked(Txn& txn) {
  if (queue_.size() == 0 || free_workers_.empty()) return;
  absl::Time now = clock_->Now();
  std::vector<std::string> full;
  for (const std::string& name : free_workers_) {
    Worker& w = *workers_[name];
    std::map<std::pair<int, int>, v1::Assignment> by_size;
    while (static_cast<int>(w.leases.size()) < w.hello.capacity() && queue_.size() > 0) {
      // Pick() calls the predicate synchronously, still under mu_.
      auto picked = queue_.Pick(now, [&](const std::string& id) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return CanRunLocked(w, jobs_.at(id));
      });
      if (!picked) break;
      JobRecord& r = jobs_.at(*picked);
      queue_.Take(*picked);  // ends the owner's turn (fair share)
      metrics_->queue_wait->Observe(absl::ToDoubleSeconds(now - FromProto(r.job.create_time())));
      r.job.set_state(v1::JOB_STATE_ASSIGNED);
      r.job.set_attempt(r.job.attempt() + 1);
      r.job.set_worker(name);
      r.job.clear_progress();
      w.leases.insert(*picked);
      PutLocked(r, txn);
      v1::Lease* l = by_size[{r.job.spec().width_px(), r.job.spec().height_px()}].add_leases();
      l->mutable_lease()->set_job_id(r.job.job_id());
      l->mutable_lease()->set_attempt(r.job.attempt());
      *l->mutable_spec() = r.job.spec();
      l->set_output_path(OutputPath(r));
      *l->mutable_submit_time() = r.job.create_time();
      l->set_request_id(r.job.request_id());
      LOG(INFO) << "event=assign job=" << r.job.job_id() << " request=" << r.job.request_id()
                << " worker=" << name << " attempt=" << r.job.attempt();
    }
    if (static_cast<int>(w.leases.size()) >= w.hello.capacity()) full.push_back(name);
    for (auto& [size, a] : by_size) {
      v1::SchedulerMessage m;
      *m.mutable_assignment() = std::move(a);
      txn.after.push_back([sink = w.sink, m = std::move(m)] { sink->Send(m); });
    }
    if (queue_.size() == 0) break;
  }
  for (const auto& n : full) free_workers_.erase(n);
}

// ---------------------------------------------------------------- JobService

absl::StatusOr<v1::SubmitJobResponse> Scheduler::AdmitLocked(v1::SubmitJobRequest req,
                                                             const std::string& owner,
                                                             const std::string& batch_id,
                                                             const std::string& field, Txn& txn) {
  const Limits& lim = options_.limits;
  ZFARM_RETURN_IF_ERROR(ValidateRequestId(lim, field + "request_id", req.request_id()));
  v1::JobSpec spec = req.spec();
  ZFARM_RETURN_IF_ERROR(ValidateAndNormalizeSpec(lim, field + "spec", &spec));
  absl::Time now = clock_->Now();
  if (spec.has_deadline() && FromProto(spec.deadline()) <= now) {
    return absl::InvalidArgumentError(absl::StrCat(field, "spec.deadline: is in the past"));
  }
  std::string fp = SpecFingerprint(spec);
  v1::SubmitJobResponse resp;
  if (!req.request_id().empty()) {
    auto it = requests_.find(RequestKey(owner, req.request_id()));
    if (it != requests_.end()) {
      if (it->second.fingerprint != fp) {
        metrics_->rejected_conflict->Increment();
        return absl::InvalidArgumentError(
            absl::StrCat(field, "request_id: \"", req.request_id(), "\" was already used for job ",
                         it->second.job_id, " with a different spec"));
      }
      auto j = jobs_.find(it->second.job_id);
      if (j != jobs_.end()) {
        *resp.mutable_job() = ViewLocked(j->second);
      } else {  // pruned: only the tombstone remains
        resp.mutable_job()->set_job_id(it->second.job_id);
        resp.mutable_job()->set_request_id(req.request_id());
      }
      resp.set_created(false);
      return resp;
    }
  }
  std::string output_path;
  if (!spec.output_name().empty()) {
    output_path = OutputPathFor(now, spec.output_name(), spec.output_format());
    ZFARM_RETURN_IF_ERROR(OutputPathFreeLocked(output_path, owner, field));
  }
  JobRecord r;
  r.seq = next_seq_++;
  r.fingerprint = fp;
  absl::BitGen gen;
  r.job.set_job_id(absl::StrFormat("j-%s-%09d-%04x",
                                   absl::FormatTime("%Y%m%d", now, absl::UTCTimeZone()), r.seq,
                                   absl::Uniform<uint32_t>(gen, 0, 0x10000)));
  if (!spec.has_seed()) spec.set_seed(absl::Uniform<uint32_t>(gen, 0, 0x7fffffff));
  r.job.set_request_id(req.request_id().empty() ? "auto-" + r.job.job_id() : req.request_id());
  r.job.set_batch_id(batch_id);
  *r.job.mutable_spec() = std::move(spec);
  r.job.set_state(v1::JOB_STATE_QUEUED);
  r.job.set_owner(owner);
  *r.job.mutable_create_time() = ToProto(now);
  const std::string id = r.job.job_id();
  if (!req.request_id().empty()) {
    RequestRecord rr{owner, req.request_id(), id, fp, now};
    txn.ops.push_back({Journal::Op::Kind::kPutRequest, {}, rr, {}});
    requests_[RequestKey(owner, rr.request_id)] = std::move(rr);
  }
  if (!output_path.empty()) outputs_[output_path] = id;
  by_seq_[r.seq] = id;
  auto [it, ok] = jobs_.emplace(id, std::move(r));
  JobRecord& rec = it->second;
  EnqueueLocked(rec);
  if (rec.job.spec().has_deadline()) deadlines_.emplace(FromProto(rec.job.spec().deadline()), id);
  PutLocked(rec, txn);
  metrics_->submits->Increment();
  LOG(INFO) << "event=submit job=" << id << " request=" << rec.job.request_id()
            << " priority=" << rec.job.spec().priority() << " owner=" << owner;
  *resp.mutable_job() = ViewLocked(rec);
  resp.set_created(true);
  return resp;
}

void Scheduler::Submit(v1::SubmitJobRequest request, const std::string& owner,
                       Callback<v1::SubmitJobResponse> done) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return std::move(done)(absl::UnavailableError("scheduler is shutting down"));
  const bool known = requests_.contains(RequestKey(owner, request.request_id()));
  if (static_cast<int64_t>(queue_.size()) >= options_.max_queued_jobs && !known) {
    metrics_->rejected_full->Increment();
    return std::move(done)(absl::ResourceExhaustedError(
        absl::StrCat("queue is full (", queue_.size(),
                     " jobs queued, --max-queued-jobs=", options_.max_queued_jobs,
                     "); retry after ", absl::ToInt64Milliseconds(options_.retry_after), " ms")));
  }
  if (!known || request.request_id().empty()) {
    if (absl::Status s = AdmitPrincipalLocked(owner, 1); !s.ok()) return std::move(done)(s);
  }
  Txn txn;
  auto resp = AdmitLocked(std::move(request), owner, "", "", txn);
  if (!resp.ok()) {
    if (absl::IsInvalidArgument(resp.status()) &&
        resp.status().message().find("different spec") == std::string::npos) {
      metrics_->rejected_invalid->Increment();
    }
    return std::move(done)(resp.status());
  }
  DispatchLocked(txn);
  CommitTxn(txn, [done = std::move(done), resp = *std::move(resp)](absl::Status s) mutable {
    if (!s.ok())
      return std::move(done)(absl::UnavailableError(absl::StrCat("journal: ", s.message())));
    std::move(done)(std::move(resp));
  });
}

void Scheduler::SubmitBatch(v1::SubmitJobsRequest request, const std::string& owner,
                            Callback<v1::SubmitJobsResponse> done) {
  const Limits& lim = options_.limits;
  if (request.jobs_size() == 0) {
    return std::move(done)(absl::InvalidArgumentError("jobs: must not be empty"));
  }
  if (request.jobs_size() > lim.max_batch_jobs) {
    return std::move(done)(absl::InvalidArgumentError(absl::StrCat(
        "jobs: ", request.jobs_size(), " jobs exceeds the batch limit of ", lim.max_batch_jobs)));
  }
  if (auto s = ValidateRequestId(lim, "batch_id", request.batch_id()); !s.ok()) {
    return std::move(done)(s);
  }
  // Validate everything first: all or nothing.
  for (int i = 0; i < request.jobs_size(); ++i) {
    v1::JobSpec spec = request.jobs(i).spec();
    std::string f = absl::StrCat("jobs[", i, "].");
    absl::Status s = ValidateRequestId(lim, f + "request_id", request.jobs(i).request_id());
    if (s.ok()) s = ValidateAndNormalizeSpec(lim, f + "spec", &spec);
    if (!s.ok()) {
      metrics_->rejected_invalid->Increment();
      return std::move(done)(s);
    }
  }
  absl::MutexLock lock(&mu_);
  if (shut_down_) return std::move(done)(absl::UnavailableError("scheduler is shutting down"));
  absl::Time now = clock_->Now();
  std::string batch_id = request.batch_id();
  if (batch_id.empty()) {
    absl::BitGen gen;
    batch_id =
        absl::StrFormat("b-%s-%09d-%04x", absl::FormatTime("%Y%m%d", now, absl::UTCTimeZone()),
                        next_seq_, absl::Uniform<uint32_t>(gen, 0, 0x10000));
  }
  // Conflicts and capacity are checked before anything is admitted.
  int64_t fresh = 0;
  std::set<std::string> seen;
  for (int i = 0; i < request.jobs_size(); ++i) {
    const auto& j = request.jobs(i);
    if (!j.request_id().empty()) {
      if (!seen.insert(j.request_id()).second) {
        return std::move(done)(absl::InvalidArgumentError(absl::StrCat(
            "jobs[", i, "].request_id: \"", j.request_id(), "\" appears twice in the batch")));
      }
      auto it = requests_.find(RequestKey(owner, j.request_id()));
      if (it != requests_.end()) {
        v1::JobSpec spec = j.spec();
        ValidateAndNormalizeSpec(lim, "", &spec).IgnoreError();
        if (SpecFingerprint(spec) != it->second.fingerprint) {
          metrics_->rejected_conflict->Increment();
          return std::move(done)(absl::InvalidArgumentError(absl::StrCat(
              "jobs[", i, "].request_id: \"", j.request_id(), "\" was already used for job ",
              it->second.job_id, " with a different spec")));
        }
        continue;
      }
    }
    ++fresh;
  }
  if (static_cast<int64_t>(queue_.size()) + fresh > options_.max_queued_jobs) {
    metrics_->rejected_full->Increment();
    return std::move(done)(absl::ResourceExhaustedError(
        absl::StrCat("queue is full (", queue_.size(), " jobs queued + ", fresh,
                     " new > --max-queued-jobs=", options_.max_queued_jobs, "); retry after ",
                     absl::ToInt64Milliseconds(options_.retry_after), " ms")));
  }
  if (fresh > 0) {
    if (absl::Status s = AdmitPrincipalLocked(owner, fresh); !s.ok()) return std::move(done)(s);
  }
  Txn txn;
  v1::SubmitJobsResponse resp;
  resp.set_batch_id(batch_id);
  for (int i = 0; i < request.jobs_size(); ++i) {
    auto r = AdmitLocked(std::move(*request.mutable_jobs(i)), owner, batch_id,
                         absl::StrCat("jobs[", i, "]."), txn);
    if (!r.ok()) {
      // After the checks above: a deadline in the past or an output path taken
      // (also by an earlier job of this batch); nothing was journaled yet but
      // memory holds admitted jobs: roll back.
      for (const auto& prev : resp.jobs()) {
        if (!prev.created()) continue;
        const std::string& id = prev.job().job_id();
        const JobRecord& rec = jobs_.at(id);
        queue_.Remove(id);
        by_seq_.erase(rec.seq);
        requests_.erase(RequestKey(owner, rec.job.request_id()));
        if (auto o = outputs_.find(OutputPath(rec)); o != outputs_.end() && o->second == id) {
          outputs_.erase(o);
        }
        jobs_.erase(id);
      }
      for (auto it = deadlines_.begin(); it != deadlines_.end();) {
        it = jobs_.contains(it->second) ? std::next(it) : deadlines_.erase(it);
      }
      return std::move(done)(r.status());
    }
    *resp.add_jobs() = *std::move(r);
  }
  LOG(INFO) << "event=submit_batch batch=" << batch_id << " jobs=" << request.jobs_size()
            << " new=" << fresh;
  DispatchLocked(txn);
  CommitTxn(txn, [done = std::move(done), resp = std::move(resp)](absl::Status s) mutable {
    if (!s.ok())
      return std::move(done)(absl::UnavailableError(absl::StrCat("journal: ", s.message())));
    std::move(done)(std::move(resp));
  });
}

namespace {
absl::Status NotYours(const std::string& job_id) {
  return absl::PermissionDeniedError(
      absl::StrCat("job ", job_id, " belongs to another principal (only admins see every job)"));
}
}  // namespace

absl::Status Scheduler::AdmitPrincipalLocked(const std::string& owner, int64_t fresh) {
  if (options_.max_queued_per_principal > 0 &&
      static_cast<int64_t>(queue_.OwnerSize(owner)) + fresh > options_.max_queued_per_principal) {
    metrics_->rejected_full->Increment();
    return absl::ResourceExhaustedError(
        absl::StrCat("principal ", owner, " has ", queue_.OwnerSize(owner), " jobs queued (+",
                     fresh, " new > --max-queued-per-principal=", options_.max_queued_per_principal,
                     "); retry after ", absl::ToInt64Milliseconds(options_.retry_after), " ms"));
  }
  const double rate = options_.submit_rate_per_principal;
  if (rate > 0) {
    const double burst = options_.submit_burst_per_principal > 0
                             ? options_.submit_burst_per_principal
                             : std::max(1.0, rate);
    absl::Time now = clock_->MonotonicNow();  // refill is a duration
    auto [it, fresh_bucket] = buckets_.try_emplace(owner, Bucket{burst, now});
    Bucket& b = it->second;
    b.tokens =
        std::min(burst, b.tokens + rate * std::max(0.0, absl::ToDoubleSeconds(now - b.last)));
    b.last = now;
    if (b.tokens < 1.0) {
      metrics_->rejected_full->Increment();
      int64_t wait_ms = static_cast<int64_t>(std::ceil((1.0 - b.tokens) / rate * 1000.0));
      return absl::ResourceExhaustedError(absl::StrCat(
          "principal ", owner, " exceeds --submit-rate-per-principal=", rate, "/s (burst ", burst,
          "); retry after ", std::max<int64_t>(1, wait_ms), " ms"));
    }
    b.tokens -= 1.0;
    if (buckets_.size() > 100000) buckets_.clear();  // bound memory (many principals)
  }
  return absl::OkStatus();
}

void Scheduler::GetJob(const std::string& job_id, Callback<v1::Job> done,
                       const std::string& owner_filter) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return std::move(done)(absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\"")));
  }
  if (!owner_filter.empty() && it->second.job.owner() != owner_filter) {
    return std::move(done)(NotYours(job_id));
  }
  // Answered once every earlier transition is durable (it may show them), and not
  // at all if one of them failed to reach the disk.
  Txn txn;
  CommitTxn(txn, [done = std::move(done), job = ViewLocked(it->second)](absl::Status s) mutable {
    if (!s.ok()) return std::move(done)(s);
    std::move(done)(std::move(job));
  });
}

std::vector<JobRecord*> Scheduler::SelectLocked(const std::string& job_id,
                                                const std::string& batch_id,
                                                const std::string& label) {
  std::vector<JobRecord*> out;
  if (!job_id.empty()) {
    auto it = jobs_.find(job_id);
    if (it != jobs_.end()) out.push_back(&it->second);
    return out;
  }
  std::string key, value;
  if (!label.empty()) {
    auto eq = label.find('=');
    key = label.substr(0, eq);
    value = label.substr(eq + 1);
  }
  for (auto& [seq, id] : by_seq_) {
    JobRecord& r = jobs_.at(id);
    if (!batch_id.empty() && r.job.batch_id() != batch_id) continue;
    if (!label.empty()) {
      auto l = r.job.spec().labels().find(key);
      if (l == r.job.spec().labels().end() || l->second != value) continue;
    }
    out.push_back(&r);
  }
  return out;
}

void Scheduler::ListJobs(const v1::ListJobsRequest& req, Callback<v1::ListJobsResponse> done,
                         const std::string& owner_filter) {
  int page = req.page_size() == 0 ? 100 : req.page_size();
  if (page < 1 || page > 1000) {
    return std::move(done)(absl::InvalidArgumentError(
        absl::StrCat("page_size: ", req.page_size(), " is outside [1, 1000]")));
  }
  uint64_t before = UINT64_MAX;
  if (!req.page_token().empty() && !absl::SimpleAtoi(req.page_token(), &before)) {
    return std::move(done)(absl::InvalidArgumentError("page_token: not a token from ListJobs"));
  }
  if (!req.label().empty()) {
    if (auto s = ValidateLabelSelector("label", req.label()); !s.ok()) return std::move(done)(s);
  }
  std::set<int> states(req.states().begin(), req.states().end());
  std::string key, value;
  if (!req.label().empty()) {
    key = req.label().substr(0, req.label().find('='));
    value = req.label().substr(req.label().find('=') + 1);
  }
  absl::MutexLock lock(&mu_);
  v1::ListJobsResponse resp;
  auto it = by_seq_.lower_bound(before);
  while (it != by_seq_.begin()) {
    --it;
    const JobRecord& r = jobs_.at(it->second);
    if (!owner_filter.empty() && r.job.owner() != owner_filter) continue;
    if (!states.empty() && !states.contains(r.job.state())) continue;
    if (!req.batch_id().empty() && r.job.batch_id() != req.batch_id()) continue;
    if (!key.empty()) {
      auto l = r.job.spec().labels().find(key);
      if (l == r.job.spec().labels().end() || l->second != value) continue;
    }
    if (resp.jobs_size() == page) {
      resp.set_next_page_token(absl::StrCat(it->first + 1));
      break;
    }
    *resp.add_jobs() = ViewLocked(r);
  }
  Txn txn;
  CommitTxn(txn, [done = std::move(done), resp = std::move(resp)](absl::Status s) mutable {
    if (!s.ok()) return std::move(done)(s);
    std::move(done)(std::move(resp));
  });
}

void Scheduler::Cancel(const v1::CancelJobRequest& req, Callback<v1::CancelJobResponse> done,
                       const std::string& owner_filter) {
  if (req.selector_case() == v1::CancelJobRequest::SELECTOR_NOT_SET) {
    return std::move(done)(absl::InvalidArgumentError("selector: set job_id, batch_id or label"));
  }
  if (req.has_label()) {
    if (auto s = ValidateLabelSelector("label", req.label()); !s.ok()) return std::move(done)(s);
  }
  absl::MutexLock lock(&mu_);
  auto selected = SelectLocked(req.job_id(), req.batch_id(), req.label());
  if (!owner_filter.empty()) {
    if (!req.job_id().empty() && !selected.empty() && selected[0]->job.owner() != owner_filter) {
      return std::move(done)(NotYours(req.job_id()));
    }
    selected.erase(std::remove_if(selected.begin(), selected.end(),
                                  [&](JobRecord* r) { return r->job.owner() != owner_filter; }),
                   selected.end());
  }
  if (selected.empty()) {
    return std::move(done)(absl::NotFoundError("selector: no matching job"));
  }
  Txn txn;
  v1::CancelJobResponse resp;
  for (JobRecord* r : selected) {
    if (IsFinal(r->job.state())) continue;
    CancelJobLocked(*r, v1::FAILURE_REASON_CANCELLED_BY_CLIENT, "cancelled by client", txn);
    resp.add_job_ids(r->job.job_id());
    LOG(INFO) << "event=cancel job=" << r->job.job_id() << " request=" << r->job.request_id();
  }
  DispatchLocked(txn);
  CommitTxn(txn, [done = std::move(done), resp = std::move(resp)](absl::Status s) mutable {
    if (!s.ok())
      return std::move(done)(absl::UnavailableError(absl::StrCat("journal: ", s.message())));
    std::move(done)(std::move(resp));
  });
}

absl::Status Scheduler::Watch(const std::string& job_id, const std::string& batch_id,
                              const std::string& label, std::shared_ptr<EventSink> sink,
                              const std::string& owner_filter) {
  if (job_id.empty() && batch_id.empty() && label.empty()) {
    return absl::InvalidArgumentError("selector: set job_id, batch_id or label");
  }
  if (!label.empty()) ZFARM_RETURN_IF_ERROR(ValidateLabelSelector("label", label));
  ZFARM_RETURN_IF_ERROR(JournalFailure());
  absl::MutexLock lock(&mu_);
  auto selected = SelectLocked(job_id, batch_id, label);
  if (!owner_filter.empty()) {
    if (!job_id.empty() && !selected.empty() && selected[0]->job.owner() != owner_filter) {
      return NotYours(job_id);
    }
    selected.erase(std::remove_if(selected.begin(), selected.end(),
                                  [&](JobRecord* r) { return r->job.owner() != owner_filter; }),
                   selected.end());
  }
  if (selected.empty()) return absl::NotFoundError("selector: no matching job");
  auto check = [&](const absl::flat_hash_map<std::string, Subscribers::List>& m,
                   const std::string& key) -> absl::Status {
    auto it = m.find(key);
    if (it != m.end() && static_cast<int>(it->second.size()) >= options_.max_watchers_per_job) {
      return absl::ResourceExhaustedError(
          absl::StrCat("selector ", key, " already has ", it->second.size(),
                       " watchers (--max-watchers-per-job=", options_.max_watchers_per_job,
                       "); retry after ", absl::ToInt64Milliseconds(options_.retry_after), " ms"));
    }
    return absl::OkStatus();
  };
  if (!job_id.empty()) ZFARM_RETURN_IF_ERROR(check(subs_->by_job, job_id));
  if (!batch_id.empty()) ZFARM_RETURN_IF_ERROR(check(subs_->by_batch, batch_id));
  if (!label.empty()) ZFARM_RETURN_IF_ERROR(check(subs_->by_label, label));
  if (!job_id.empty()) subs_->by_job[job_id].push_back(sink);
  if (!batch_id.empty()) subs_->by_batch[batch_id].push_back(sink);
  if (!label.empty()) subs_->by_label[label].push_back(sink);
  std::vector<v1::JobEvent> snaps;
  absl::Time now = clock_->Now();
  for (JobRecord* r : selected) {
    v1::JobEvent ev;
    ev.set_type(v1::JOB_EVENT_TYPE_SNAPSHOT);
    *ev.mutable_job() = ViewLocked(*r);
    *ev.mutable_event_time() = ToProto(now);
    snaps.push_back(std::move(ev));
  }
  Txn txn;
  txn.after.push_back([sink, snaps = std::move(snaps)] {
    for (const auto& e : snaps) sink->OnEvent(e);
  });
  CommitTxn(txn, nullptr);
  return absl::OkStatus();
}

void Scheduler::Unwatch(const std::shared_ptr<EventSink>& sink) {
  absl::MutexLock lock(&mu_);
  Subscribers::Erase(subs_->by_job, sink);
  Subscribers::Erase(subs_->by_batch, sink);
  Subscribers::Erase(subs_->by_label, sink);
}

absl::StatusOr<v1::JobResult> Scheduler::Result(const std::string& job_id,
                                                const std::string& owner_filter) {
  ZFARM_RETURN_IF_ERROR(JournalFailure());  // memory may hold a SUCCEEDED not on disk
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end())
    return absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\""));
  if (!owner_filter.empty() && it->second.job.owner() != owner_filter) return NotYours(job_id);
  if (it->second.job.state() != v1::JOB_STATE_SUCCEEDED) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id, " is ", v1::JobState_Name(it->second.job.state()), ", not SUCCEEDED"));
  }
  return it->second.job.result();
}

// ---------------------------------------------------------------- workers

absl::StatusOr<uint64_t> Scheduler::WorkerHello(const v1::WorkerHello& hello,
                                                std::shared_ptr<WorkerSink> sink,
                                                const std::string& principal) {
  if (hello.worker_name().empty() || hello.worker_name().size() > 256) {
    return absl::InvalidArgumentError("hello.worker_name: must be 1..256 bytes");
  }
  if (hello.capacity() < 1 || hello.capacity() > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("hello.capacity: ", hello.capacity(), " is outside [1, 64]"));
  }
  if (hello.max_width_px() < 0 || hello.max_height_px() < 0 || hello.memory_total_bytes() < 0) {
    return absl::InvalidArgumentError("hello: sizes and memory must not be negative");
  }
  absl::MutexLock lock(&mu_);
  if (shut_down_) return absl::UnavailableError("scheduler is shutting down");
  Txn txn;
  if (auto owner = worker_owners_.find(hello.worker_name()); owner == worker_owners_.end()) {
    worker_owners_[hello.worker_name()] = principal;
    txn.ops.push_back(
        {Journal::Op::Kind::kPutWorker, {}, {}, WorkerRecord{hello.worker_name(), principal}});
  } else if (owner->second != principal) {
    LOG(WARNING) << "event=worker_name_refused worker=" << hello.worker_name()
                 << " principal=" << principal;
    return absl::PermissionDeniedError(absl::StrCat(
        "hello.worker_name: \"", hello.worker_name(),
        "\" is registered to another principal; connect with that worker's token or choose "
        "another --name"));
  }
  absl::Time now = clock_->Now();
  std::set<std::string> held;
  for (const auto& l : hello.held_leases()) held.insert(l.job_id());
  auto& slot = workers_[hello.worker_name()];
  std::set<std::string> kept;
  if (slot && slot->sink) {  // replaces a live session: keep the leases it still holds
    Worker& old = *slot;
    for (const auto& id : old.leases) {
      // Keep at most the new capacity; the rest are requeued below as lost.
      if (held.contains(id) && static_cast<int>(kept.size()) < hello.capacity()) kept.insert(id);
    }
    for (const auto& id : kept) old.leases.erase(id);
    sessions_.erase(old.session);
    old.sink->Close(absl::AbortedError("replaced by a new session of the same worker"));
    WorkerLostLocked(old, "replaced by a new session", txn);
  }
  int64_t done_count = slot ? slot->jobs_done : 0, failed = slot ? slot->jobs_failed : 0;
  slot = std::make_unique<Worker>();
  Worker& w = *slot;
  w.hello = hello;
  w.hello.clear_held_leases();
  w.session = next_session_++;
  w.sink = sink;
  w.connect_time = w.last_seen = now;
  w.last_seen_mono = clock_->MonotonicNow();
  w.jobs_done = done_count;
  w.jobs_failed = failed;
  w.leases = kept;
  sessions_[w.session] = &w;
  // Re-adopt leases the scheduler requeued (e.g. after its own restart) and that
  // nobody else took yet.
  for (const auto& l : hello.held_leases()) {
    auto it = jobs_.find(l.job_id());
    if (it == jobs_.end()) continue;
    JobRecord& r = it->second;
    if (r.job.state() == v1::JOB_STATE_QUEUED && r.job.attempt() == l.attempt() &&
        static_cast<int>(w.leases.size()) < hello.capacity()) {
      queue_.Remove(r.job.job_id());
      r.job.set_state(v1::JOB_STATE_ASSIGNED);
      r.job.set_worker(hello.worker_name());
      w.leases.insert(r.job.job_id());
      PutLocked(r, txn);
    }
  }
  v1::SchedulerMessage welcome;
  welcome.mutable_welcome()->set_session_id(absl::StrCat("s-", w.session));
  welcome.mutable_welcome()->set_heartbeat_interval_ms(
      absl::ToInt64Milliseconds(options_.heartbeat_interval));
  welcome.mutable_welcome()->set_lease_timeout_ms(
      absl::ToInt64Milliseconds(options_.lease_timeout));
  sink->Send(welcome);
  if (static_cast<int>(w.leases.size()) < hello.capacity())
    free_workers_.insert(hello.worker_name());
  LOG(INFO) << "event=worker_connected worker=" << hello.worker_name() << " session=" << w.session
            << " device=" << hello.device() << " model=" << hello.model()
            << " capacity=" << hello.capacity() << " kept_leases=" << w.leases.size();
  DispatchLocked(txn);
  CommitTxn(txn, nullptr);
  return w.session;
}

JobRecord* Scheduler::FindLeaseLocked(const Worker& w, const v1::LeaseId& lease) {
  if (!w.leases.contains(lease.job_id())) return nullptr;
  auto it = jobs_.find(lease.job_id());
  if (it == jobs_.end()) return nullptr;
  JobRecord& r = it->second;
  if (r.job.attempt() != lease.attempt() || !Leased(r.job.state()) ||
      r.job.worker() != w.hello.worker_name()) {
    return nullptr;
  }
  return &r;
}

absl::Status Scheduler::WorkerMessage(uint64_t session, const v1::WorkerMessage& msg) {
  // Finalized: the committed file is checked before SUCCEEDED, hashed outside mu_.
  // One stream's messages arrive one at a time, so its lease cannot gain another
  // commit meanwhile (it can only end, which the locked part sees).
  std::optional<v1::JobResult> checked;
  absl::Status verified;
  if (msg.has_finalized()) {
    {
      absl::MutexLock lock(&mu_);
      auto sit = sessions_.find(session);
      JobRecord* r =
          sit == sessions_.end() ? nullptr : FindLeaseLocked(*sit->second, msg.finalized().lease());
      if (r && r->commit_pending) checked = r->job.result();
    }
    if (checked) verified = VerifyResult(*checked);
  }
  absl::MutexLock lock(&mu_);
  auto sit = sessions_.find(session);
  if (sit == sessions_.end()) return absl::FailedPreconditionError("session is no longer active");
  Worker& w = *sit->second;
  const std::string& name = w.hello.worker_name();
  absl::Time now = clock_->Now();
  w.last_seen = now;
  w.last_seen_mono = clock_->MonotonicNow();
  Txn txn;
  auto need_lease = [](const v1::LeaseId& l, const char* what) -> absl::Status {
    if (l.job_id().empty() || l.attempt() < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ".lease: job_id and attempt >= 1 required"));
    }
    return absl::OkStatus();
  };
  switch (msg.msg_case()) {
    case v1::WorkerMessage::kHello:
      return absl::FailedPreconditionError("hello: sent twice on one stream");
    case v1::WorkerMessage::kHeartbeat:
      w.hello.set_memory_free_bytes(msg.heartbeat().memory_free_bytes());
      break;
    case v1::WorkerMessage::kStatus:
      if (!msg.status().healthy() && w.state == v1::WORKER_STATE_READY) {
        w.state = v1::WORKER_STATE_UNHEALTHY;
        free_workers_.erase(name);
        LOG(WARNING) << "event=worker_unhealthy worker=" << name << " message=\""
                     << msg.status().message() << "\"";
      } else if (msg.status().healthy() && w.state == v1::WORKER_STATE_UNHEALTHY) {
        w.state = v1::WORKER_STATE_READY;
        w.consecutive_failures = 0;
        if (static_cast<int>(w.leases.size()) < w.hello.capacity()) free_workers_.insert(name);
      }
      break;
    case v1::WorkerMessage::kStarted: {
      ZFARM_RETURN_IF_ERROR(need_lease(msg.started().lease(), "started"));
      JobRecord* r = FindLeaseLocked(w, msg.started().lease());
      if (!r) break;  // stale: a cancel or expiry raced with it
      if (r->job.state() == v1::JOB_STATE_ASSIGNED) {
        r->job.set_state(v1::JOB_STATE_RUNNING);
        *r->job.mutable_start_time() = ToProto(now);
        PutLocked(*r, txn);
      }
      break;
    }
    case v1::WorkerMessage::kProgress: {
      ZFARM_RETURN_IF_ERROR(need_lease(msg.progress().lease(), "progress"));
      const auto& p = msg.progress();
      if (p.step() < 0 || p.total_steps() < 1 || p.step() > p.total_steps()) {
        return absl::InvalidArgumentError(
            absl::StrCat("progress: step ", p.step(), " of ", p.total_steps(), " is out of range"));
      }
      JobRecord* r = FindLeaseLocked(w, p.lease());
      if (!r) break;
      if (r->job.state() == v1::JOB_STATE_ASSIGNED) {
        return absl::FailedPreconditionError(
            absl::StrCat("progress for ", p.lease().job_id(), " before started"));
      }
      r->job.mutable_progress()->set_step(p.step());
      r->job.mutable_progress()->set_total_steps(p.total_steps());
      PutLocked(*r, txn, v1::JOB_EVENT_TYPE_PROGRESS);
      break;
    }
    case v1::WorkerMessage::kCommit: {
      ZFARM_RETURN_IF_ERROR(need_lease(msg.commit().lease(), "commit"));
      v1::SchedulerMessage reply;
      auto* cr = reply.mutable_commit_reply();
      *cr->mutable_lease() = msg.commit().lease();
      // The reply goes out once the decision is durable.
      auto send_reply = [&] {
        txn.after.push_back([sink = w.sink, reply = std::move(reply)] { sink->Send(reply); });
      };
      JobRecord* r = FindLeaseLocked(w, msg.commit().lease());
      if (!r) {
        cr->set_accepted(false);
        cr->set_reason("stale lease: the job was reassigned, cancelled or finished");
        LOG(WARNING) << "event=commit_refused worker=" << name
                     << " job=" << msg.commit().lease().job_id()
                     << " attempt=" << msg.commit().lease().attempt() << " reason=stale";
        send_reply();
        break;
      }
      if (r->commit_pending) {
        return absl::FailedPreconditionError("commit: sent twice for one lease");
      }
      if (r->cancel_requested) {
        cr->set_accepted(false);
        cr->set_reason("the job was cancelled");
        FinishLocked(*r, v1::JOB_STATE_CANCELLED, r->job.error().reason(), r->job.error().message(),
                     txn);
        send_reply();
        break;
      }
      if (r->job.state() == v1::JOB_STATE_ASSIGNED) {
        r->job.set_state(v1::JOB_STATE_RUNNING);
        *r->job.mutable_start_time() = ToProto(now);
      }
      r->commit_pending = true;
      *r->job.mutable_result() = msg.commit().result();
      r->job.mutable_result()->set_path(OutputPath(*r));
      cr->set_accepted(true);
      PutLocked(*r, txn);
      send_reply();
      break;
    }
    case v1::WorkerMessage::kFinalized: {
      ZFARM_RETURN_IF_ERROR(need_lease(msg.finalized().lease(), "finalized"));
      JobRecord* r = FindLeaseLocked(w, msg.finalized().lease());
      if (!r) break;
      if (!r->commit_pending) {
        return absl::FailedPreconditionError("finalized: no accepted commit for this lease");
      }
      if (!checked || checked->SerializeAsString() != r->job.result().SerializeAsString()) {
        verified = VerifyResult(r->job.result());
      }
      if (!verified.ok()) {
        // A worker that claims a file it did not write (or wrote wrong): this
        // attempt fails and counts against the worker's health.
        const std::string why = absl::StrCat("committed result does not check out: ",
                                             verified.message());
        LOG(WARNING) << "event=result_rejected worker=" << name << " job=" << r->job.job_id()
                     << " attempt=" << r->job.attempt() << " error=\"" << verified.message()
                     << "\"";
        ++w.jobs_failed;
        CountDeviceFailureLocked(w, why);
        LeaseEndedLocked(*r, v1::FAILURE_REASON_OUTPUT_ERROR, true, why, txn);
        break;
      }
      ++w.jobs_done;
      w.consecutive_failures = 0;
      FinishLocked(*r, v1::JOB_STATE_SUCCEEDED, v1::FAILURE_REASON_UNSPECIFIED, "", txn);
      break;
    }
    case v1::WorkerMessage::kFailure: {
      ZFARM_RETURN_IF_ERROR(need_lease(msg.failure().lease(), "failure"));
      JobRecord* r = FindLeaseLocked(w, msg.failure().lease());
      if (!r) break;
      const v1::JobError& e = msg.failure().error();
      v1::FailureReason reason = e.reason();
      bool retryable = e.retryable();
      if (reason == v1::FAILURE_REASON_INVALID_REQUEST ||
          reason == v1::FAILURE_REASON_MODEL_ERROR) {
        retryable = false;
      }
      if (reason == v1::FAILURE_REASON_OUT_OF_MEMORY) {
        retryable = true;
        r->min_memory_bytes = std::max({r->min_memory_bytes, w.hello.memory_total_bytes() + 1,
                                        msg.failure().memory_required_bytes()});
      }
      if ((reason == v1::FAILURE_REASON_DEADLINE_EXCEEDED ||
           reason == v1::FAILURE_REASON_CANCELLED_BY_CLIENT) &&
          !r->cancel_requested) {
        // The worker stopped at a step boundary for a deadline (or cancel) it saw
        // before our tick did: the job is CANCELLED, and no fault of the worker.
        r->cancel_requested = true;
        r->job.mutable_error()->set_reason(reason);
        r->job.mutable_error()->set_message(e.message());
        r->job.mutable_error()->set_retryable(false);
      } else if (!r->cancel_requested) {
        ++w.jobs_failed;
        // A bad request or a full output disk says nothing about the worker's device.
        const bool device_fault = reason != v1::FAILURE_REASON_INVALID_REQUEST &&
                                  reason != v1::FAILURE_REASON_OUTPUT_ERROR;
        if (device_fault) CountDeviceFailureLocked(w, e.message());
      }
      LOG(INFO) << "event=job_failure job=" << r->job.job_id() << " worker=" << name
                << " reason=" << v1::FailureReason_Name(reason) << " retryable=" << retryable;
      LeaseEndedLocked(*r, reason, retryable, e.message(), txn);
      break;
    }
    case v1::WorkerMessage::MSG_NOT_SET:
      return absl::InvalidArgumentError("worker message: empty (no field of `msg` set)");
  }
  DispatchLocked(txn);
  CommitTxn(txn, nullptr);
  return absl::OkStatus();
}

void Scheduler::WorkerLostLocked(Worker& w, const std::string& why, Txn& txn) {
  const std::string name = w.hello.worker_name();
  LOG(WARNING) << "event=worker_lost worker=" << name << " session=" << w.session
               << " leases=" << w.leases.size() << " why=\"" << why << "\"";
  free_workers_.erase(name);
  sessions_.erase(w.session);
  w.state = v1::WORKER_STATE_LOST;
  w.lost_time = clock_->Now();
  w.lost_mono = clock_->MonotonicNow();
  w.sink.reset();
  std::set<std::string> leases = std::move(w.leases);
  w.leases.clear();
  for (const auto& id : leases) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    JobRecord& r = it->second;
    if (!Leased(r.job.state()) || r.job.worker() != name) continue;
    if (r.commit_pending) {
      if (VerifyResult(r.job.result()).ok()) {
        ++w.jobs_done;
        FinishLocked(r, v1::JOB_STATE_SUCCEEDED, v1::FAILURE_REASON_UNSPECIFIED, "", txn);
        continue;
      }
      r.commit_pending = false;
      r.job.clear_result();
    }
    LeaseEndedLocked(r, v1::FAILURE_REASON_WORKER_LOST, true,
                     absl::StrCat("worker ", name, " lost: ", why), txn);
  }
}

void Scheduler::WorkerDisconnected(uint64_t session, const std::string& why) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  Txn txn;
  WorkerLostLocked(*it->second, why, txn);
  DispatchLocked(txn);
  CommitTxn(txn, nullptr);
}

v1::WorkerInfo Scheduler::WorkerInfoLocked(const Worker& w, const std::string& owner_filter) const {
  v1::WorkerInfo i;
  i.set_worker_name(w.hello.worker_name());
  i.set_device(w.hello.device());
  i.set_device_name(w.hello.device_name());
  i.set_state(w.state);
  for (const auto& id : w.leases) {
    if (!owner_filter.empty()) {
      auto j = jobs_.find(id);
      if (j == jobs_.end() || j->second.job.owner() != owner_filter) continue;
    }
    i.add_current_job_ids(id);
  }
  i.set_jobs_done(w.jobs_done);
  i.set_jobs_failed(w.jobs_failed);
  *i.mutable_last_seen_time() = ToProto(w.last_seen);
  i.set_memory_total_bytes(w.hello.memory_total_bytes());
  i.set_memory_free_bytes(w.hello.memory_free_bytes());
  i.set_model(w.hello.model());
  i.set_model_fingerprint(w.hello.model_fingerprint());
  i.set_capacity(w.hello.capacity());
  i.set_version(w.hello.version());
  *i.mutable_connect_time() = ToProto(w.connect_time);
  return i;
}

std::vector<v1::WorkerInfo> Scheduler::ListWorkers(const std::string& owner_filter) {
  absl::MutexLock lock(&mu_);
  std::vector<v1::WorkerInfo> out;
  for (const auto& [name, w] : workers_) out.push_back(WorkerInfoLocked(*w, owner_filter));
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.worker_name() < b.worker_name(); });
  return out;
}

absl::StatusOr<Scheduler::WorkerChange> Scheduler::DrainWorker(const std::string& worker_name) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_name);
  if (it == workers_.end()) {
    return absl::NotFoundError(absl::StrCat("worker_name: no worker \"", worker_name, "\""));
  }
  Worker& w = *it->second;
  if (w.state == v1::WORKER_STATE_LOST) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", worker_name, " is LOST"));
  }
  if (w.state == v1::WORKER_STATE_DRAINING) return WorkerChange{WorkerInfoLocked(w, ""), false};
  w.state = v1::WORKER_STATE_DRAINING;
  free_workers_.erase(worker_name);
  if (w.sink) {
    v1::SchedulerMessage m;
    m.mutable_drain();
    w.sink->Send(m);
  }
  LOG(INFO) << "event=worker_drain worker=" << worker_name;
  return WorkerChange{WorkerInfoLocked(w, ""), true};
}

absl::StatusOr<Scheduler::WorkerChange> Scheduler::ResumeWorker(const std::string& worker_name) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_name);
  if (it == workers_.end()) {
    return absl::NotFoundError(absl::StrCat("worker_name: no worker \"", worker_name, "\""));
  }
  Worker& w = *it->second;
  if (w.state != v1::WORKER_STATE_DRAINING) return WorkerChange{WorkerInfoLocked(w, ""), false};
  w.state = v1::WORKER_STATE_READY;
  Txn txn;
  if (w.sink) {
    // Resume goes out before any new assignment (DispatchLocked's sends run
    // after the commit), so the worker accepts them.
    v1::SchedulerMessage m;
    m.mutable_resume();
    w.sink->Send(m);
    if (static_cast<int>(w.leases.size()) < w.hello.capacity()) free_workers_.insert(worker_name);
  }
  LOG(INFO) << "event=worker_resume worker=" << worker_name;
  WorkerChange out{WorkerInfoLocked(w, ""), true};
  DispatchLocked(txn);
  CommitTxn(txn, nullptr);
  return out;
}

// ---------------------------------------------------------------- periodic

void Scheduler::Tick() {
  bool failed = false, reload = false;
  {
    absl::MutexLock lock(&fail_mu_);
    failed = !journal_failure_.ok();
    reload = failed && clock_->MonotonicNow() >= reload_at_;
  }
  if (failed) {
    if (reload) ReloadAfterJournalFailure();
    return;
  }
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  // Wall time for user-given absolute deadlines and stored timestamps (retention,
  // tombstones); monotonic time for every in-process duration, so a wall-clock step
  // neither expires live workers nor hides dead ones.
  absl::Time now = clock_->Now();
  absl::Time mono = clock_->MonotonicNow();
  Txn txn;
  // Deadlines.
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    std::string id = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    auto it = jobs_.find(id);
    if (it == jobs_.end() || IsFinal(it->second.job.state())) continue;
    LOG(INFO) << "event=deadline_exceeded job=" << id << " request=" << it->second.job.request_id();
    CancelJobLocked(it->second, v1::FAILURE_REASON_DEADLINE_EXCEEDED, "deadline exceeded", txn);
  }
  // Heartbeats.
  std::vector<Worker*> silent;
  for (auto& [session, w] : sessions_) {
    if (mono - w->last_seen_mono > options_.lease_timeout) silent.push_back(w);
  }
  for (Worker* w : silent) {
    if (w->sink)
      w->sink->Close(absl::UnavailableError("heartbeat timeout: worker considered lost"));
    WorkerLostLocked(*w,
                     absl::StrCat("no message within the lease timeout (silent for ",
                                  absl::ToInt64Milliseconds(mono - w->last_seen_mono), " ms)"),
                     txn);
  }
  // Retention: finished jobs, then tombstones whose job is gone, then lost workers.
  if (mono - last_prune_ >= absl::Seconds(10)) {
    last_prune_ = mono;
    std::vector<std::string> prune;
    std::vector<std::pair<absl::Time, std::string>> kept;  // finished, within retention
    for (const auto& [id, r] : jobs_) {
      if (!IsFinal(r.job.state())) continue;
      const absl::Time end = FromProto(r.job.end_time());
      if (end + options_.retention <= now) {
        prune.push_back(id);
      } else {
        kept.emplace_back(end, id);
      }
    }
    // Over --max-finished-jobs: the oldest-ended go too.
    const int64_t over_cap = TakeOldestBeyond(options_.max_finished_jobs, &kept, &prune);
    for (const auto& id : prune) {
      JobRecord& r = jobs_.at(id);
      Journal::Op op{Journal::Op::Kind::kDeleteJob, {}, {}, {}};
      op.job.job.set_job_id(id);
      txn.ops.push_back(std::move(op));
      by_seq_.erase(r.seq);
      // Its PNG stays, and OutputPathFreeLocked still finds it on disk.
      if (auto o = outputs_.find(OutputPath(r)); o != outputs_.end() && o->second == id) {
        outputs_.erase(o);
      }
      jobs_.erase(id);
    }
    // Tombstones whose job is gone, by "<owner>\0<request_id>" (TakeOldestBeyond's ids).
    std::vector<std::string> expired;
    std::vector<std::pair<absl::Time, std::string>> orphans;  // job gone, within the TTL
    for (const auto& [key, rr] : requests_) {
      if (jobs_.contains(rr.job_id)) continue;
      std::string flat = absl::StrCat(key.first, std::string(1, '\0'), key.second);
      if (rr.create_time + options_.tombstone_ttl <= now) {
        expired.push_back(std::move(flat));
      } else {
        orphans.emplace_back(rr.create_time, std::move(flat));
      }
    }
    // Over --max-tombstones: the oldest go too.
    const int64_t tombstones_over_cap =
        TakeOldestBeyond(options_.max_tombstones, &orphans, &expired);
    for (const auto& flat : expired) {
      const size_t nul = flat.find('\0');
      Journal::Op op{Journal::Op::Kind::kDeleteRequest, {}, {}, {}};
      op.request.owner = flat.substr(0, nul);
      op.request.request_id = flat.substr(nul + 1);
      requests_.erase(RequestKey(op.request.owner, op.request.request_id));
      txn.ops.push_back(std::move(op));
    }
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (it->second->state == v1::WORKER_STATE_LOST &&
          it->second->lost_mono + options_.lost_worker_ttl <= mono) {
        workers_.erase(it++);
      } else {
        ++it;
      }
    }
    if (!prune.empty() || !expired.empty()) {
      LOG(INFO) << "event=pruned jobs=" << prune.size() << " over_max_finished=" << over_cap
                << " tombstones=" << expired.size()
                << " over_max_tombstones=" << tombstones_over_cap;
    }
  }
  if (mono - last_gauges_ >= absl::Seconds(1)) {
    last_gauges_ = mono;
    UpdateGaugesLocked();
  }
  DispatchLocked(txn);
  CommitTxn(txn, nullptr);
}

void Scheduler::UpdateGaugesLocked() {
  auto depth = queue_.DepthByPriority();
  for (auto& [p, g] : metrics_->depth_by_priority) {
    if (!depth.contains(p)) g->Set(0);
  }
  for (const auto& [p, n] : depth) {
    auto& g = metrics_->depth_by_priority[p];
    if (!g) g = &metrics_->depth->Add({{"priority", absl::StrCat(p)}});
    g->Set(static_cast<double>(n));
  }
  std::map<int, int64_t> by_state;
  for (const auto& [id, r] : jobs_) ++by_state[r.job.state()];
  for (auto& [s, g] : metrics_->job_state) g->Set(static_cast<double>(by_state[s]));
  std::map<int, int64_t> ws;
  for (const auto& [n, w] : workers_) ++ws[w->state];
  for (auto& [s, g] : metrics_->worker_state) g->Set(static_cast<double>(ws[s]));
}

}  // namespace zfarm::scheduler
