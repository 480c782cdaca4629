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
#include "absl/strings/strip.h"
#include "glog/logging.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "proto/base/files.h"
#include "proto/base/status_macros.h"
#include "proto/contract/contract.h"
#include "proto/contract/error_details.h"
#include "proto/contract/failure_policy.h"
#include "proto/security/paths.h"
#include "scheduler/sqlite_journal.h"

namespace zfarm::scheduler {

namespace v1 = ::zfarm::v1;
using ::zfarm::contract::CountsAgainstDevice;
using ::zfarm::contract::FindRequestIdConflict;
using ::zfarm::contract::FromProto;
using ::zfarm::contract::IsFinal;
using ::zfarm::contract::IsRetryable;
using ::zfarm::contract::RequestIdConflictError;
using ::zfarm::contract::RetryLater;
using ::zfarm::contract::ToProto;

namespace {

using Event = JobStore::Event;

// What a caller hears of a journal write that failed: UNAVAILABLE (retry with the
// same request id), the journal's message (which names it) unchanged.
absl::Status NotDurable(const absl::Status& s) { return absl::UnavailableError(s.message()); }

JobStore::Change Ev(Event event, absl::Time now,
                    v1::FailureReason reason = v1::FAILURE_REASON_UNSPECIFIED,
                    std::string message = "") {
  JobStore::Change c;
  c.event = event;
  c.now = now;
  c.reason = reason;
  c.message = std::move(message);
  return c;
}

}  // namespace

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
      // Short label values ("queued", "ready"); the README's upgrade notes list the old ones.
      job_state[s] = &jobs->Add(
          {{"state", absl::AsciiStrToLower(absl::StripPrefix(v1::JobState_Name(s), "JOB_STATE_"))}});
    }
    for (int s = v1::WorkerState_MIN; s <= v1::WorkerState_MAX; ++s) {
      if (s == 0) continue;
      worker_state[s] = &workers->Add({{"state", absl::AsciiStrToLower(absl::StripPrefix(
                                                     v1::WorkerState_Name(s), "WORKER_STATE_"))}});
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
      store_(options.aging_per_minute),
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
  std::unique_ptr<Journal> journal;
  if (options.open_journal) {
    ZFARM_ASSIGN_OR_RETURN(journal, options.open_journal());
  } else {
    ZFARM_ASSIGN_OR_RETURN(journal, SqliteJournal::Open({.state_dir = options.state_dir,
                                                         .fake_fs_type = options.fake_fs_type}));
  }
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
  const absl::Time now = clock_->Now();
  // A job leased when the scheduler stopped: SUCCEEDED if its accepted commit is on
  // disk, CANCELLED if a cancel was on its way, else QUEUED again.
  const int requeued = store_.Rebuild(contents, txn.ops, [&](JobRecord& rec) {
    if (rec.commit_pending && VerifyResult(rec.job.result()).ok()) {
      ApplyLocked(rec, Ev(Event::kSucceed, now), txn);
    } else if (rec.cancel_requested) {
      ApplyLocked(rec, Ev(Event::kCancel, now, rec.job.error().reason(), rec.job.error().message()),
                  txn);
    } else {
      ApplyLocked(rec, Ev(Event::kRecover, now), txn);
    }
  });
  registry_.RestoreBindings(std::move(contents.workers));
  LOG(INFO) << "event=recovered jobs=" << store_.size() << " queued=" << store_.queue().size()
            << " requeued=" << requeued << " tombstones=" << store_.tombstones()
            << " workers=" << registry_.bindings() << " journal=" << journal_->path();
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
    registry_.DisconnectAll(
        absl::UnavailableError(
            "the scheduler is reloading its journal after a failed write; reconnect"),
        clock_->Now(), clock_->MonotonicNow());
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
  store_.Clear();
  Txn txn;
  RebuildLocked(*std::move(contents), txn);
  {
    absl::MutexLock f(&fail_mu_);
    journal_failure_ = absl::OkStatus();
  }
  LOG(WARNING) << "event=journal_reloaded journal=" << journal_->path()
               << " jobs=" << store_.size();
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
  return store_.queue().size();
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

void Scheduler::PublishLocked(const JobRecord& r, v1::JobEventType type, Txn& txn) {
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
  *ev.mutable_job() = store_.View(r);
  *ev.mutable_event_time() = ToProto(clock_->Now());
  txn.after.push_back([sinks = std::move(sinks), ev = std::move(ev)]() mutable {
    for (auto& s : sinks) s->OnEvent(ev);
  });
}

bool Scheduler::ApplyLocked(JobRecord& r, const JobStore::Change& change, Txn& txn) {
  absl::StatusOr<JobStore::Effects> fx = store_.Transition(r, change);
  if (!fx.ok()) {
    // Every caller checks the state first: a refusal here is a bug, not input.
    LOG(DFATAL) << "event=illegal_transition error=\"" << fx.status().message() << "\"";
    return false;
  }
  for (Journal::Op& op : fx->ops) txn.ops.push_back(std::move(op));
  if (!fx->released_worker.empty()) registry_.ReleaseLease(fx->released_worker, r.job.job_id());
  PublishLocked(r, fx->event_type, txn);
  if (fx->final) {
    const v1::JobState state = r.job.state();
    if (state == v1::JOB_STATE_SUCCEEDED && r.job.has_start_time()) {
      metrics_->run_time->Observe(
          absl::ToDoubleSeconds(change.now - FromProto(r.job.start_time())));
    }
    LOG(INFO) << "event=job_final job=" << r.job.job_id() << " request=" << r.job.request_id()
              << " state=" << v1::JobState_Name(state)
              << (state == v1::JOB_STATE_SUCCEEDED
                      ? ""
                      : " reason=" + v1::FailureReason_Name(r.job.error().reason()))
              << " attempt=" << r.job.attempt();
    if (options_.on_final) {
      // Runs after the transition is durable, never under mu_.
      txn.after.push_back([cb = options_.on_final, job = store_.View(r)] { cb(job); });
    }
  }
  return true;
}

absl::Status Scheduler::VerifyResult(const v1::JobResult& result) const {
  if (options_.output_root.empty()) {
    return absl::FailedPreconditionError("no output root to check the result against");
  }
  // Only a regular file inside the output root counts (a symlink out of it does not).
  ZFARM_ASSIGN_OR_RETURN(std::string path,
                         security::ResolveBeneath(options_.output_root, result.path()));
  ZFARM_ASSIGN_OR_RETURN(base::FileDigest d, base::DigestFile(path));
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

void Scheduler::LeaseEndedLocked(JobRecord& r, v1::FailureReason reason, bool retryable,
                                 const std::string& message, Txn& txn) {
  const absl::Time now = clock_->Now();
  if (r.cancel_requested) {
    ApplyLocked(r, Ev(Event::kCancel, now, r.job.error().reason(), r.job.error().message()), txn);
    return;
  }
  bool counts = r.job.state() == v1::JOB_STATE_RUNNING || reason != v1::FAILURE_REASON_WORKER_LOST;
  if (counts) ++r.runs;
  if (!retryable) {
    ApplyLocked(r, Ev(Event::kFail, now, reason, message), txn);
    return;
  }
  if (r.runs >= options_.max_attempts) {
    ApplyLocked(r,
                Ev(Event::kFail, now, v1::FAILURE_REASON_TOO_MANY_ATTEMPTS,
                   absl::StrCat("gave up after ", r.runs, " attempts; last: ",
                                v1::FailureReason_Name(reason), ": ", message)),
                txn);
    return;
  }
  ApplyLocked(r, Ev(Event::kRequeue, now, reason, message), txn);
  LOG(INFO) << "event=job_requeued job=" << r.job.job_id() << " request=" << r.job.request_id()
            << " reason=" << v1::FailureReason_Name(reason) << " runs=" << r.runs;
}

void Scheduler::CancelJobLocked(JobRecord& r, v1::FailureReason reason, const std::string& message,
                                Txn& txn) {
  if (IsFinal(r.job.state())) return;
  const absl::Time now = clock_->Now();
  if (r.job.state() == v1::JOB_STATE_QUEUED) {
    ApplyLocked(r, Ev(Event::kCancel, now, reason, message), txn);
    return;
  }
  if (r.cancel_requested) return;
  ApplyLocked(r, Ev(Event::kRequestCancel, now, reason, message), txn);
  if (Worker* w = registry_.Connected(r.job.worker())) {
    v1::SchedulerMessage m;
    m.mutable_cancel()->mutable_lease()->set_job_id(r.job.job_id());
    m.mutable_cancel()->mutable_lease()->set_attempt(r.job.attempt());
    *m.mutable_cancel()->mutable_reason() = r.job.error();
    txn.after.push_back([sink = w->sink, m = std::move(m)] { sink->Send(m); });
  }
}

Scheduler::AffinityIndex Scheduler::AffinityIndexLocked() const {
  AffinityIndex index;
  if (options_.lora_affinity_wait <= absl::ZeroDuration()) return index;
  for (const Worker* v : registry_.All()) {
    if (v->state == v1::WORKER_STATE_READY && v->sink) {
      index[WorkerRegistry::LoraSetKey(v->active_loras)].push_back(v);
    }
  }
  return index;
}

bool Scheduler::WaitsForAffinityLocked(const Worker& w, const std::string& w_key,
                                       const JobRecord& r, const AffinityIndex& index,
                                       absl::Time now) const {
  if (index.empty() || r.job.spec().loras_size() == 0) return false;
  const std::string want = WorkerRegistry::LoraSetKey(r.job.spec());
  if (want == w_key) return false;
  if (now - FromProto(r.job.create_time()) >= options_.lora_affinity_wait) return false;
  auto it = index.find(want);
  if (it == index.end()) return false;
  for (const Worker* v : it->second) {
    if (v != &w && WorkerRegistry::CanRun(*v, r.job.spec(), r.min_memory_bytes)) return true;
  }
  return false;
}

void Scheduler::DispatchLocked(Txn& txn) {
  JobQueue& queue = store_.queue();
  if (queue.size() == 0 || registry_.free().empty()) return;
  absl::Time now = clock_->Now();
  // A copy: AddLease() takes a worker that fills up out of free().
  const std::vector<std::string> free(registry_.free().begin(), registry_.free().end());
  const AffinityIndex affinity = AffinityIndexLocked();
  for (const std::string& name : free) {
    Worker& w = *registry_.Find(name);
    const std::string w_key = WorkerRegistry::LoraSetKey(w.active_loras);
    std::map<std::pair<int, int>, v1::Assignment> by_size;
    while (static_cast<int>(w.leases.size()) < w.hello.capacity() && queue.size() > 0) {
      // Pick() calls the predicate synchronously, still under mu_.
      auto picked = queue.Pick(now, [&](const std::string& id) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        const JobRecord& r = *store_.Find(id);
        return WorkerRegistry::CanRun(w, r.job.spec(), r.min_memory_bytes) &&
               !WaitsForAffinityLocked(w, w_key, r, affinity, now);
      });
      if (!picked) break;
      JobRecord& r = *store_.Find(*picked);
      metrics_->queue_wait->Observe(absl::ToDoubleSeconds(now - FromProto(r.job.create_time())));
      JobStore::Change c = Ev(Event::kDispatch, now);
      c.worker = name;
      if (!ApplyLocked(r, c, txn)) break;
      registry_.AddLease(w, *picked);
      v1::Lease* l = by_size[{r.job.spec().width_px(), r.job.spec().height_px()}].add_leases();
      l->mutable_lease()->set_job_id(r.job.job_id());
      l->mutable_lease()->set_attempt(r.job.attempt());
      *l->mutable_spec() = r.job.spec();
      l->set_output_path(JobStore::OutputPath(r));
      *l->mutable_submit_time() = r.job.create_time();
      l->set_request_id(r.job.request_id());
      LOG(INFO) << "event=assign job=" << r.job.job_id() << " request=" << r.job.request_id()
                << " worker=" << name << " attempt=" << r.job.attempt();
    }
    for (auto& [size, a] : by_size) {
      v1::SchedulerMessage m;
      *m.mutable_assignment() = std::move(a);
      txn.after.push_back([sink = w.sink, m = std::move(m)] { sink->Send(m); });
    }
    if (queue.size() == 0) break;
  }
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
    if (const RequestRecord* rr = store_.FindRequest(owner, req.request_id())) {
      if (rr->fingerprint != fp) {
        metrics_->rejected_conflict->Increment();
        return RequestIdConflictError(field, {req.request_id(), rr->job_id});
      }
      if (const JobRecord* j = store_.Find(rr->job_id)) {
        *resp.mutable_job() = store_.View(*j);
      } else {  // pruned: only the tombstone remains
        resp.mutable_job()->set_job_id(rr->job_id);
        resp.mutable_job()->set_request_id(req.request_id());
      }
      resp.set_created(false);
      return resp;
    }
  }
  if (!spec.output_name().empty()) {
    ZFARM_RETURN_IF_ERROR(
        store_.OutputPathFree(OutputPathFor(now, spec.output_name(), spec.output_format()), owner,
                              field));
  }
  JobRecord r;
  r.seq = store_.NextSeq();
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
  std::optional<RequestRecord> request;
  if (!req.request_id().empty()) request = RequestRecord{owner, req.request_id(), id, fp, now};
  for (Journal::Op& op : store_.Admit(std::move(r), std::move(request))) {
    txn.ops.push_back(std::move(op));
  }
  const JobRecord& rec = *store_.Find(id);
  PublishLocked(rec, v1::JOB_EVENT_TYPE_STATE_CHANGED, txn);
  metrics_->submits->Increment();
  LOG(INFO) << "event=submit job=" << id << " request=" << rec.job.request_id()
            << " priority=" << rec.job.spec().priority() << " owner=" << owner;
  *resp.mutable_job() = store_.View(rec);
  resp.set_created(true);
  return resp;
}

