#ifndef ZFARM_TESTS_TESTING_POSTGRES_SERVER_H_
#define ZFARM_TESTS_TESTING_POSTGRES_SERVER_H_

// A throw-away PostgreSQL server for the `ha` tests: initdb in a folder of the
// test, pg_ctl on a free loopback port with its unix socket in a short private
// folder (/tmp/zpg-XXXXXX: socket paths are limited to 107 bytes),
// stopped (immediate) by the destructor. Debian's postgresql package
// (/usr/lib/postgresql/<15>/bin, or $ZFARM_PG_BIN); run as the `postgres` user
// when the test runs as root (initdb refuses root).
//
// It has a role `zfarm` with a password (scram-sha-256 over TCP) owning database
// `zfarm`; password_file() holds the password, Url() is the --journal URL.
//
//   ASSERT_OK_AND_ASSIGN(auto pg, PostgresServer::Start(dir + "/pg"));
//   ... --journal=pg->Url() --journal-password-file=pg->password_file() ...
//   pg->Psql("UPDATE zfarm_schema SET version = 99");

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "tests/testing/subprocess.h"

namespace zfarm::testing {

class PostgresServer {
 public:
  static constexpr char kPassword[] = "zfarm-test-Secr3t";

  // The folder of Debian's server binaries, or "" when PostgreSQL is not installed.
  static std::string BinDir() {
    if (const char* env = std::getenv("ZFARM_PG_BIN")) return env;
    for (const char* v : {"15", "16", "17", "14", "13"}) {
      std::string d = absl::StrCat("/usr/lib/postgresql/", v, "/bin");
      if (std::filesystem::exists(d + "/pg_ctl")) return d;
    }
    return "";
  }

  static absl::StatusOr<std::unique_ptr<PostgresServer>> Start(const std::string& dir) {
    std::unique_ptr<PostgresServer> s(new PostgresServer);
    s->dir_ = dir;
    s->bin_ = BinDir();
    if (s->bin_.empty()) return absl::NotFoundError("PostgreSQL server binaries not found");
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    std::string sock = "/tmp/zpg-XXXXXX";
    if (mkdtemp(sock.data()) == nullptr) return absl::InternalError("mkdtemp " + sock);
    s->sock_ = sock;
    if (geteuid() == 0) {
      const passwd* pw = getpwnam("postgres");
      if (pw == nullptr) return absl::NotFoundError("running as root and no user postgres");
      for (const std::string& d : {dir, sock}) {
        if (chown(d.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
          return absl::InternalError("chown " + d);
        }
      }
      s->as_ = "runuser -u postgres -- ";
    }
    {
      std::ofstream pw(dir + "/initpw");
      pw << kPassword << "\n";
    }
    std::ofstream(dir + "/journal-password") << kPassword << "\n";
    auto r = RunCommand(absl::StrCat(s->as_, s->bin_, "/initdb -D ", dir,
                                     "/data -U postgres --auth-local=trust "
                                     "--auth-host=scram-sha-256 -E UTF8 --no-sync 2>&1"));
    if (r.exit_code != 0) return absl::InternalError("initdb failed: " + r.out);
    s->port_ = FreePort();
    if (absl::Status st = s->StartServer(); !st.ok()) return st;
    r = s->Psql(absl::StrCat("CREATE ROLE zfarm LOGIN PASSWORD '", kPassword,
                             "'; CREATE DATABASE zfarm OWNER zfarm;"));
    if (r.exit_code != 0) return absl::InternalError("creating the role failed: " + r.out);
    return s;
  }

  ~PostgresServer() {
    RunCommand(absl::StrCat(as_, bin_, "/pg_ctl -D ", dir_, "/data -m immediate stop >/dev/null 2>&1"));
    std::error_code ec;
    std::filesystem::remove_all(sock_, ec);
  }

  // pg_ctl start (again, after Stop()) on the same port; waits until it accepts.
  absl::Status StartServer() {
    auto r = RunCommand(absl::StrCat(
        as_, bin_, "/pg_ctl -D ", dir_, "/data -l ", dir_, "/server.log -w -t 60 -o \"-p ",
        port_, " -k ", sock_, " -c listen_addresses=127.0.0.1 -c max_connections=100\" start 2>&1"));
    if (r.exit_code != 0) {
      return absl::InternalError(absl::StrCat("pg_ctl start failed: ", r.out, ReadLog()));
    }
    return absl::OkStatus();
  }
  // pg_ctl stop -m fast (clients are disconnected).
  absl::Status Stop() {
    auto r = RunCommand(absl::StrCat(as_, bin_, "/pg_ctl -D ", dir_, "/data -m fast -w stop 2>&1"));
    return r.exit_code == 0 ? absl::OkStatus() : absl::InternalError("pg_ctl stop: " + r.out);
  }

  // psql as the superuser over the unix socket, on database `db`.
  CommandResult Psql(const std::string& sql, const std::string& db = "postgres") {
    std::ofstream(dir_ + "/query.sql") << sql << "\n";
    return RunCommand(absl::StrCat(as_, bin_, "/psql -X -q -t -A -v ON_ERROR_STOP=1 -h ", sock_,
                                   " -p ", port_, " -U postgres -d ", db, " -f ", dir_,
                                   "/query.sql 2>&1"));
  }

  std::string Url(const std::string& db = "zfarm") const {
    return absl::StrCat("postgres://zfarm@127.0.0.1:", port_, "/", db, "?sslmode=disable");
  }
  // A new empty database owned by zfarm; its URL.
  absl::StatusOr<std::string> CreateDatabase(const std::string& db) {
    auto r = Psql(absl::StrCat("CREATE DATABASE ", db, " OWNER zfarm;"));
    if (r.exit_code != 0) return absl::InternalError("CREATE DATABASE " + db + ": " + r.out);
    return Url(db);
  }
  std::string password_file() const { return dir_ + "/journal-password"; }
  int port() const { return port_; }
  std::string ReadLog() const {
    std::ifstream f(dir_ + "/server.log");
    return std::string((std::istreambuf_iterator<char>(f)), {});
  }

  // A loopback port nobody listens on right now.
  static int FreePort() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    close(fd);
    return ntohs(a.sin_port);
  }

 private:
  PostgresServer() = default;
  std::string dir_, sock_, bin_, as_;
  int port_ = 0;
};

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_POSTGRES_SERVER_H_
