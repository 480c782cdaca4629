#ifndef ZFARM_SCHEDULER_JOB_STORE_H_
#define ZFARM_SCHEDULER_JOB_STORE_H_

// The scheduler's job state: every job, the queue of QUEUED ones, deadlines, the
// idempotency tombstones (request records) and the output-name reservations, and
// the one state table (Transition) every change of a job's state goes through.
//
// A job's life:
//
//              Dispatch/Readopt         Start            Succeed
//   (Admit) QUEUED ──────────▶ ASSIGNED ─────▶ RUNNING ─────────▶ SUCCEEDED
//              ▲                  │ Commit ──────▲  │
//              └── Requeue/Recover┴─────────────────┘  Fail ▶ FAILED
//   Cancel: QUEUED/ASSIGNED/RUNNING ▶ CANCELLED; RequestCancel, Progress and
//   Commit keep a leased job where it is (see Event).
//
// Transition() applies one event to one job: its fields, its queue membership and
// its output reservation, and returns what the Scheduler must do with it (the
// journal ops and the watcher event type). It never writes the journal and never
// talks to workers: the Scheduler does both, under its lock.
//
// Thread-compatible: the Scheduler calls it only under Scheduler::mu_.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/contract/contract.h"
#include "scheduler/job_queue.h"
#include "scheduler/journal.h"
#include "zfarm/v1/job.pb.h"
#include "zfarm/v1/job_service.pb.h"

namespace zfarm::scheduler {

// ASSIGNED or RUNNING: a worker holds a lease on the job.
bool IsLeased(zfarm::v1::JobState state);
// "<UTC date of submit_time>/<name>.<png|jpg|webp>" (after `format`), relative to
// the output root.
std::string OutputPathFor(absl::Time submit_time, const std::string& name,
                          zfarm::v1::OutputFormat format);

class JobStore {
 public:
  // What happens to a job. The legal (state, event) pairs are the table in
  // Transition(); every other pair is refused.
  enum class Event {
    kDispatch,       // QUEUED -> ASSIGNED: a new attempt on `worker`
    kReadopt,        // QUEUED -> ASSIGNED: the same attempt, back on the worker holding it
    kStart,          // ASSIGNED -> RUNNING
    kProgress,       // RUNNING -> RUNNING: `step` of `total_steps` (not journaled)
    kCommit,         // ASSIGNED/RUNNING -> RUNNING: the worker's result awaits Finalized
    kRequestCancel,  // ASSIGNED/RUNNING -> same: the worker was told to stop (error kept)
    kRequeue,        // ASSIGNED/RUNNING -> QUEUED: the lease ended, retry (error kept)
    kRecover,        // ASSIGNED/RUNNING -> QUEUED: the scheduler restarted under the lease
    kSucceed,        // RUNNING with a pending commit -> SUCCEEDED
    kFail,           // ASSIGNED/RUNNING -> FAILED
    kCancel,         // QUEUED/ASSIGNED/RUNNING -> CANCELLED
  };
  static const char* EventName(Event event);

  struct Change {
    Event event;
    absl::Time now;                  // wall time: start/end timestamps
    std::string worker;              // kDispatch, kReadopt
    zfarm::v1::FailureReason reason  // kRequestCancel, kRequeue, kFail, kCancel
        = zfarm::v1::FAILURE_REASON_UNSPECIFIED;
    std::string message;             // with `reason`
    zfarm::v1::JobResult result;     // kCommit (its path is replaced by the job's own)
    int32_t step = 0, total_steps = 0;  // kProgress
  };

  struct Effects {
    // To append to the journal in the same transaction (empty for kProgress).
    std::vector<Journal::Op> ops;
    // The watch event this change makes.
    zfarm::v1::JobEventType event_type = zfarm::v1::JOB_EVENT_TYPE_STATE_CHANGED;
    // The worker whose lease on the job this change ended ("" if none).
    std::string released_worker;
    // The job reached SUCCEEDED, FAILED or CANCELLED.
    bool final = false;
  };

  explicit JobStore(double aging_per_minute) : queue_(aging_per_minute) {}

  // The state table. FAILED_PRECONDITION naming the job, the event and the state
  // for a pair it does not list (the job is left unchanged).
  absl::StatusOr<Effects> Transition(JobRecord& r, const Change& change);

  // ---- Admission.
  // A new QUEUED job (seq, job_id, owner, spec, create_time set; state QUEUED):
  // stored, queued, its deadline and output name recorded, its request id (if
  // `request` is set) made idempotent. Returns the journal ops.
  std::vector<Journal::Op> Admit(JobRecord r, std::optional<RequestRecord> request);
  // Undoes Admit() of jobs not yet journaled (a batch that failed half-way).
  void Unadmit(const std::string& job_id);
  uint64_t NextSeq() { return next_seq_++; }
  uint64_t PeekSeq() const { return next_seq_; }

