#ifndef ZFARM_SCHEDULER_JOURNAL_H_
#define ZFARM_SCHEDULER_JOURNAL_H_

// The durable job journal the scheduler talks to: the stored records and the
// operations on them, group commit and the latch-on-failure rule. Two backends
// implement the storage: SqliteJournal (sqlite_journal.h: <state_dir>/journal.db,
// the default, one host) and PostgresJournal (postgres_journal.h: --journal
// postgres://..., shared by active/standby schedulers, every write fenced by the
// leader epoch). OpenJournal() (journal_open.h) picks one from the flags.
//
// Group commit: Append() only queues operations; one writer thread takes every
// queued batch, has the backend write them in ONE transaction (one fsync / one
// PostgreSQL commit) and then runs each batch's `done` callback in append order.
// So N concurrent submits share one commit, and a caller acknowledges only from
// its callback, i.e. after durability. Callbacks run on the writer thread: they
// must be short and must not call Flush(). Append() is thread-safe; ordering =
// order of Append() calls.

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "zfarm/v1/job.pb.h"

namespace zfarm::scheduler {

// A job plus the scheduler's private bookkeeping, as stored.
struct JobRecord {
  zfarm::v1::Job job;
  // Attempts that counted toward --max-attempts (reached RUNNING and ended badly).
  int32_t runs = 0;
  // After an OUT_OF_MEMORY failure: only workers with more total memory qualify.
  int64_t min_memory_bytes = 0;
  // The worker's commit was accepted; waiting for Finalized.
  bool commit_pending = false;
  // A cancel was sent to the worker holding the job.
  bool cancel_requested = false;
  // Queue order within a priority level (assigned at submit).
  uint64_t seq = 0;
  // Fingerprint of the normalized spec (idempotency).
  std::string fingerprint;
};

// An idempotency tombstone: (owner, request_id) -> job, kept after the job is
// pruned. Request ids are scoped to the principal that submitted them (schema v4;
// rows migrated from v3 have an empty owner until the scheduler fills it in from
// their job).
struct RequestRecord {
  std::string owner;
  std::string request_id;
  std::string job_id;
  std::string fingerprint;
  absl::Time create_time;
};

// A worker name and the principal whose token first registered it (schema v4):
// another principal's Connect with that name is refused.
struct WorkerRecord {
  std::string worker_name;
  std::string principal;
};

class Journal {
 public:
  struct Op {
    enum class Kind { kPutJob, kDeleteJob, kPutRequest, kDeleteRequest, kPutWorker };
    Kind kind;
    JobRecord job;          // kPutJob; kDeleteJob uses job.job.job_id()
    RequestRecord request;  // kPutRequest; kDeleteRequest uses owner + request_id
    WorkerRecord worker;    // kPutWorker
  };
  struct Contents {
    std::vector<JobRecord> jobs;
    std::vector<RequestRecord> requests;
    std::vector<WorkerRecord> workers;
  };
  using Done = absl::AnyInvocable<void(absl::Status) &&>;

  // A backend's destructor calls Close() first (the writer calls into it).
  virtual ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Reads everything (call before appending, or after Flush() while nothing is
  // appended).
  virtual absl::StatusOr<Contents> Load() = 0;
  // Where the journal lives, for messages and logs: a file path, or a PostgreSQL
  // URL with its password masked.
  virtual std::string path() const = 0;

  // Queues `ops` (may be empty: a barrier); `done` runs on the writer thread once
  // they are durable (or failed). `done` may be null.
  //
  // A failed write latches: it and every batch behind it (barriers included) fail
  // without being written, because they may build on state that never reached the
  // disk, until ClearFailure(). The owner reconciles its memory with Load() first.
  // The messages of the errors `done` gets start with "journal" (they name it).
  void Append(std::vector<Op> ops, Done done);
  // Waits until everything appended so far is durable (or failed); returns the
  // first error since the journal opened or since ClearFailure().
  absl::Status Flush();
  // Lets writes through again after a failure (call after Flush()).
  void ClearFailure();
  // Tests only: the next `writes` transactions with operations fail with `error`
  // ("journal: " before its message; rolled back, nothing written), as a full disk
  // or an I/O error would.
  void TEST_FailWrites(int writes, absl::Status error);
  // Flushes and stops the writer; further Append()s fail with UNAVAILABLE.
  void Close();

  // Commits (transactions) and batches written so far.
  int64_t commits() const;
  int64_t batches() const;

 protected:
  struct Batch {
    std::vector<Op> ops;
    Done done;
    uint64_t id;
  };
  Journal() = default;
  // Starts the writer thread: the backend calls it last in its Open().
  void StartWriter();
  // Writes the operations of `batches` (at least one) in one transaction, all or
  // nothing; called on the writer thread only. Errors start with "journal".
  virtual absl::Status Write(const std::vector<Batch>& batches) = 0;

 private:
  // The latch and TEST_FailWrites, then Write() when any batch has operations.
  absl::Status WriteOps(const std::vector<Batch>& batches);
  void WriterLoop();

  mutable absl::Mutex mu_;
  std::deque<Batch> pending_ ABSL_GUARDED_BY(mu_);
  uint64_t appended_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t durable_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  absl::Status latched_ ABSL_GUARDED_BY(mu_);  // a failed write (see Append)
  int fail_writes_ ABSL_GUARDED_BY(mu_) = 0;   // TEST_FailWrites
  absl::Status fail_error_ ABSL_GUARDED_BY(mu_);
  int64_t commits_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t batches_ ABSL_GUARDED_BY(mu_) = 0;

  std::thread writer_;
};

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_JOURNAL_H_