void Scheduler::Submit(v1::SubmitJobRequest request, const std::string& owner,
                       Callback<v1::SubmitJobResponse> done) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return std::move(done)(absl::UnavailableError("scheduler is shutting down"));
  const bool known = store_.FindRequest(owner, request.request_id()) != nullptr;
  const size_t queued = store_.queue().size();
  if (static_cast<int64_t>(queued) >= options_.max_queued_jobs && !known) {
    metrics_->rejected_full->Increment();
    return std::move(done)(RetryLater(absl::StrCat("queue is full (", queued,
                                                   " jobs queued, --max-queued-jobs=",
                                                   options_.max_queued_jobs, ")"),
                                      options_.retry_after));
  }
  if (!known || request.request_id().empty()) {
    if (absl::Status s = AdmitPrincipalLocked(owner, 1); !s.ok()) return std::move(done)(s);
  }
  Txn txn;
  auto resp = AdmitLocked(std::move(request), owner, "", "", txn);
  if (!resp.ok()) {
    if (absl::IsInvalidArgument(resp.status()) && !FindRequestIdConflict(resp.status())) {
      metrics_->rejected_invalid->Increment();
    }
    return std::move(done)(resp.status());
  }
  DispatchLocked(txn);
  CommitTxn(txn, [done = std::move(done), resp = *std::move(resp)](absl::Status s) mutable {
    if (!s.ok()) return std::move(done)(NotDurable(s));
    std::move(done)(std::move(resp));
  });
}