  // ---- Recovery.
  // Fills the (empty) store from the journal: leased jobs are settled by
  // `settle` (which calls Transition), QUEUED ones queued, migrated tombstones
  // fixed up (ops appended to `ops`). Returns the number of leased jobs found.
  template <typename Settle>
  int Rebuild(Journal::Contents& contents, std::vector<Journal::Op>& ops, Settle&& settle);
  // Forgets everything (before Rebuild() after a failed journal write).
  void Clear();

  // ---- Lookup.
  JobRecord* Find(const std::string& job_id);
  const JobRecord* Find(const std::string& job_id) const;
  // The job as clients see it (queue position filled in).
  zfarm::v1::Job View(const JobRecord& r) const;
  // Jobs in submit order, newest last.
  const std::map<uint64_t, std::string>& by_seq() const { return by_seq_; }
  // One job (job_id), or a batch's or label's ("key=value") jobs in submit order.
  std::vector<JobRecord*> Select(const std::string& job_id, const std::string& batch_id,
                                 const std::string& label);
  size_t size() const { return jobs_.size(); }
  std::map<int, int64_t> CountByState() const;

  // ---- Idempotency.
  const RequestRecord* FindRequest(const std::string& owner, const std::string& request_id) const;
  size_t tombstones() const { return requests_.size(); }

  // ---- Output names.
  // The job's output path (relative to the output root).
  static std::string OutputPath(const JobRecord& r);
  // ALREADY_EXISTS (naming `path`, and the job when it is `owner`'s) if a job that
  // is not FAILED/CANCELLED holds the output path.
  absl::Status OutputPathFree(const std::string& path, const std::string& owner,
                              const std::string& field) const;

  // ---- The queue.
  JobQueue& queue() { return queue_; }
  const JobQueue& queue() const { return queue_; }

  // ---- Periodic work.
  // Ids of non-final jobs whose deadline is at or before `now` (removed from the
  // deadline list).
  std::vector<std::string> TakeDueDeadlines(absl::Time now);
  struct Pruned {
    int64_t jobs = 0, jobs_over_cap = 0, tombstones = 0, tombstones_over_cap = 0;
  };
  // Drops finished jobs past `retention` (or beyond `max_finished`, oldest-ended
  // first) and tombstones whose job is gone past `tombstone_ttl` (or beyond
  // `max_tombstones`); appends the journal deletes to `ops`.
  Pruned Prune(absl::Time now, absl::Duration retention, int64_t max_finished,
               absl::Duration tombstone_ttl, int64_t max_tombstones,
               std::vector<Journal::Op>& ops);

 private:
  using RequestKey = std::pair<std::string, std::string>;  // (owner, request_id)
  void Index(JobRecord& r);  // by_seq_, outputs_, queue (if QUEUED), deadline (if not final)

  absl::flat_hash_map<std::string, JobRecord> jobs_;
  std::map<uint64_t, std::string> by_seq_;
  absl::flat_hash_map<RequestKey, RequestRecord> requests_;
  // Output path (relative, jobs with an output_name) -> the job that last claimed it.
  absl::flat_hash_map<std::string, std::string> outputs_;
  JobQueue queue_;
  std::multimap<absl::Time, std::string> deadlines_;
  uint64_t next_seq_ = 1;
};

// ---- implementation of the template

template <typename Settle>
int JobStore::Rebuild(Journal::Contents& contents, std::vector<Journal::Op>& ops,
                      Settle&& settle) {
  int leased = 0;
  for (JobRecord& r : contents.jobs) {
    next_seq_ = std::max(next_seq_, r.seq + 1);
    const std::string id = r.job.job_id();
    auto [it, inserted] = jobs_.emplace(id, std::move(r));
    JobRecord& rec = it->second;
    if (IsLeased(rec.job.state())) {
      ++leased;
      settle(rec);  // leaves it QUEUED or final
    }
    Index(rec);
  }
  for (RequestRecord& r : contents.requests) {
    if (r.owner.empty()) {
      // Written before request ids were scoped to their principal (schema v3):
      // scope it to its job's owner. Without its job the owner is unknown and the
      // tombstone matches nobody until it expires.
      auto j = jobs_.find(r.job_id);
      if (j != jobs_.end()) {
        ops.push_back({Journal::Op::Kind::kDeleteRequest, {}, r, {}});
        r.owner = j->second.job.owner();
        ops.push_back({Journal::Op::Kind::kPutRequest, {}, r, {}});
      }
    }
    RequestKey key{r.owner, r.request_id};
    requests_[std::move(key)] = std::move(r);
  }
  return leased;
}

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_JOB_STORE_H_
