#include "scheduler/journal.h"

#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "proto/status_macros.h"

namespace zfarm::scheduler {
namespace {

int64_t ToMicros(absl::Time t) { return absl::ToUnixMicros(t); }

absl::Status SqlError(sqlite3* db, const std::string& what) {
  return absl::InternalError(absl::StrCat("journal: ", what, ": ", sqlite3_errmsg(db)));
}

absl::Status Exec(sqlite3* db, const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("journal: ", sql.substr(0, 60), ": ", msg));
  }
  return absl::OkStatus();
}

// Migration i brings the schema from version i to i + 1.
const char* const kMigrations[] = {
    // v0 -> v1
    "CREATE TABLE jobs ("
    "  job_id TEXT PRIMARY KEY,"
    "  state INTEGER NOT NULL,"
    "  batch_id TEXT NOT NULL,"
    "  seq INTEGER NOT NULL,"
    "  runs INTEGER NOT NULL,"
    "  min_memory_bytes INTEGER NOT NULL,"
    "  commit_pending INTEGER NOT NULL,"
    "  cancel_requested INTEGER NOT NULL,"
    "  fingerprint TEXT NOT NULL,"
    "  job BLOB NOT NULL);"
    "CREATE TABLE requests ("
    "  request_id TEXT PRIMARY KEY,"
    "  job_id TEXT NOT NULL,"
    "  fingerprint TEXT NOT NULL,"
    "  create_us INTEGER NOT NULL);"
    "CREATE INDEX requests_by_time ON requests(create_us);",
};

}  // namespace

absl::Status CheckLocalFilesystemType(const std::string& path, int64_t f_type) {
  struct Fs {
    int64_t magic;
    const char* name;
  };
  static constexpr Fs kNetwork[] = {
      {0x6969, "NFS"},        {0xFF534D42, "CIFS/SMB"}, {0xFE534D42, "SMB2"}, {0x517B, "SMB"},
      {0x65735546, "FUSE"},   {0x564c, "NCP"},          {0x6B414653, "AFS"},  {0x47504653, "GPFS"},
      {0x00C36400, "CephFS"}, {0x0BD00BD0, "Lustre"}};
  for (const Fs& fs : kNetwork) {
    if (f_type == fs.magic) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--state-dir ", path, " is on a network filesystem (", fs.name,
          "): SQLite WAL is unsafe there and could lose acknowledged jobs; use a local disk"));
    }
  }
  return absl::OkStatus();
}

Journal::Journal(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}

absl::StatusOr<std::unique_ptr<Journal>> Journal::Open(const Options& options) {
  std::error_code ec;
  std::filesystem::create_directories(options.state_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("--state-dir ", options.state_dir, ": cannot create: ", ec.message()));
  }
  struct statfs sfs;
  if (statfs(options.state_dir.c_str(), &sfs) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("--state-dir ", options.state_dir, ": statfs failed"));
  }
  int64_t f_type = options.fake_fs_type ? options.fake_fs_type : static_cast<int64_t>(sfs.f_type);
  ZFARM_RETURN_IF_ERROR(CheckLocalFilesystemType(options.state_dir, f_type));

  std::string path = options.state_dir + "/journal.db";
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK) {
    absl::Status s = absl::FailedPreconditionError(
        absl::StrCat("journal ", path, ": cannot open: ", db ? sqlite3_errmsg(db) : "no memory"));
    sqlite3_close(db);
    return s;
  }
  std::unique_ptr<Journal> j(new Journal(db, path));
  sqlite3_busy_timeout(db, 5000);
  ZFARM_RETURN_IF_ERROR(Exec(db, "PRAGMA journal_mode=WAL"));
  ZFARM_RETURN_IF_ERROR(Exec(db, "PRAGMA synchronous=FULL"));
  ZFARM_ASSIGN_OR_RETURN(std::string mode, j->Pragma("journal_mode"));
  if (mode != "wal") {
    return absl::FailedPreconditionError(
        absl::StrCat("journal ", path, ": cannot enable WAL (journal_mode=", mode, ")"));
  }
  ZFARM_RETURN_IF_ERROR(j->Migrate());
  ZFARM_RETURN_IF_ERROR(j->Prepare());
  j->writer_ = std::thread([raw = j.get()] { raw->WriterLoop(); });
  return j;
}

Journal::~Journal() {
  Close();
  for (sqlite3_stmt* s : {put_job_, del_job_, put_req_, del_req_}) sqlite3_finalize(s);
  sqlite3_close(db_);
}