absl::Status Scheduler::ValidateBatch(const v1::SubmitJobsRequest& request) {
  const Limits& lim = options_.limits;
  if (request.jobs_size() == 0) return absl::InvalidArgumentError("jobs: must not be empty");
  if (request.jobs_size() > lim.max_batch_jobs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "jobs: ", request.jobs_size(), " jobs exceeds the batch limit of ", lim.max_batch_jobs));
  }
  ZFARM_RETURN_IF_ERROR(ValidateRequestId(lim, "batch_id", request.batch_id()));
  // Everything first: all or nothing.
  for (int i = 0; i < request.jobs_size(); ++i) {
    v1::JobSpec spec = request.jobs(i).spec();
    std::string f = absl::StrCat("jobs[", i, "].");
    absl::Status s = ValidateRequestId(lim, f + "request_id", request.jobs(i).request_id());
    if (s.ok()) s = ValidateAndNormalizeSpec(lim, f + "spec", &spec);
    if (!s.ok()) {
      metrics_->rejected_invalid->Increment();
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Scheduler::CountFreshLocked(const v1::SubmitJobsRequest& request,
                                                    const std::string& owner) {
  int64_t fresh = 0;
  std::set<std::string> seen;
  for (int i = 0; i < request.jobs_size(); ++i) {
    const auto& j = request.jobs(i);
    if (!j.request_id().empty()) {
      if (!seen.insert(j.request_id()).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            "jobs[", i, "].request_id: \"", j.request_id(), "\" appears twice in the batch"));
      }
      if (const RequestRecord* rr = store_.FindRequest(owner, j.request_id())) {
        v1::JobSpec spec = j.spec();
        ValidateAndNormalizeSpec(options_.limits, "", &spec).IgnoreError();
        if (SpecFingerprint(spec) != rr->fingerprint) {
          metrics_->rejected_conflict->Increment();
          return RequestIdConflictError(absl::StrCat("jobs[", i, "]."),
                                        {j.request_id(), rr->job_id});
        }
        continue;
      }
    }
    ++fresh;
  }
  return fresh;
}

