#ifndef ZFARM_SCHEDULER_PG_CONN_H_
#define ZFARM_SCHEDULER_PG_CONN_H_

// libpq (Debian libpq-dev, PostgreSQL's own C client) for the PostgreSQL journal
// and the leader lease: --journal URL checks, the password from
// --journal-password-file (else libpq's PGPASSFILE / ~/.pgpass), messages with
// the password masked, and one connection with text-parameter queries.
//
// The URL is libpq's (postgres://USER@HOST:PORT/DB?sslmode=verify-full&...):
// TLS and timeouts are its parameters. A password inside it is refused (it would
// be on the command line); every message names the URL with "****" for any
// password and never contains the password itself.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

struct pg_conn;
struct pg_result;

namespace zfarm::scheduler::pg {

struct ConnectOptions {
  std::string url;            // --journal
  std::string password_file;  // --journal-password-file ("" = libpq's PGPASSFILE)
  std::string application_name = "zfarm-scheduler";
  // Also libpq's connect_timeout unless the URL sets one.
  absl::Duration connect_timeout = absl::Seconds(5);
  // Server-side session settings (SET name = value), e.g. lock_timeout.
  std::vector<std::pair<std::string, std::string>> settings;
};

// True for "postgres://..." and "postgresql://...".
bool IsPostgresUrl(const std::string& url);
// `url` with the password of "user:password@" and of a "password=" parameter
// replaced by "****".
std::string MaskUrl(const std::string& url);
// INVALID_ARGUMENT naming --journal when `url` is not a postgres URL or carries a
// password.
absl::Status CheckUrl(const std::string& url);

using Result = std::unique_ptr<pg_result, void (*)(pg_result*)>;

class Connection {
 public:
  // Connects (and applies `settings`). Errors name --journal (the masked URL) or
  // --journal-password-file: UNAVAILABLE when the server cannot be reached,
  // FAILED_PRECONDITION when it refuses us (authentication, no such database),
  // INVALID_ARGUMENT for a bad URL or password file.
  static absl::StatusOr<std::unique_ptr<Connection>> Open(const ConnectOptions& options);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  pg_conn* get() { return conn_; }
  const std::string& masked_url() const { return masked_url_; }
  // Reconnects when the connection is broken (after a server restart).
  absl::Status EnsureConnected();
  // Closes the connection; the next EnsureConnected() opens a new one.
  void Drop();
  // Counts successful connects: session state (prepared statements) belongs to one.
  uint64_t generation() const { return generation_; }
  // Runs `sql` with text parameters (without any: several statements may be
  // given); OK for a command or rows. Errors start with
  // "journal <masked url>: " and are UNAVAILABLE when the connection broke,
  // INTERNAL otherwise. `binary` asks for binary result columns.
  absl::StatusOr<Result> Exec(const std::string& sql, const std::vector<std::string>& params = {},
                              bool binary = false);
  // The status of a finished query (`what` names it in the message); OK for a
  // command or rows.
  absl::Status Check(pg_result* res, const std::string& what);
  // libpq's last error for this connection, password masked, one line.
  std::string LastError() const;

 private:
  Connection(ConnectOptions options, std::string password);
  absl::Status Connect();

  const ConnectOptions options_;
  const std::string password_;  // from --journal-password-file; never logged
  const std::string masked_url_;
  pg_conn* conn_ = nullptr;
  uint64_t generation_ = 0;
};

}  // namespace zfarm::scheduler::pg

#endif  // ZFARM_SCHEDULER_PG_CONN_H_
