#ifndef ZFARM_SCHEDULER_JOURNAL_H_
#define ZFARM_SCHEDULER_JOURNAL_H_

// The durable job journal: SQLite in <state_dir>/journal.db, WAL mode,
// synchronous=FULL, schema versioned with PRAGMA user_version and forward
// migrations.
//
// Group commit: Append() only queues operations; one writer thread takes every
// queued batch, writes them in ONE transaction (one fsync) and then runs each
// batch's `done` callback in append order. So N concurrent submits share one fsync,
// and a caller acknowledges only from its callback, i.e. after durability.
// Callbacks run on the writer thread: they must be short and must not call
// Flush(). Append() is thread-safe; ordering = order of Append() calls.
//
// Open() refuses a state dir on a network filesystem (NFS, SMB/CIFS, ...):
// SQLite's WAL needs shared memory that those filesystems do not provide.
//
// Damage is refused, never papered over (FAILED_PRECONDITION / DATA_LOSS naming
// the file and the recovery, see README "Journal recovery"): a side file
// <state_dir>/journal.db.state ("open" while a scheduler runs, "closed" after a
// clean Close) detects a journal.db that was deleted or emptied and a WAL that
// vanished after a crash; the main file's header is checked against its size
// (truncation); the WAL is scanned so that a damaged frame followed by frames of
// the same generation (which SQLite would silently cut off) is refused;
// PRAGMA integrity_check runs at open; every row carries a checksum of all its
// columns (schema v2), checked by Load(). Every write transaction also bumps a
// commit counter inside the journal (schema v3, table meta) and, once committed
// and before any caller is told, records it in <state_dir>/journal.db.commits
// (16 bytes, fdatasync'ed): a journal found BEHIND that record at open lost
// acknowledged transactions (its last WAL frames damaged or cut at a frame
// boundary, which SQLite cannot tell from a torn write and drops) and is
// refused (DATA_LOSS). The cost is one more fdatasync per group commit.
//
// Schema v4: idempotency tombstones keyed by (owner, request_id), and the worker
// name -> principal bindings (table workers).

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

struct sqlite3;
struct sqlite3_stmt;

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

// Returns FAILED_PRECONDITION if `f_type` (statfs) is a network filesystem.
absl::Status CheckLocalFilesystemType(const std::string& path, int64_t f_type);

class Journal {
 public:
  struct Options {
    std::string state_dir;
    // Tests only: pretend the state dir has this statfs f_type.
    int64_t fake_fs_type = 0;
  };
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

  // Opens (creating if needed) and migrates the journal, then starts the writer.
  static absl::StatusOr<std::unique_ptr<Journal>> Open(const Options& options);
  ~Journal();  // Flushes and closes.
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Reads everything (call before appending, or after Flush() while nothing is
  // appended).
  absl::StatusOr<Contents> Load();

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

  // For tests and diagnostics: runs "PRAGMA <name>" and returns the first column.
  absl::StatusOr<std::string> Pragma(const std::string& name);
  static constexpr int kSchemaVersion = 4;
  std::string path() const { return path_; }
  // Commits (transactions) and batches written so far.
  int64_t commits() const;
  int64_t batches() const;

 private:
  struct Batch {
    std::vector<Op> ops;
    Done done;
    uint64_t id;
  };
  Journal(sqlite3* db, std::string path);
  // Open's checks of the SQLite file: WAL mode, synchronous=FULL, integrity_check,
  // then the migrations, the statements and the commit record; damage is refused
  // naming the file and the recovery.
  absl::Status CheckAndMigrate();
  // Writes journal.db.state atomically (files::WriteFileAtomically).
  absl::Status WriteStateFile(const char* state);
  // Compares the journal's commit counter with journal.db.commits (refusing a
  // journal behind it) and opens that file for WriteCommitRecord().
  absl::Status CheckCommitRecord();
  // Overwrites journal.db.commits with `seq` and fdatasyncs it.
  absl::Status WriteCommitRecord(uint64_t seq);
  absl::Status Migrate();
  absl::Status Prepare();
  // The prepared statement of `op` with its values bound (`blob` keeps a job's
  // serialized bytes alive until the statement has run).
  sqlite3_stmt* BindOp(const Op& op, std::string* blob);
  absl::Status WriteOps(const std::vector<Batch>& batches);
  void WriterLoop();

  // Constant after construction.
  sqlite3* db_;
  const std::string path_;
  bool mark_closed_ = false;  // journal.db.state was set to "open" by this Journal
  sqlite3_stmt* put_job_ = nullptr;
  sqlite3_stmt* del_job_ = nullptr;
  sqlite3_stmt* put_req_ = nullptr;
  sqlite3_stmt* del_req_ = nullptr;
  sqlite3_stmt* put_worker_ = nullptr;
  sqlite3_stmt* bump_commits_ = nullptr;
  int commits_fd_ = -1;  // journal.db.commits
  // The journal's commit counter: set in Open() before the writer starts, then
  // advanced only by the writer thread (no lock needed).
  uint64_t commit_seq_ = 0;

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
