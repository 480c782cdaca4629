#include "scheduler/pg_conn.h"

#include <libpq-fe.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "proto/base/status_macros.h"

namespace zfarm::scheduler::pg {
namespace {

// The "user:password@" part of a URL: [begin, end) of the password, or npos.
std::pair<size_t, size_t> UrlPassword(const std::string& url) {
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos) return {std::string::npos, 0};
  const size_t start = scheme + 3;
  const size_t end_authority = url.find_first_of("/?", start);
  const size_t at = url.rfind('@', end_authority == std::string::npos ? url.size() : end_authority);
  if (at == std::string::npos || at < start) return {std::string::npos, 0};
  const size_t colon = url.find(':', start);
  if (colon == std::string::npos || colon > at) return {std::string::npos, 0};
  return {colon + 1, at};
}

// [begin, end) of the value of a "password=" query parameter, or npos.
std::pair<size_t, size_t> ParamPassword(const std::string& url) {
  const size_t q = url.find('?');
  if (q == std::string::npos) return {std::string::npos, 0};
  for (size_t p = q; p != std::string::npos && p < url.size(); p = url.find('&', p + 1)) {
    if (url.compare(p + 1, 9, "password=") == 0) {
      const size_t begin = p + 10;
      const size_t end = url.find('&', begin);
      return {begin, end == std::string::npos ? url.size() : end};
    }
  }
  return {std::string::npos, 0};
}

void ClearResult(pg_result* r) { PQclear(r); }

}  // namespace

bool IsPostgresUrl(const std::string& url) {
  return absl::StartsWith(url, "postgres://") || absl::StartsWith(url, "postgresql://");
}

std::string MaskUrl(const std::string& url) {
  std::string out = url;
  if (auto [b, e] = ParamPassword(out); b != std::string::npos) out.replace(b, e - b, "****");
  if (auto [b, e] = UrlPassword(out); b != std::string::npos) out.replace(b, e - b, "****");
  return out;
}

absl::Status CheckUrl(const std::string& url) {
  if (!IsPostgresUrl(url)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--journal ", MaskUrl(url),
                     ": not a PostgreSQL URL (postgres://USER@HOST:PORT/DB?sslmode=...)"));
  }
  if (UrlPassword(url).first != std::string::npos || ParamPassword(url).first != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--journal ", MaskUrl(url),
        ": carries a password; a password must not be on the command line: put it in "
        "--journal-password-file or libpq's PGPASSFILE"));
  }
  return absl::OkStatus();
}

Connection::Connection(ConnectOptions options, std::string password)
    : options_(std::move(options)),
      password_(std::move(password)),
      masked_url_(MaskUrl(options_.url)) {}

Connection::~Connection() {
  if (conn_) PQfinish(conn_);
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(const ConnectOptions& options) {
  ZFARM_RETURN_IF_ERROR(CheckUrl(options.url));
  std::string password;
  if (!options.password_file.empty()) {
    std::ifstream f(options.password_file);
    std::stringstream ss;
    ss << f.rdbuf();
    if (!f) {
      return absl::InvalidArgumentError(
          absl::StrCat("--journal-password-file: cannot read ", options.password_file));
    }
    password = std::string(absl::StripAsciiWhitespace(ss.str()));
    if (password.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--journal-password-file: ", options.password_file, " is empty"));
    }
  }
  std::unique_ptr<Connection> c(new Connection(options, std::move(password)));
  ZFARM_RETURN_IF_ERROR(c->Connect());
  return c;
}

std::string Connection::LastError() const {
  std::string e = conn_ ? PQerrorMessage(conn_) : "not connected";
  if (!password_.empty()) absl::StrReplaceAll({{password_, "****"}}, &e);
  absl::StrReplaceAll({{"\n", " "}}, &e);
  return std::string(absl::StripAsciiWhitespace(e));
}

absl::Status Connection::Connect() {
  if (conn_) PQfinish(conn_);
  const std::string timeout = absl::StrCat(
      std::max<int64_t>(2, absl::ToInt64Seconds(options_.connect_timeout)));
  // The URL is expanded first; the keywords after it override its values.
  std::vector<const char*> keys = {"dbname", "application_name", "connect_timeout"};
  std::vector<const char*> values = {options_.url.c_str(), options_.application_name.c_str(),
                                     timeout.c_str()};
  if (absl::StrContains(options_.url, "connect_timeout=")) {
    keys.pop_back();
    values.pop_back();
  }
  if (!password_.empty()) {
    keys.push_back("password");
    values.push_back(password_.c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  conn_ = PQconnectdbParams(keys.data(), values.data(), /*expand_dbname=*/1);
  if (PQstatus(conn_) != CONNECTION_OK) {
    const std::string e = LastError();
    const bool refused = absl::StrContains(e, "authentication") ||
                         absl::StrContains(e, "password") ||
                         absl::StrContains(e, "does not exist") ||
                         absl::StrContains(e, "no pg_hba.conf entry");
    const std::string msg = absl::StrCat("--journal ", masked_url_, ": cannot connect: ", e);
    return refused ? absl::FailedPreconditionError(msg) : absl::UnavailableError(msg);
  }
  ++generation_;
  ZFARM_ASSIGN_OR_RETURN(Result quiet, Exec("SET client_min_messages = warning"));
  for (const auto& [name, value] : options_.settings) {
    ZFARM_ASSIGN_OR_RETURN(Result r, Exec(absl::StrCat("SET ", name, " = '", value, "'")));
  }
  return absl::OkStatus();
}

void Connection::Drop() {
  if (conn_) PQfinish(conn_);
  conn_ = nullptr;
}

absl::Status Connection::EnsureConnected() {
  if (conn_ && PQstatus(conn_) == CONNECTION_OK) return absl::OkStatus();
  return Connect();
}

absl::Status Connection::Check(pg_result* res, const std::string& what) {
  const ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return absl::OkStatus();
  std::string e = res ? PQresultErrorMessage(res) : "";
  if (e.empty()) e = LastError();
  if (!password_.empty()) absl::StrReplaceAll({{password_, "****"}}, &e);
  absl::StrReplaceAll({{"\n", " "}}, &e);
  const std::string msg = absl::StrCat("journal ", masked_url_, ": ", what.substr(0, 60), ": ",
                                       absl::StripAsciiWhitespace(e));
  if (PQstatus(conn_) != CONNECTION_OK) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

absl::StatusOr<Result> Connection::Exec(const std::string& sql,
                                        const std::vector<std::string>& params, bool binary) {
  if (absl::Status s = EnsureConnected(); !s.ok()) {
    return absl::UnavailableError(absl::StrCat("journal ", masked_url_, ": ", s.message()));
  }
  std::vector<const char*> values;
  for (const std::string& p : params) values.push_back(p.c_str());
  // Without parameters: the simple protocol, which runs several statements.
  Result r(params.empty() && !binary
               ? PQexec(conn_, sql.c_str())
               : PQexecParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr,
                              values.data(), nullptr, nullptr, binary ? 1 : 0),
           ClearResult);
  ZFARM_RETURN_IF_ERROR(Check(r.get(), sql));
  return r;
}

}  // namespace zfarm::scheduler::pg