absl::Status Journal::Migrate() {
  ZFARM_ASSIGN_OR_RETURN(std::string v, Pragma("user_version"));
  int version = std::stoi(v);
  constexpr int kKnown = sizeof(kMigrations) / sizeof(kMigrations[0]);
  static_assert(kKnown == kSchemaVersion);
  if (version > kKnown) {
    return absl::FailedPreconditionError(absl::StrCat(
        "journal ", path_, ": schema version ", version, " is newer than this binary's ", kKnown,
        " (written by a newer zfarm-scheduler)"));
  }
  for (int i = version; i < kKnown; ++i) {
    ZFARM_RETURN_IF_ERROR(Exec(db_, "BEGIN IMMEDIATE"));
    absl::Status s = Exec(db_, kMigrations[i]);
    if (s.ok()) s = Exec(db_, absl::StrCat("PRAGMA user_version=", i + 1));
    if (!s.ok()) {
      Exec(db_, "ROLLBACK").IgnoreError();
      return s;
    }
    ZFARM_RETURN_IF_ERROR(Exec(db_, "COMMIT"));
    LOG(INFO) << "event=journal_migrated path=" << path_ << " from=" << i << " to=" << i + 1;
  }
  return absl::OkStatus();
}

absl::Status Journal::Prepare() {
  auto prep = [&](const char* sql, sqlite3_stmt** out) -> absl::Status {
    if (sqlite3_prepare_v2(db_, sql, -1, out, nullptr) != SQLITE_OK) {
      return SqlError(db_, sql);
    }
    return absl::OkStatus();
  };
  ZFARM_RETURN_IF_ERROR(
      prep("INSERT OR REPLACE INTO jobs(job_id,state,batch_id,seq,runs,min_memory_bytes,"
           "commit_pending,cancel_requested,fingerprint,job) VALUES(?,?,?,?,?,?,?,?,?,?)",
           &put_job_));
  ZFARM_RETURN_IF_ERROR(prep("DELETE FROM jobs WHERE job_id=?", &del_job_));
  ZFARM_RETURN_IF_ERROR(prep(
      "INSERT OR REPLACE INTO requests(request_id,job_id,fingerprint,create_us) VALUES(?,?,?,?)",
      &put_req_));
  ZFARM_RETURN_IF_ERROR(prep("DELETE FROM requests WHERE request_id=?", &del_req_));
  return absl::OkStatus();
}

absl::StatusOr<std::string> Journal::Pragma(const std::string& name) {
  sqlite3_stmt* st = nullptr;
  std::string sql = "PRAGMA " + name;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) {
    return SqlError(db_, sql);
  }
  std::string out;
  if (sqlite3_step(st) == SQLITE_ROW) {
    const unsigned char* t = sqlite3_column_text(st, 0);
    out = t ? reinterpret_cast<const char*>(t) : "";
  }
  sqlite3_finalize(st);
  return out;
}

absl::StatusOr<Journal::Contents> Journal::Load() {
  Contents c;
  sqlite3_stmt* st = nullptr;
  const char* q =
      "SELECT seq,runs,min_memory_bytes,commit_pending,cancel_requested,fingerprint,job "
      "FROM jobs ORDER BY seq";
  if (sqlite3_prepare_v2(db_, q, -1, &st, nullptr) != SQLITE_OK) return SqlError(db_, q);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    JobRecord r;
    r.seq = sqlite3_column_int64(st, 0);
    r.runs = sqlite3_column_int(st, 1);
    r.min_memory_bytes = sqlite3_column_int64(st, 2);
    r.commit_pending = sqlite3_column_int(st, 3) != 0;
    r.cancel_requested = sqlite3_column_int(st, 4) != 0;
    const unsigned char* fp = sqlite3_column_text(st, 5);
    r.fingerprint = fp ? reinterpret_cast<const char*>(fp) : "";
    if (!r.job.ParseFromArray(sqlite3_column_blob(st, 6), sqlite3_column_bytes(st, 6))) {
      sqlite3_finalize(st);
      return absl::DataLossError(absl::StrCat("journal ", path_, ": corrupt job row seq=", r.seq));
    }
    c.jobs.push_back(std::move(r));
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return SqlError(db_, "load jobs");
  q = "SELECT request_id,job_id,fingerprint,create_us FROM requests";
  if (sqlite3_prepare_v2(db_, q, -1, &st, nullptr) != SQLITE_OK) return SqlError(db_, q);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    RequestRecord r;
    r.request_id = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    r.job_id = reinterpret_cast<const char*>(sqlite3_column_text(st, 1));
    r.fingerprint = reinterpret_cast<const char*>(sqlite3_column_text(st, 2));
    r.create_time = absl::FromUnixMicros(sqlite3_column_int64(st, 3));
    c.requests.push_back(std::move(r));
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return SqlError(db_, "load requests");
  return c;
}

void Journal::Append(std::vector<Op> ops, Done done) {
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    if (done) std::move(done)(absl::UnavailableError("journal is closed"));
    return;
  }
  pending_.push_back(Batch{std::move(ops), std::move(done), ++appended_});
}

