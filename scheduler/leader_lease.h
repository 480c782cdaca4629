#ifndef ZFARM_SCHEDULER_LEADER_LEASE_H_
#define ZFARM_SCHEDULER_LEADER_LEASE_H_

// Leadership of the schedulers sharing one PostgreSQL journal: the row
// zfarm_leader(name, holder, epoch, expires_at) of postgres_journal.h, on its own
// connection (renewals never wait behind a group commit).
//
// TryAcquire() takes the lease when it is free or expired (expires_at in the
// database's clock, so the schedulers' clocks do not matter), always with a new
// epoch; Renew() extends it while the epoch is still ours. The journal fences
// every write with that epoch (PostgresJournal::Fence), so holding an expired
// lease is harmless: once another scheduler has taken it, our writes are refused.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "scheduler/pg_conn.h"

namespace zfarm::scheduler {

class LeaderLease {
 public:
  struct Options {
    pg::ConnectOptions connect;
    std::string name = "zfarm-scheduler";  // the lease row (one per farm)
    std::string holder;                    // this scheduler (--name)
    absl::Duration duration = absl::Seconds(6);
  };
  struct State {
    bool held = false;   // by this scheduler, with `epoch`
    int64_t epoch = 0;
    std::string holder;  // the current holder ("" when nobody ever held it)
  };

  // Connects (the journal has created the table). Errors as pg::Connection::Open.
  static absl::StatusOr<std::unique_ptr<LeaderLease>> Open(const Options& options);

  // Takes the lease if it is free or expired; else says who holds it.
  absl::StatusOr<State> TryAcquire();
  // Extends the lease of `epoch`: FAILED_PRECONDITION naming the new holder when
  // it is no longer ours, UNAVAILABLE when the database cannot be reached.
  absl::Status Renew(int64_t epoch);
  // Lets the lease go at once (a clean stop): a standby need not wait for expiry.
  absl::Status Release(int64_t epoch);

  const Options& options() const { return options_; }

 private:
  LeaderLease(Options options, std::unique_ptr<pg::Connection> conn)
      : options_(std::move(options)), conn_(std::move(conn)) {}
  const Options options_;
  const std::unique_ptr<pg::Connection> conn_;
};

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_LEADER_LEASE_H_