absl::StatusOr<v1::SubmitJobsResponse> Scheduler::AdmitBatchLocked(v1::SubmitJobsRequest request,
                                                                   const std::string& owner,
                                                                   const std::string& batch_id,
                                                                   Txn& txn) {
  v1::SubmitJobsResponse resp;
  resp.set_batch_id(batch_id);
  for (int i = 0; i < request.jobs_size(); ++i) {
    auto r = AdmitLocked(std::move(*request.mutable_jobs(i)), owner, batch_id,
                         absl::StrCat("jobs[", i, "]."), txn);
    if (!r.ok()) {
      // After the checks of SubmitBatch: a deadline in the past or an output path
      // taken (also by an earlier job of this batch); nothing was journaled yet but
      // memory holds admitted jobs: roll back.
      for (const auto& prev : resp.jobs()) {
        if (prev.created()) store_.Unadmit(prev.job().job_id());
      }
      return r.status();
    }
    *resp.add_jobs() = *std::move(r);
  }
  return resp;
}

void Scheduler::SubmitBatch(v1::SubmitJobsRequest request, const std::string& owner,
                            Callback<v1::SubmitJobsResponse> done) {
  if (absl::Status s = ValidateBatch(request); !s.ok()) return std::move(done)(s);
  absl::MutexLock lock(&mu_);
  if (shut_down_) return std::move(done)(absl::UnavailableError("scheduler is shutting down"));
  std::string batch_id = request.batch_id();
  if (batch_id.empty()) {
    absl::BitGen gen;
    batch_id = absl::StrFormat("b-%s-%09d-%04x",
                               absl::FormatTime("%Y%m%d", clock_->Now(), absl::UTCTimeZone()),
                               store_.PeekSeq(), absl::Uniform<uint32_t>(gen, 0, 0x10000));
  }
  // Conflicts and capacity are checked before anything is admitted.
  absl::StatusOr<int64_t> fresh = CountFreshLocked(request, owner);
  if (!fresh.ok()) return std::move(done)(fresh.status());
  if (static_cast<int64_t>(store_.queue().size()) + *fresh > options_.max_queued_jobs) {
    metrics_->rejected_full->Increment();
    return std::move(done)(RetryLater(
        absl::StrCat("queue is full (", store_.queue().size(), " jobs queued + ", *fresh,
                     " new > --max-queued-jobs=", options_.max_queued_jobs, ")"),
        options_.retry_after));
  }
  if (*fresh > 0) {
    if (absl::Status s = AdmitPrincipalLocked(owner, *fresh); !s.ok()) return std::move(done)(s);
  }
  const int jobs = request.jobs_size();
  Txn txn;
  absl::StatusOr<v1::SubmitJobsResponse> resp =
      AdmitBatchLocked(std::move(request), owner, batch_id, txn);
  if (!resp.ok()) return std::move(done)(resp.status());
  LOG(INFO) << "event=submit_batch batch=" << batch_id << " jobs=" << jobs << " new=" << *fresh;
  DispatchLocked(txn);
  CommitTxn(txn, [done = std::move(done), resp = *std::move(resp)](absl::Status s) mutable {
    if (!s.ok()) return std::move(done)(NotDurable(s));
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
      static_cast<int64_t>(store_.queue().OwnerSize(owner)) + fresh >
          options_.max_queued_per_principal) {
    metrics_->rejected_full->Increment();
    return RetryLater(
        absl::StrCat("principal ", owner, " has ", store_.queue().OwnerSize(owner), " jobs queued (+",
                     fresh, " new > --max-queued-per-principal=", options_.max_queued_per_principal,
                     ")"),
        options_.retry_after);
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
      return RetryLater(absl::StrCat("principal ", owner, " exceeds --submit-rate-per-principal=",
                                     rate, "/s (burst ", burst, ")"),
                        absl::Milliseconds(std::max<int64_t>(1, wait_ms)));
    }
    b.tokens -= 1.0;
    if (buckets_.size() > 100000) buckets_.clear();  // bound memory (many principals)
  }
  return absl::OkStatus();
}

