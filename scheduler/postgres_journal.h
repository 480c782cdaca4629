#ifndef ZFARM_SCHEDULER_POSTGRES_JOURNAL_H_
#define ZFARM_SCHEDULER_POSTGRES_JOURNAL_H_

// The PostgreSQL journal backend (--journal postgres://USER@HOST:PORT/DB?...):
// one database shared by every zfarm-scheduler of a farm, of which one is active
// (leader_lease.h). Tables zfarm_jobs, zfarm_requests, zfarm_workers (the same
// records as the SQLite journal), zfarm_leader (the lease row) and zfarm_schema
// (the schema version, forward migrations run under an advisory lock so that two
// schedulers starting together migrate once; a newer version is refused).
//
// Group commit is the Journal base's: every batch queued while a transaction is
// in flight goes into the next one, sent in ONE round trip (libpq pipeline mode:
// BEGIN, the fence, the upserts and deletes, COMMIT). A transaction is durable
// when PostgreSQL's COMMIT returns (synchronous_commit as the server has it; on
// an HA cluster set synchronous replication there).
//
// Fencing: after Fence(name, epoch) every write transaction first calls
// zfarm_fence(name, epoch), which takes the lease row FOR SHARE and raises when
// its epoch is no longer ours. So a scheduler that lost the lease (paused past
// it, partitioned) has its late writes refused inside the transaction, never
// applied; a takeover (which updates that row) waits for a write in flight and
// the new leader's Load() sees it. A fenced write fails with UNAVAILABLE
// ("journal ...: fenced: ...") and `on_fenced` runs once (the scheduler exits).
//
// A lost connection (server restart) fails the transaction in flight with
// UNAVAILABLE, never acknowledged; the next write or Load() reconnects.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "scheduler/journal.h"
#include "scheduler/pg_conn.h"

namespace zfarm::scheduler {

class PostgresJournal final : public Journal {
 public:
  struct Options {
    pg::ConnectOptions connect;
  };
  // Connects, migrates the schema (refusing a newer one) and starts the writer.
  // Errors name --journal (password masked).
  static absl::StatusOr<std::unique_ptr<PostgresJournal>> Open(const Options& options);
  ~PostgresJournal() override;

  absl::StatusOr<Contents> Load() override;
  std::string path() const override;

  // From now on every write transaction checks that lease `name` still has
  // `epoch`; `on_fenced` (may be empty) runs once, on the writer thread, when one
  // finds it does not.
  void Fence(const std::string& name, int64_t epoch, std::function<void()> on_fenced);

  // Tests and tools: the schema version in the database.
  absl::StatusOr<int> SchemaVersion();
  static constexpr int kSchemaVersion = 1;

 private:
  explicit PostgresJournal(std::unique_ptr<pg::Connection> conn);
  absl::Status Migrate();
  absl::Status Prepare();
  absl::StatusOr<Contents> LoadOnce();
  absl::Status Write(const std::vector<Batch>& batches) override;

  // Used by the writer thread, and by Load()/Open() while nothing is appended.
  const std::unique_ptr<pg::Connection> conn_;
  // The statements exist on this connection generation of conn_ (0 = none).
  uint64_t prepared_ = 0;

  mutable absl::Mutex mu_;
  std::string fence_name_ ABSL_GUARDED_BY(mu_);
  int64_t fence_epoch_ ABSL_GUARDED_BY(mu_) = 0;  // 0 = not fenced (tests, tools)
  std::function<void()> on_fenced_ ABSL_GUARDED_BY(mu_);
};

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_POSTGRES_JOURNAL_H_