absl::Status Journal::Flush() {
  absl::MutexLock lock(&mu_);
  uint64_t target = appended_;
  struct Arg {
    Journal* j;
    uint64_t target;
  } arg{this, target};
  mu_.Await(absl::Condition(
      +[](Arg* a)
           ABSL_NO_THREAD_SAFETY_ANALYSIS { return a->j->durable_ >= a->target || a->j->closed_; },
      &arg));
  return first_error_;
}

void Journal::Close() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (writer_.joinable()) writer_.join();
}

int64_t Journal::commits() const {
  absl::MutexLock lock(&mu_);
  return commits_;
}
int64_t Journal::batches() const {
  absl::MutexLock lock(&mu_);
  return batches_;
}

absl::Status Journal::WriteOps(const std::vector<Batch>& batches) {
  bool any = false;
  for (const Batch& b : batches) any |= !b.ops.empty();
  if (!any) return absl::OkStatus();
  ZFARM_RETURN_IF_ERROR(Exec(db_, "BEGIN IMMEDIATE"));
  auto fail = [&](const std::string& what) {
    absl::Status s = SqlError(db_, what);
    Exec(db_, "ROLLBACK").IgnoreError();
    return s;
  };
  std::string blob;
  for (const Batch& b : batches) {
    for (const Op& op : b.ops) {
      sqlite3_stmt* st = nullptr;
      switch (op.kind) {
        case Op::Kind::kPutJob: {
          st = put_job_;
          const JobRecord& r = op.job;
          blob.clear();
          r.job.SerializeToString(&blob);
          sqlite3_bind_text(st, 1, r.job.job_id().data(), r.job.job_id().size(), SQLITE_STATIC);
          sqlite3_bind_int(st, 2, r.job.state());
          sqlite3_bind_text(st, 3, r.job.batch_id().data(), r.job.batch_id().size(), SQLITE_STATIC);
          sqlite3_bind_int64(st, 4, static_cast<int64_t>(r.seq));
          sqlite3_bind_int(st, 5, r.runs);
          sqlite3_bind_int64(st, 6, r.min_memory_bytes);
          sqlite3_bind_int(st, 7, r.commit_pending);
          sqlite3_bind_int(st, 8, r.cancel_requested);
          sqlite3_bind_text(st, 9, r.fingerprint.data(), r.fingerprint.size(), SQLITE_STATIC);
          sqlite3_bind_blob(st, 10, blob.data(), blob.size(), SQLITE_STATIC);
          break;
        }
        case Op::Kind::kDeleteJob:
          st = del_job_;
          sqlite3_bind_text(st, 1, op.job.job.job_id().data(), op.job.job.job_id().size(),
                            SQLITE_STATIC);
          break;
        case Op::Kind::kPutRequest:
          st = put_req_;
          sqlite3_bind_text(st, 1, op.request.request_id.data(), op.request.request_id.size(),
                            SQLITE_STATIC);
          sqlite3_bind_text(st, 2, op.request.job_id.data(), op.request.job_id.size(),
                            SQLITE_STATIC);
          sqlite3_bind_text(st, 3, op.request.fingerprint.data(), op.request.fingerprint.size(),
                            SQLITE_STATIC);
          sqlite3_bind_int64(st, 4, ToMicros(op.request.create_time));
          break;
        case Op::Kind::kDeleteRequest:
          st = del_req_;
          sqlite3_bind_text(st, 1, op.request.request_id.data(), op.request.request_id.size(),
                            SQLITE_STATIC);
          break;
      }
      int rc = sqlite3_step(st);
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
      if (rc != SQLITE_DONE) return fail("write");
    }
  }
  if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) return fail("commit");
  return absl::OkStatus();
}

void Journal::WriterLoop() {
  for (;;) {
    std::vector<Batch> batches;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Journal* j)
               ABSL_NO_THREAD_SAFETY_ANALYSIS { return !j->pending_.empty() || j->stopping_; },
          this));
      if (pending_.empty() && stopping_) {
        closed_ = true;
        return;
      }
      while (!pending_.empty()) {
        batches.push_back(std::move(pending_.front()));
        pending_.pop_front();
      }
    }
    absl::Status s = WriteOps(batches);
    if (!s.ok())
      LOG(ERROR) << "event=journal_write_failed path=" << path_ << " error=\"" << s << "\"";
    for (Batch& b : batches) {
      if (b.done) std::move(b.done)(s);
    }
    absl::MutexLock lock(&mu_);
    durable_ = batches.back().id;
    ++commits_;
    batches_ += batches.size();
    if (!s.ok() && first_error_.ok()) first_error_ = s;
  }
}

}  // namespace zfarm::scheduler
