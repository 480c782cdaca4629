#ifndef ZFARM_SCHEDULER_SCHEDULER_H_
#define ZFARM_SCHEDULER_SCHEDULER_H_

// The scheduler's domain core, independent of gRPC: jobs, the priority queue,
// idempotency tombstones, the worker registry with leases, retries, cancel,
// deadlines, retention, and the journal every transition goes through.
//
// Durability contract: every mutation is appended to the Journal under mu_; its
// results (RPC replies, watch events, leases sent to workers, GetJob answers)
// are delivered from the journal's group-commit callback, i.e. only after the
// transition is on disk. Callbacks therefore run on the journal writer thread and
// must be short (finish a reactor, queue a stream write).
//
// A journal write that fails leaves memory ahead of the disk: from then on nothing
// is written or acknowledged (every call that needs the journal answers
// UNAVAILABLE) until the next Tick() has reloaded every job, tombstone and worker
// binding from the journal, as a restart would (workers are disconnected and
// re-adopt their leases when they reconnect).
//
// Thread-safe. Time comes only from the injected Clock (wall time for timestamps
// and deadlines, monotonic time for durations); Tick() runs periodic work
// (deadlines, heartbeat expiry, retention) and is called by the server's timer
// thread, or by tests after advancing a FakeClock.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "scheduler/clock.h"
#include "scheduler/job_queue.h"
#include "scheduler/job_store.h"
#include "scheduler/journal.h"
#include "scheduler/validation.h"
#include "scheduler/worker_registry.h"
#include "zfarm/v1/admin_service.pb.h"
#include "zfarm/v1/job_service.pb.h"
#include "zfarm/v1/worker_service.pb.h"

namespace prometheus {
class Registry;
}

namespace zfarm::scheduler {

// Receives watch events, in order, from the journal thread. Must not block.
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void OnEvent(const zfarm::v1::JobEvent& event) = 0;
};

class Scheduler {
 public:
  struct Options {
    std::string state_dir;
    // Read-only: a worker's committed result must be here (path, size, SHA-256)
    // before its job is SUCCEEDED.
    std::string output_root;
    Limits limits;
    // QUEUED jobs beyond which submits get RESOURCE_EXHAUSTED.
    int max_queued_jobs = 100000;
    // Retry hint returned with RESOURCE_EXHAUSTED.
    absl::Duration retry_after = absl::Seconds(1);
    // Per principal (Job.owner): QUEUED jobs beyond which its submits get
    // RESOURCE_EXHAUSTED (0 = no limit), and submit calls per second with a
    // burst (token bucket; a SubmitJobs batch is one call; 0 = no limit;
    // burst 0 = max(1, rate)).
    int max_queued_per_principal = 0;
    double submit_rate_per_principal = 0;
    int submit_burst_per_principal = 0;
    // Concurrent watch subscriptions per job, batch or label selector.
    int max_watchers_per_job = 256;
    // Attempts (leases that reached RUNNING and then failed or were lost).
    int max_attempts = 3;
    // Finished jobs are pruned from the journal after this long (PNGs are kept).
    absl::Duration retention = absl::Hours(24 * 7);
    // At most this many finished jobs are kept (memory and journal bound): beyond
    // it the oldest-ended are pruned before their retention (tombstones remain,
    // so request ids stay idempotent). 0 = no cap.
    int64_t max_finished_jobs = 100000;
    // Idempotency tombstones live at least this long after submit...
    absl::Duration tombstone_ttl = absl::Hours(24);
    // ...unless more than this many outlive their jobs: then the oldest go first
    // (memory bound at very high submit rates; a request id older than the
    // survivors may then create a new job). 0 = no cap.
    int64_t max_tombstones = 1000000;
    absl::Duration heartbeat_interval = absl::Seconds(5);
    // A worker silent for this long is lost.
    absl::Duration lease_timeout = absl::Seconds(30);
    // Effective priority gained per minute in the queue.
    double aging_per_minute = 1.0;
    // Lost workers stay in ListWorkers this long.
    absl::Duration lost_worker_ttl = absl::Minutes(10);
    // LoRA affinity: how long (from submit) a queued job with LoRAs may wait for a
    // worker whose applied LoRA set is the job's, while one is connected, before any
    // capable worker takes it (--lora-affinity-wait). Jobs behind it are not held
    // up. 0 = no affinity.
    absl::Duration lora_affinity_wait = absl::Seconds(10);
    int64_t fake_fs_type = 0;  // tests: see SqliteJournal::Options
    // Opens the journal (e.g. a PostgresJournal, journal_open.h); empty = the
    // SQLite journal in state_dir.
    std::function<absl::StatusOr<std::unique_ptr<Journal>>()> open_journal;
    // Called with the job's final view once a SUCCEEDED/FAILED/CANCELLED
    // transition is durable, on the journal thread: must not block (the
    // scheduler binds WebhookSender::Enqueue here). May be empty.
    std::function<void(const zfarm::v1::Job&)> on_final;
  };

