#ifndef ZFARM_SCHEDULER_SQLITE_JOURNAL_H_
#define ZFARM_SCHEDULER_SQLITE_JOURNAL_H_

// The default journal backend: SQLite in <state_dir>/journal.db, WAL mode,
// synchronous=FULL, schema versioned with PRAGMA user_version and forward
// migrations. Group commit and the latch are the Journal base's (journal.h).
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
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "scheduler/journal.h"

struct sqlite3;
struct sqlite3_stmt;

namespace zfarm::scheduler {

// Returns FAILED_PRECONDITION if `f_type` (statfs) is a network filesystem.
absl::Status CheckLocalFilesystemType(const std::string& path, int64_t f_type);

class SqliteJournal final : public Journal {
 public:
  struct Options {
    std::string state_dir;
    // Tests only: pretend the state dir has this statfs f_type.
    int64_t fake_fs_type = 0;
  };

  // Opens (creating if needed) and migrates the journal, then starts the writer.
  static absl::StatusOr<std::unique_ptr<SqliteJournal>> Open(const Options& options);
  ~SqliteJournal() override;  // Flushes and closes.

  absl::StatusOr<Contents> Load() override;
  std::string path() const override { return path_; }

  // For tests and diagnostics: runs "PRAGMA <name>" and returns the first column.
  absl::StatusOr<std::string> Pragma(const std::string& name);
  static constexpr int kSchemaVersion = 4;

 private:
  SqliteJournal(sqlite3* db, std::string path);
  // Open's checks of the SQLite file: WAL mode, synchronous=FULL, integrity_check,
  // then the migrations, the statements and the commit record; damage is refused
  // naming the file and the recovery.
  absl::Status CheckAndMigrate();
  // Writes journal.db.state atomically (base::WriteFileAtomically).
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
  absl::Status Write(const std::vector<Batch>& batches) override;

  // Constant after construction.
  sqlite3* db_;
  const std::string path_;
  bool mark_closed_ = false;  // journal.db.state was set to "open" by this journal
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
};

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_SQLITE_JOURNAL_H_
