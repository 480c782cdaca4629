#include "scheduler/leader_lease.h"

#include <libpq-fe.h>

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "proto/base/status_macros.h"

namespace zfarm::scheduler {

absl::StatusOr<std::unique_ptr<LeaderLease>> LeaderLease::Open(const Options& options) {
  if (options.holder.empty()) return absl::InvalidArgumentError("--name: must not be empty");
  if (options.duration < absl::Seconds(1)) {
    return absl::InvalidArgumentError("--leader-lease: must be at least 1s");
  }
  ZFARM_ASSIGN_OR_RETURN(std::unique_ptr<pg::Connection> conn,
                         pg::Connection::Open(options.connect));
  return std::unique_ptr<LeaderLease>(new LeaderLease(options, std::move(conn)));
}

absl::StatusOr<LeaderLease::State> LeaderLease::TryAcquire() {
  const std::string ms = absl::StrCat(absl::ToInt64Milliseconds(options_.duration));
  ZFARM_ASSIGN_OR_RETURN(
      pg::Result r,
      conn_->Exec("INSERT INTO zfarm_leader(name,holder,epoch,expires_at) "
                  "VALUES($1,$2,1,now() + $3 * interval '1 millisecond') "
                  "ON CONFLICT (name) DO UPDATE SET holder=EXCLUDED.holder,"
                  "epoch=zfarm_leader.epoch+1,expires_at=EXCLUDED.expires_at "
                  "WHERE zfarm_leader.expires_at < now() RETURNING epoch",
                  {options_.name, options_.holder, ms}));
  State s;
  if (PQntuples(r.get()) == 1) {
    s.held = absl::SimpleAtoi(PQgetvalue(r.get(), 0, 0), &s.epoch);
    s.holder = options_.holder;
    return s;
  }
  ZFARM_ASSIGN_OR_RETURN(pg::Result who,
                         conn_->Exec("SELECT holder,epoch FROM zfarm_leader WHERE name=$1",
                                     {options_.name}));
  if (PQntuples(who.get()) == 1) {
    s.holder = PQgetvalue(who.get(), 0, 0);
    (void)absl::SimpleAtoi(PQgetvalue(who.get(), 0, 1), &s.epoch);
  }
  return s;
}

absl::Status LeaderLease::Renew(int64_t epoch) {
  const std::string ms = absl::StrCat(absl::ToInt64Milliseconds(options_.duration));
  ZFARM_ASSIGN_OR_RETURN(
      pg::Result r,
      conn_->Exec("UPDATE zfarm_leader SET expires_at = now() + $3 * interval '1 millisecond' "
                  "WHERE name=$1 AND epoch=$2 RETURNING epoch",
                  {options_.name, absl::StrCat(epoch), ms}));
  if (PQntuples(r.get()) == 1) return absl::OkStatus();
  ZFARM_ASSIGN_OR_RETURN(State now, [&]() -> absl::StatusOr<State> {
    ZFARM_ASSIGN_OR_RETURN(pg::Result who,
                           conn_->Exec("SELECT holder,epoch FROM zfarm_leader WHERE name=$1",
                                       {options_.name}));
    State s;
    if (PQntuples(who.get()) == 1) {
      s.holder = PQgetvalue(who.get(), 0, 0);
      (void)absl::SimpleAtoi(PQgetvalue(who.get(), 0, 1), &s.epoch);
    }
    return s;
  }());
  return absl::FailedPreconditionError(
      absl::StrCat("leadership lost: lease ", options_.name, " is held by ", now.holder,
                   " with epoch ", now.epoch, " (ours was ", epoch, ")"));
}

absl::Status LeaderLease::Release(int64_t epoch) {
  return conn_
      ->Exec("UPDATE zfarm_leader SET expires_at = now() - interval '1 second' "
             "WHERE name=$1 AND epoch=$2",
             {options_.name, absl::StrCat(epoch)})
      .status();
}

}  // namespace zfarm::scheduler