  // Opens the journal, recovers every job (ASSIGNED/RUNNING -> QUEUED) and makes
  // the recovery durable. `clock` must outlive the scheduler. `registry` (may be
  // null) receives the Prometheus metrics.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(
      const Options& options, Clock* clock, std::shared_ptr<prometheus::Registry> registry);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  template <typename T>
  using Callback = absl::AnyInvocable<void(absl::StatusOr<T>) &&>;

  // ---- JobService. `done` runs once, after durability (or at once on error).
  // RESOURCE_EXHAUSTED carries a retry delay (RetryDelay(), error_details.h; the
  // message says "retry after N ms" too); a request id reused with another spec is
  // INVALID_ARGUMENT carrying the conflict (FindRequestIdConflict()).
  // Request ids are scoped to `owner`: the same id from another principal is a
  // different request (a new job). An output_name whose path
  // (<UTC date>/<name>.png) a job that is not FAILED/CANCELLED holds is
  // ALREADY_EXISTS.
  void Submit(zfarm::v1::SubmitJobRequest request, const std::string& owner,
              Callback<zfarm::v1::SubmitJobResponse> done);
  void SubmitBatch(zfarm::v1::SubmitJobsRequest request, const std::string& owner,
                   Callback<zfarm::v1::SubmitJobsResponse> done);
  //
  // `owner_filter` (last argument of the calls below): "" = every job; else
  // only jobs whose owner it is (a submitter): another principal's job named by
  // id is PERMISSION_DENIED, selectors (batch, label, list) skip it.
  void GetJob(const std::string& job_id, Callback<zfarm::v1::Job> done,
              const std::string& owner_filter = "");
  void ListJobs(const zfarm::v1::ListJobsRequest& request,
                Callback<zfarm::v1::ListJobsResponse> done, const std::string& owner_filter = "");
  void Cancel(const zfarm::v1::CancelJobRequest& request,
              Callback<zfarm::v1::CancelJobResponse> done, const std::string& owner_filter = "");
  // Subscribes `sink` to a job (job_id), a batch or a "key=value" label (exactly
  // one non-empty). Snapshots of the matching jobs arrive first, then changes.
  // NOT_FOUND if nothing matches; RESOURCE_EXHAUSTED beyond
  // max_watchers_per_job. Call Unwatch() before destroying the sink. With an
  // owner_filter the sink must itself drop other owners' later events.
  absl::Status Watch(const std::string& job_id, const std::string& batch_id,
                     const std::string& label, std::shared_ptr<EventSink> sink,
                     const std::string& owner_filter = "");
  void Unwatch(const std::shared_ptr<EventSink>& sink);
  // The result of a SUCCEEDED job (path relative to the output root).
  absl::StatusOr<zfarm::v1::JobResult> Result(const std::string& job_id,
                                              const std::string& owner_filter = "");

  // ---- WorkerService. Hello registers a session and sends Welcome through
  // `sink`; errors (INVALID_ARGUMENT, FAILED_PRECONDITION) end the stream. A worker
  // name belongs to the `principal` that first registered it (journaled): another
  // principal's hello with it is PERMISSION_DENIED.
  absl::StatusOr<uint64_t> WorkerHello(const zfarm::v1::WorkerHello& hello,
                                       std::shared_ptr<WorkerSink> sink,
                                       const std::string& principal = "anonymous");
  // Handles one message after Hello. A non-OK status means: end the stream with it
  // (the worker is then treated as lost).
  absl::Status WorkerMessage(uint64_t session, const zfarm::v1::WorkerMessage& message);
  // The stream ended: the worker is lost, its leases expire.
  void WorkerDisconnected(uint64_t session, const std::string& why);

  // ---- AdminService. With an `owner_filter` (a submitter) current_job_ids lists
  // only that owner's jobs.
  std::vector<zfarm::v1::WorkerInfo> ListWorkers(const std::string& owner_filter = "");
  // The worker after a DrainWorker / ResumeWorker, and whether the call changed it.
  struct WorkerChange {
    zfarm::v1::WorkerInfo worker;
    bool changed = false;
  };
  // Stops assigning to the worker (it finishes what it holds; Drain is sent to it).
  // Already draining: changed=false. NOT_FOUND naming an unknown worker;
  // FAILED_PRECONDITION for a LOST one.
  absl::StatusOr<WorkerChange> DrainWorker(const std::string& worker_name);
  // Undoes DrainWorker: the worker is READY and takes leases again (Resume is sent
  // to it). A worker that is not draining (READY, UNHEALTHY, LOST) is returned
  // with changed=false. NOT_FOUND naming an unknown worker.
  absl::StatusOr<WorkerChange> ResumeWorker(const std::string& worker_name);

  // Periodic work: deadlines, heartbeat expiry, retention, metrics gauges.
  void Tick();
  // Waits until every transition so far is durable.
  absl::Status Flush();
  // Flushes and closes the journal; later calls fail with UNAVAILABLE.
  void Shutdown();

  Journal* journal() { return journal_.get(); }
  const Options& options() const { return options_; }
  int64_t QueuedJobs();

 private:
  using Worker = WorkerRegistry::Worker;
  struct Txn;
  struct Subscribers;
  Scheduler(const Options& options, Clock* clock, std::unique_ptr<Journal> journal);

  absl::Status Recover() ABSL_LOCKS_EXCLUDED(mu_);
  // Fills the (empty) in-memory state from `contents`, requeueing leased jobs.
  void RebuildLocked(Journal::Contents contents, Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a failed journal write: disconnects the workers, reloads from the journal.
  void ReloadAfterJournalFailure() ABSL_LOCKS_EXCLUDED(mu_);
  // OK, or UNAVAILABLE while a failed journal write is not yet reloaded.
  absl::Status JournalFailure() const ABSL_LOCKS_EXCLUDED(fail_mu_);
  // Validates and admits one request into `txn` (no journal write yet).
  absl::StatusOr<zfarm::v1::SubmitJobResponse> AdmitLocked(zfarm::v1::SubmitJobRequest request,
                                                           const std::string& owner,
                                                           const std::string& batch_id,
                                                           const std::string& field, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CommitTxn(Txn& txn, absl::AnyInvocable<void(absl::Status) &&> done)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies one event through JobStore::Transition: its journal ops join `txn`,
  // the lease it ended is released, watchers get the event after the commit, and
  // a final state reaches metrics and on_final. False (and a DFATAL log) if the
  // table refuses the event.
  bool ApplyLocked(JobRecord& r, const JobStore::Change& change, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues `r`'s view for its job, batch and label watchers (after the commit).
  void PublishLocked(const JobRecord& r, zfarm::v1::JobEventType type, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A lease ended badly (lost, failed): requeue, fail or cancel per the rules.
  void LeaseEndedLocked(JobRecord& r, zfarm::v1::FailureReason reason, bool retryable,
                        const std::string& message, Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WorkerLostLocked(Worker& w, const std::string& why, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DispatchLocked(Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // READY, connected workers by active LoRA set (WorkerRegistry::LoraSetKey).
  using AffinityIndex = absl::flat_hash_map<std::string, std::vector<const Worker*>>;
  AffinityIndex AffinityIndexLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // True if `r` should not go to `w` now: `w`'s active LoRA set (`w_key`) is not
  // the job's, another capable worker's is, and the job has waited less than
  // lora_affinity_wait.
  bool WaitsForAffinityLocked(const Worker& w, const std::string& w_key, const JobRecord& r,
                              const AffinityIndex& index, absl::Time now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CancelJobLocked(JobRecord& r, zfarm::v1::FailureReason reason, const std::string& message,
                       Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  JobRecord* FindLeaseLocked(const Worker& w, const zfarm::v1::LeaseId& lease)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One handler per WorkerMessage kind. A non-OK status ends the stream.
  struct Verified {  // a Finalized's result, checked outside the lock
    zfarm::v1::JobResult result;
    absl::Status status;
  };
  absl::Status OnHeartbeatLocked(Worker& w, const zfarm::v1::WorkerHeartbeat& m, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status OnStatusLocked(Worker& w, const zfarm::v1::WorkerStatus& m, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status OnStartedLocked(Worker& w, const zfarm::v1::JobStarted& m, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status OnProgressLocked(Worker& w, const zfarm::v1::StepProgress& m, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status OnCommitLocked(Worker& w, const zfarm::v1::CommitRequest& m, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status OnFinalizedLocked(Worker& w, const zfarm::v1::Finalized& m,
                                 const std::optional<Verified>& verified, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status OnFailureLocked(Worker& w, const zfarm::v1::JobFailure& m, Txn& txn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Tick's duties.
  void ExpireDeadlinesLocked(Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireSilentWorkersLocked(Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PruneLocked(Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  zfarm::v1::WorkerInfo WorkerInfoLocked(const Worker& w, const std::string& owner_filter) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK if the committed file is under the output root with the result's size and
  // SHA-256; FAILED_PRECONDITION / NOT_FOUND saying what differs.
  absl::Status VerifyResult(const zfarm::v1::JobResult& result) const;
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // SubmitBatch's checks that need no state: sizes, ids and every spec.
  absl::Status ValidateBatch(const zfarm::v1::SubmitJobsRequest& request);
  // The batch's jobs whose request ids are new to `owner`; INVALID_ARGUMENT for an
  // id twice in the batch or one already used with a different spec.
  absl::StatusOr<int64_t> CountFreshLocked(const zfarm::v1::SubmitJobsRequest& request,
                                           const std::string& owner)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Admits every job of a checked batch into `txn`, or none (rolled back).
  absl::StatusOr<zfarm::v1::SubmitJobsResponse> AdmitBatchLocked(
      zfarm::v1::SubmitJobsRequest request, const std::string& owner, const std::string& batch_id,
      Txn& txn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Per-principal rate and queue limits for `fresh` new jobs in one call.
  absl::Status AdmitPrincipalLocked(const std::string& owner, int64_t fresh)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  struct Bucket {
    double tokens = 0;
    absl::Time last;  // Clock::MonotonicNow()
  };

  // Constant after construction.
  const Options options_;
  Clock* const clock_;
  const std::unique_ptr<Journal> journal_;
  struct Metrics;
  std::unique_ptr<Metrics> metrics_;

  mutable absl::Mutex mu_;
  // Jobs, queue, deadlines, tombstones, output names and the state table.
  JobStore store_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(mu_);
  // Workers, sessions, leases, free slots, health, drain, name bindings.
  WorkerRegistry registry_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Subscribers> subs_ ABSL_GUARDED_BY(mu_);
  // Clock::MonotonicNow() of the last prune / gauge update.
  absl::Time last_prune_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time last_gauges_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;

  // A failed journal write not yet reloaded (set from the journal thread; may be
  // taken under mu_, never the other way round).
  mutable absl::Mutex fail_mu_ ABSL_ACQUIRED_AFTER(mu_);
  absl::Status journal_failure_ ABSL_GUARDED_BY(fail_mu_);
  // Failed writes since the last successful one, and when (Clock::MonotonicNow())
  // the next reload may run: at once after the first failure, then backing off
  // (a disk that stays broken is not re-read every tick).
  int write_failures_ ABSL_GUARDED_BY(fail_mu_) = 0;
  absl::Time reload_at_ ABSL_GUARDED_BY(fail_mu_) = absl::InfinitePast();
};

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_SCHEDULER_H_