void Scheduler::GetJob(const std::string& job_id, Callback<v1::Job> done,
                       const std::string& owner_filter) {
  absl::MutexLock lock(&mu_);
  const JobRecord* r = store_.Find(job_id);
  if (r == nullptr) {
    return std::move(done)(absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\"")));
  }
  if (!owner_filter.empty() && r->job.owner() != owner_filter) {
    return std::move(done)(NotYours(job_id));
  }
  // Answered once every earlier transition is durable (it may show them), and not
  // at all if one of them failed to reach the disk.
  Txn txn;
  CommitTxn(txn, [done = std::move(done), job = store_.View(*r)](absl::Status s) mutable {
    if (!s.ok()) return std::move(done)(s);
    std::move(done)(std::move(job));
  });
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
  const auto& by_seq = store_.by_seq();
  auto it = by_seq.lower_bound(before);
  while (it != by_seq.begin()) {
    --it;
    const JobRecord& r = *store_.Find(it->second);
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
    *resp.add_jobs() = store_.View(r);
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
  auto selected = store_.Select(req.job_id(), req.batch_id(), req.label());
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
    if (!s.ok()) return std::move(done)(NotDurable(s));
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
  auto selected = store_.Select(job_id, batch_id, label);
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
      return RetryLater(absl::StrCat("selector ", key, " already has ", it->second.size(),
                                     " watchers (--max-watchers-per-job=",
                                     options_.max_watchers_per_job, ")"),
                        options_.retry_after);
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
    *ev.mutable_job() = store_.View(*r);
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
  const JobRecord* r = store_.Find(job_id);
  if (r == nullptr) return absl::NotFoundError(absl::StrCat("job_id: no job \"", job_id, "\""));
  if (!owner_filter.empty() && r->job.owner() != owner_filter) return NotYours(job_id);
  if (r->job.state() != v1::JOB_STATE_SUCCEEDED) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id, " is ", v1::JobState_Name(r->job.state()), ", not SUCCEEDED"));
  }
  return r->job.result();
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
  ZFARM_RETURN_IF_ERROR(WorkerRegistry::ValidateCapabilities(hello));
  absl::MutexLock lock(&mu_);
  if (shut_down_) return absl::UnavailableError("scheduler is shutting down");
  Txn txn;
  ZFARM_RETURN_IF_ERROR(registry_.Bind(hello.worker_name(), principal, txn.ops));
  const absl::Time now = clock_->Now();
  std::set<std::string> kept;
  if (Worker* old = registry_.Connected(hello.worker_name())) {
    // Replaces a live session: keep the leases it still holds, at most the new
    // capacity; the rest are requeued as lost.
    std::set<std::string> held;
    for (const auto& l : hello.held_leases()) held.insert(l.job_id());
    for (const auto& id : old->leases) {
      if (held.contains(id) && static_cast<int>(kept.size()) < hello.capacity()) kept.insert(id);
    }
    for (const auto& id : kept) old->leases.erase(id);
    old->sink->Close(absl::AbortedError("replaced by a new session of the same worker"));
    WorkerLostLocked(*old, "replaced by a new session", txn);
  }
  Worker& w = registry_.Connect(hello, sink, std::move(kept), now, clock_->MonotonicNow());
  // Re-adopt leases the scheduler requeued (e.g. after its own restart) and that
  // nobody else took yet.
  for (const auto& l : hello.held_leases()) {
    JobRecord* r = store_.Find(l.job_id());
    if (r == nullptr) continue;
    if (r->job.state() == v1::JOB_STATE_QUEUED && r->job.attempt() == l.attempt() &&
        w.HasFreeSlot()) {
      JobStore::Change c = Ev(Event::kReadopt, now);
      c.worker = hello.worker_name();
      if (ApplyLocked(*r, c, txn)) registry_.AddLease(w, r->job.job_id());
    }
  }
  v1::SchedulerMessage welcome;
  welcome.mutable_welcome()->set_session_id(absl::StrCat("s-", w.session));
  welcome.mutable_welcome()->set_heartbeat_interval_ms(
      absl::ToInt64Milliseconds(options_.heartbeat_interval));
  welcome.mutable_welcome()->set_lease_timeout_ms(
      absl::ToInt64Milliseconds(options_.lease_timeout));
  sink->Send(welcome);
  LOG(INFO) << "event=worker_connected worker=" << hello.worker_name() << " session=" << w.session
            << " device=" << hello.device() << " model=" << hello.model()
            << " capacity=" << hello.capacity() << " kept_leases=" << w.leases.size();
  DispatchLocked(txn);
  CommitTxn(txn, nullptr);
  return w.session;
}

JobRecord* Scheduler::FindLeaseLocked(const Worker& w, const v1::LeaseId& lease) {
  if (!w.leases.contains(lease.job_id())) return nullptr;
  JobRecord* r = store_.Find(lease.job_id());
  if (r == nullptr) return nullptr;
  if (r->job.attempt() != lease.attempt() || !IsLeased(r->job.state()) ||
      r->job.worker() != w.hello.worker_name()) {
    return nullptr;
  }
  return r;
}

namespace {
absl::Status NeedLease(const v1::LeaseId& l, const char* what) {
  if (l.job_id().empty() || l.attempt() < 1) {
    return absl::InvalidArgumentError(absl::StrCat(what, ".lease: job_id and attempt >= 1 required"));
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status Scheduler::WorkerMessage(uint64_t session, const v1::WorkerMessage& msg) {
  // Finalized: the committed file is checked before SUCCEEDED, hashed outside mu_.
  // One stream's messages arrive one at a time, so its lease cannot gain another
  // commit meanwhile (it can only end, which the locked part sees).
  std::optional<Verified> verified;
  if (msg.has_finalized()) {
    std::optional<v1::JobResult> checked;
    {
      absl::MutexLock lock(&mu_);
      Worker* w = registry_.FindSession(session);
      JobRecord* r = w == nullptr ? nullptr : FindLeaseLocked(*w, msg.finalized().lease());
      if (r && r->commit_pending) checked = r->job.result();
    }
    if (checked) verified = Verified{*checked, VerifyResult(*checked)};
  }
  absl::MutexLock lock(&mu_);
  Worker* found = registry_.FindSession(session);
  if (found == nullptr) return absl::FailedPreconditionError("session is no longer active");
  Worker& w = *found;
  WorkerRegistry::Seen(w, clock_->Now(), clock_->MonotonicNow());
  Txn txn;
  absl::Status s;
  switch (msg.msg_case()) {
    case v1::WorkerMessage::kHello:
      return absl::FailedPreconditionError("hello: sent twice on one stream");
    case v1::WorkerMessage::kHeartbeat:
      s = OnHeartbeatLocked(w, msg.heartbeat(), txn);
      break;
    case v1::WorkerMessage::kStatus:
      s = OnStatusLocked(w, msg.status(), txn);
      break;
    case v1::WorkerMessage::kStarted:
      s = OnStartedLocked(w, msg.started(), txn);
      break;
    case v1::WorkerMessage::kProgress:
      s = OnProgressLocked(w, msg.progress(), txn);
      break;
    case v1::WorkerMessage::kCommit:
      s = OnCommitLocked(w, msg.commit(), txn);
      break;
    case v1::WorkerMessage::kFinalized:
      s = OnFinalizedLocked(w, msg.finalized(), verified, txn);
      break;
    case v1::WorkerMessage::kFailure:
      s = OnFailureLocked(w, msg.failure(), txn);
      break;
    case v1::WorkerMessage::MSG_NOT_SET:
      return absl::InvalidArgumentError("worker message: empty (no field of `msg` set)");
  }
  // A refused message ends the stream; what it changed before is not committed
  // (as before the split: the early return dropped the transaction).
  ZFARM_RETURN_IF_ERROR(s);
  DispatchLocked(txn);
  CommitTxn(txn, nullptr);
  return absl::OkStatus();
}

absl::Status Scheduler::OnHeartbeatLocked(Worker& w, const v1::WorkerHeartbeat& hb, Txn&) {
  // A new catalog or active set may let queued jobs run: the caller dispatches.
  return WorkerRegistry::Heartbeat(w, hb);
}

absl::Status Scheduler::OnStatusLocked(Worker& w, const v1::WorkerStatus& st, Txn&) {
  registry_.ReportHealth(w, st.healthy(), st.message());
  return absl::OkStatus();
}

absl::Status Scheduler::OnStartedLocked(Worker& w, const v1::JobStarted& m, Txn& txn) {
  ZFARM_RETURN_IF_ERROR(NeedLease(m.lease(), "started"));
  JobRecord* r = FindLeaseLocked(w, m.lease());
  if (!r) return absl::OkStatus();  // stale: a cancel or expiry raced with it
  if (r->job.state() == v1::JOB_STATE_ASSIGNED) ApplyLocked(*r, Ev(Event::kStart, clock_->Now()), txn);
  return absl::OkStatus();
}

absl::Status Scheduler::OnProgressLocked(Worker& w, const v1::StepProgress& p, Txn& txn) {
  ZFARM_RETURN_IF_ERROR(NeedLease(p.lease(), "progress"));
  if (p.step() < 0 || p.total_steps() < 1 || p.step() > p.total_steps()) {
    return absl::InvalidArgumentError(
        absl::StrCat("progress: step ", p.step(), " of ", p.total_steps(), " is out of range"));
  }
  JobRecord* r = FindLeaseLocked(w, p.lease());
  if (!r) return absl::OkStatus();
  if (r->job.state() == v1::JOB_STATE_ASSIGNED) {
    return absl::FailedPreconditionError(
        absl::StrCat("progress for ", p.lease().job_id(), " before started"));
  }
  JobStore::Change c = Ev(Event::kProgress, clock_->Now());
  c.step = p.step();
  c.total_steps = p.total_steps();
  ApplyLocked(*r, c, txn);
  return absl::OkStatus();
}

absl::Status Scheduler::OnCommitLocked(Worker& w, const v1::CommitRequest& m, Txn& txn) {
  ZFARM_RETURN_IF_ERROR(NeedLease(m.lease(), "commit"));
  v1::SchedulerMessage reply;
  auto* cr = reply.mutable_commit_reply();
  *cr->mutable_lease() = m.lease();
  // The reply goes out once the decision is durable.
  auto send_reply = [&] {
    txn.after.push_back([sink = w.sink, reply = std::move(reply)] { sink->Send(reply); });
  };
  JobRecord* r = FindLeaseLocked(w, m.lease());
  if (!r) {
    cr->set_accepted(false);
    cr->set_reason("stale lease: the job was reassigned, cancelled or finished");
    LOG(WARNING) << "event=commit_refused worker=" << w.hello.worker_name()
                 << " job=" << m.lease().job_id() << " attempt=" << m.lease().attempt()
                 << " reason=stale";
    send_reply();
    return absl::OkStatus();
  }
  if (r->commit_pending) return absl::FailedPreconditionError("commit: sent twice for one lease");
  const absl::Time now = clock_->Now();
  if (r->cancel_requested) {
    cr->set_accepted(false);
    cr->set_reason("the job was cancelled");
    ApplyLocked(*r, Ev(Event::kCancel, now, r->job.error().reason(), r->job.error().message()),
                txn);
    send_reply();
    return absl::OkStatus();
  }
  JobStore::Change c = Ev(Event::kCommit, now);
  c.result = m.result();
  ApplyLocked(*r, c, txn);
  cr->set_accepted(true);
  send_reply();
  return absl::OkStatus();
}

absl::Status Scheduler::OnFinalizedLocked(Worker& w, const v1::Finalized& m,
                                          const std::optional<Verified>& verified, Txn& txn) {
  ZFARM_RETURN_IF_ERROR(NeedLease(m.lease(), "finalized"));
  JobRecord* r = FindLeaseLocked(w, m.lease());
  if (!r) return absl::OkStatus();
  if (!r->commit_pending) {
    return absl::FailedPreconditionError("finalized: no accepted commit for this lease");
  }
  // Checked outside the lock, unless the lease's result changed meanwhile.
  absl::Status ok = verified && verified->result.SerializeAsString() ==
                                    r->job.result().SerializeAsString()
                        ? verified->status
                        : VerifyResult(r->job.result());
  if (!ok.ok()) {
    // A worker that claims a file it did not write (or wrote wrong): this
    // attempt fails and counts against the worker's health.
    const std::string why = absl::StrCat("committed result does not check out: ", ok.message());
    LOG(WARNING) << "event=result_rejected worker=" << w.hello.worker_name()
                 << " job=" << r->job.job_id() << " attempt=" << r->job.attempt() << " error=\""
                 << ok.message() << "\"";
    ++w.jobs_failed;
    registry_.CountDeviceFailure(w, why);
    LeaseEndedLocked(*r, v1::FAILURE_REASON_OUTPUT_ERROR, true, why, txn);
    return absl::OkStatus();
  }
  registry_.CountSuccess(w);
  ApplyLocked(*r, Ev(Event::kSucceed, clock_->Now()), txn);
  return absl::OkStatus();
}

absl::Status Scheduler::OnFailureLocked(Worker& w, const v1::JobFailure& f, Txn& txn) {
  ZFARM_RETURN_IF_ERROR(NeedLease(f.lease(), "failure"));
  JobRecord* r = FindLeaseLocked(w, f.lease());
  if (!r) return absl::OkStatus();
  const v1::JobError& e = f.error();
  v1::FailureReason reason = e.reason();
  const bool retryable = IsRetryable(reason, e.retryable());
  if (reason == v1::FAILURE_REASON_OUT_OF_MEMORY) {
    r->min_memory_bytes = std::max(
        {r->min_memory_bytes, w.hello.memory_total_bytes() + 1, f.memory_required_bytes()});
  }
  if ((reason == v1::FAILURE_REASON_DEADLINE_EXCEEDED ||
       reason == v1::FAILURE_REASON_CANCELLED_BY_CLIENT) &&
      !r->cancel_requested) {
    // The worker stopped at a step boundary for a deadline (or cancel) it saw
    // before our tick did: the job is CANCELLED, and no fault of the worker.
    LOG(INFO) << "event=job_failure job=" << r->job.job_id() << " worker=" << w.hello.worker_name()
              << " reason=" << v1::FailureReason_Name(reason) << " retryable=" << retryable;
    ApplyLocked(*r, Ev(Event::kCancel, clock_->Now(), reason, e.message()), txn);
    return absl::OkStatus();
  }
  if (!r->cancel_requested) {
    ++w.jobs_failed;
    if (CountsAgainstDevice(reason)) registry_.CountDeviceFailure(w, e.message());
  }
  LOG(INFO) << "event=job_failure job=" << r->job.job_id() << " worker=" << w.hello.worker_name()
            << " reason=" << v1::FailureReason_Name(reason) << " retryable=" << retryable;
  LeaseEndedLocked(*r, reason, retryable, e.message(), txn);
  return absl::OkStatus();
}

void Scheduler::WorkerLostLocked(Worker& w, const std::string& why, Txn& txn) {
  const std::string name = w.name();
  LOG(WARNING) << "event=worker_lost worker=" << name << " session=" << w.session
               << " leases=" << w.leases.size() << " why=\"" << why << "\"";
  const std::set<std::string> leases = registry_.Lost(w, clock_->Now(), clock_->MonotonicNow());
  for (const auto& id : leases) {
    JobRecord* r = store_.Find(id);
    if (r == nullptr || !IsLeased(r->job.state()) || r->job.worker() != name) continue;
    if (r->commit_pending && VerifyResult(r->job.result()).ok()) {
      ++w.jobs_done;
      ApplyLocked(*r, Ev(Event::kSucceed, clock_->Now()), txn);
      continue;
    }
    // An accepted commit whose file does not check out is dropped with the lease.
    LeaseEndedLocked(*r, v1::FAILURE_REASON_WORKER_LOST, true,
                     absl::StrCat("worker ", name, " lost: ", why), txn);
  }
}

void Scheduler::WorkerDisconnected(uint64_t session, const std::string& why) {
  absl::MutexLock lock(&mu_);
  Worker* w = registry_.FindSession(session);
  if (w == nullptr) return;
  Txn txn;
  WorkerLostLocked(*w, why, txn);
  DispatchLocked(txn);
  CommitTxn(txn, nullptr);
}

v1::WorkerInfo Scheduler::WorkerInfoLocked(const Worker& w, const std::string& owner_filter) const {
  v1::WorkerInfo i = WorkerRegistry::Info(w);
  for (const auto& id : w.leases) {
    if (!owner_filter.empty()) {
      const JobRecord* j = store_.Find(id);
      if (j == nullptr || j->job.owner() != owner_filter) continue;
    }
    i.add_current_job_ids(id);
  }
  return i;
}

std::vector<v1::WorkerInfo> Scheduler::ListWorkers(const std::string& owner_filter) {
  absl::MutexLock lock(&mu_);
  std::vector<v1::WorkerInfo> out;
  for (const Worker* w : registry_.All()) out.push_back(WorkerInfoLocked(*w, owner_filter));
  return out;
}

absl::StatusOr<Scheduler::WorkerChange> Scheduler::DrainWorker(const std::string& worker_name) {
  absl::MutexLock lock(&mu_);
  bool changed = false;
  ZFARM_ASSIGN_OR_RETURN(Worker * w, registry_.Drain(worker_name, &changed));
  return WorkerChange{WorkerInfoLocked(*w, ""), changed};
}

absl::StatusOr<Scheduler::WorkerChange> Scheduler::ResumeWorker(const std::string& worker_name) {
  absl::MutexLock lock(&mu_);
  bool changed = false;
  ZFARM_ASSIGN_OR_RETURN(Worker * w, registry_.Resume(worker_name, &changed));
  WorkerChange out{WorkerInfoLocked(*w, ""), changed};
  if (changed) {
    Txn txn;
    DispatchLocked(txn);
    CommitTxn(txn, nullptr);
  }
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
  const absl::Time mono = clock_->MonotonicNow();
  Txn txn;
  ExpireDeadlinesLocked(txn);
  ExpireSilentWorkersLocked(txn);
  if (mono - last_prune_ >= absl::Seconds(10)) {
    last_prune_ = mono;
    PruneLocked(txn);
  }
  if (mono - last_gauges_ >= absl::Seconds(1)) {
    last_gauges_ = mono;
    UpdateGaugesLocked();
  }
  DispatchLocked(txn);
  CommitTxn(txn, nullptr);
}

void Scheduler::ExpireDeadlinesLocked(Txn& txn) {
  for (const std::string& id : store_.TakeDueDeadlines(clock_->Now())) {
    JobRecord& r = *store_.Find(id);
    LOG(INFO) << "event=deadline_exceeded job=" << id << " request=" << r.job.request_id();
    CancelJobLocked(r, v1::FAILURE_REASON_DEADLINE_EXCEEDED, "deadline exceeded", txn);
  }
}

void Scheduler::ExpireSilentWorkersLocked(Txn& txn) {
  const absl::Time mono = clock_->MonotonicNow();
  for (Worker* w : registry_.Silent(mono, options_.lease_timeout)) {
    if (w->sink) {
      w->sink->Close(absl::UnavailableError("heartbeat timeout: worker considered lost"));
    }
    WorkerLostLocked(*w,
                     absl::StrCat("no message within the lease timeout (silent for ",
                                  absl::ToInt64Milliseconds(mono - w->last_seen_mono), " ms)"),
                     txn);
  }
}

void Scheduler::PruneLocked(Txn& txn) {
  // Finished jobs, then tombstones whose job is gone, then lost workers.
  const JobStore::Pruned p =
      store_.Prune(clock_->Now(), options_.retention, options_.max_finished_jobs,
                   options_.tombstone_ttl, options_.max_tombstones, txn.ops);
  registry_.PruneLost(clock_->MonotonicNow(), options_.lost_worker_ttl);
  if (p.jobs > 0 || p.tombstones > 0) {
    LOG(INFO) << "event=pruned jobs=" << p.jobs << " over_max_finished=" << p.jobs_over_cap
              << " tombstones=" << p.tombstones
              << " over_max_tombstones=" << p.tombstones_over_cap;
  }
}

void Scheduler::UpdateGaugesLocked() {
  auto depth = store_.queue().DepthByPriority();
  for (auto& [p, g] : metrics_->depth_by_priority) {
    if (!depth.contains(p)) g->Set(0);
  }
  for (const auto& [p, n] : depth) {
    auto& g = metrics_->depth_by_priority[p];
    if (!g) g = &metrics_->depth->Add({{"priority", absl::StrCat(p)}});
    g->Set(static_cast<double>(n));
  }
  std::map<int, int64_t> by_state = store_.CountByState();
  for (auto& [s, g] : metrics_->job_state) g->Set(static_cast<double>(by_state[s]));
  std::map<int, int64_t> ws = registry_.CountByState();
  for (auto& [s, g] : metrics_->worker_state) g->Set(static_cast<double>(ws[s]));
}

}  // namespace zfarm::scheduler
