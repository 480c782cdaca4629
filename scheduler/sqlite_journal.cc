#include "scheduler/sqlite_journal.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string_view>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "proto/base/files.h"
#include "proto/base/status_macros.h"

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
    // v1 -> v2: a checksum of every column of a row (NULL for rows written by v1).
    "ALTER TABLE jobs ADD COLUMN crc INTEGER;"
    "ALTER TABLE requests ADD COLUMN crc INTEGER;",
    // v2 -> v3: the commit counter, mirrored in journal.db.commits.
    "CREATE TABLE meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
    "INSERT INTO meta(k, v) VALUES('commits', 0);",
    // v3 -> v4: request ids are scoped to their principal (the owner is filled in
    // by the scheduler from each row's job; rows whose job is gone keep ''), and
    // worker names are bound to the principal that first registered them.
    "CREATE TABLE requests_v4 ("
    "  owner TEXT NOT NULL,"
    "  request_id TEXT NOT NULL,"
    "  job_id TEXT NOT NULL,"
    "  fingerprint TEXT NOT NULL,"
    "  create_us INTEGER NOT NULL,"
    "  crc INTEGER,"
    "  PRIMARY KEY (owner, request_id));"
    "INSERT INTO requests_v4(owner,request_id,job_id,fingerprint,create_us,crc)"
    "  SELECT '',request_id,job_id,fingerprint,create_us,crc FROM requests;"
    "DROP TABLE requests;"
    "ALTER TABLE requests_v4 RENAME TO requests;"
    "CREATE INDEX requests_by_time ON requests(create_us);"
    "CREATE TABLE workers ("
    "  worker_name TEXT PRIMARY KEY,"
    "  principal TEXT NOT NULL,"
    "  crc INTEGER NOT NULL);",
};

// Appended to every refusal caused by a damaged journal (README "Journal recovery").
constexpr char kRecovery[] =
    "; refusing to start so that no acknowledged job is silently dropped. Recovery (README "
    "\"Journal recovery\"): stop every scheduler on this state dir, then either restore the state "
    "dir from a backup, or salvage the readable rows into a new state dir with "
    "`sqlite3 OLD/journal.db .dump | sqlite3 NEW/journal.db && sqlite3 NEW/journal.db "
    "'PRAGMA user_version=4'` and start on NEW (a row named as damaged can instead be deleted "
    "with `sqlite3 OLD/journal.db \"DELETE FROM jobs WHERE job_id='ID'\"`; clients resubmit "
    "missing jobs with their request ids)";

// 64-bit FNV-1a over length-prefixed fields: detects flipped bytes in a row.
class RowHash {
 public:
  RowHash& Add(std::string_view s) {
    Int(static_cast<int64_t>(s.size()));
    for (unsigned char c : s) Byte(c);
    return *this;
  }
  RowHash& Int(int64_t v) {
    for (int i = 0; i < 8; ++i)
      Byte(static_cast<unsigned char>(static_cast<uint64_t>(v) >> (8 * i)));
    return *this;
  }
  int64_t value() const { return static_cast<int64_t>(h_); }

 private:
  void Byte(unsigned char c) {
    h_ ^= c;
    h_ *= 1099511628211ull;
  }
  uint64_t h_ = 1469598103934665603ull;
};

int64_t JobCrc(const JobRecord& r, std::string_view blob) {
  return RowHash()
      .Add(r.job.job_id())
      .Int(r.job.state())
      .Add(r.job.batch_id())
      .Int(static_cast<int64_t>(r.seq))
      .Int(r.runs)
      .Int(r.min_memory_bytes)
      .Int(r.commit_pending)
      .Int(r.cancel_requested)
      .Add(r.fingerprint)
      .Add(blob)
      .value();
}

int64_t RequestCrc(const RequestRecord& r) {
  RowHash h;
  h.Add(r.request_id).Add(r.job_id).Add(r.fingerprint).Int(ToMicros(r.create_time));
  // The owner (v4) counts only when set, so rows migrated from v3 keep their checksum.
  if (!r.owner.empty()) h.Add(r.owner);
  return h.value();
}

int64_t WorkerCrc(const WorkerRecord& r) {
  return RowHash().Add(r.worker_name).Add(r.principal).value();
}

uint32_t Be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

absl::StatusOr<std::string> ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(path);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

// The main file's header against its size: a valid in-header page count larger
// than the file means the file was truncated.
absl::Status CheckMainFile(const std::string& path, uint64_t size) {
  ZFARM_ASSIGN_OR_RETURN(std::string data, ReadAll(path));
  if (data.size() < 100) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal ", path, " is truncated (", data.size(),
                     " bytes, less than a SQLite header)", kRecovery));
  }
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  if (data.compare(0, 16, std::string("SQLite format 3\0", 16)) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal ", path, " is not a SQLite database (damaged header)", kRecovery));
  }
  uint32_t page_size = (uint32_t{p[16]} << 8) | p[17];
  if (page_size == 1) page_size = 65536;
  uint32_t pages = Be32(p + 28);
  if (Be32(p + 24) == Be32(p + 92) && pages > 0 &&
      size < static_cast<uint64_t>(pages) * page_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal ", path, " is truncated: ", size, " bytes but its header says ",
                     pages, " pages of ", page_size, " bytes", kRecovery));
  }
  return absl::OkStatus();
}

// SQLite replays WAL frames up to the first one whose salt or checksum is wrong
// and ignores the rest. A damaged frame followed by frames of the same generation
// (same salts) therefore means committed transactions would be cut off silently.
// A bad last frame is indistinguishable from a write torn by a crash (never
// acknowledged) and is left to SQLite.
absl::Status CheckWal(const std::string& wal) {
  auto read = ReadAll(wal);
  if (!read.ok() || read->size() < 32) return absl::OkStatus();
  const std::string& data = *read;
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  auto refuse = [&](const std::string& what) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal write-ahead log ", wal, " is damaged: ", what, kRecovery));
  };
  uint32_t magic = Be32(p);
  if (magic != 0x377f0682 && magic != 0x377f0683) return refuse("bad magic number in its header");
  const bool big_endian = magic & 1;
  uint32_t page_size = Be32(p + 8);
  if (page_size < 512 || page_size > 65536 || (page_size & (page_size - 1)) != 0) {
    return refuse(absl::StrCat("page size ", page_size, " in its header"));
  }
  uint32_t s0 = 0, s1 = 0;
  auto sum = [&](const unsigned char* d, size_t n) {
    for (size_t i = 0; i + 8 <= n; i += 8) {
      uint32_t a, b;
      if (big_endian) {
        a = Be32(d + i);
        b = Be32(d + i + 4);
      } else {
        a = uint32_t{d[i]} | uint32_t{d[i + 1]} << 8 | uint32_t{d[i + 2]} << 16 |
            uint32_t{d[i + 3]} << 24;
        b = uint32_t{d[i + 4]} | uint32_t{d[i + 5]} << 8 | uint32_t{d[i + 6]} << 16 |
            uint32_t{d[i + 7]} << 24;
      }
      s0 += a + s1;
      s1 += b + s0;
    }
  };
  sum(p, 24);
  if (s0 != Be32(p + 24) || s1 != Be32(p + 28)) return refuse("header checksum mismatch");
  const uint32_t salt1 = Be32(p + 16), salt2 = Be32(p + 20);
  const size_t frame = 24 + static_cast<size_t>(page_size);
  int64_t broken_at = -1;
  for (size_t off = 32, n = 0; off + frame <= data.size(); off += frame, ++n) {
    const unsigned char* f = p + off;
    bool current = Be32(f + 8) == salt1 && Be32(f + 12) == salt2;
    if (broken_at >= 0) {
      if (current) {
        return refuse(absl::StrCat("frame at offset ", broken_at,
                                   " is damaged and committed frames follow it (frame ", n,
                                   " at offset ", off, ")"));
      }
      continue;
    }
    if (!current) {
      broken_at = static_cast<int64_t>(off);  // end of this generation (or a damaged salt)
      continue;
    }
    sum(f, 8);
    sum(f + 24, page_size);
    if (s0 != Be32(f + 16) || s1 != Be32(f + 20)) broken_at = static_cast<int64_t>(off);
  }
  return absl::OkStatus();
}

bool IsCorruption(sqlite3* db) {
  int rc = sqlite3_errcode(db);
  return rc == SQLITE_CORRUPT || rc == SQLITE_NOTADB;
}

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

SqliteJournal::SqliteJournal(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}

namespace {

// The state dir exists and is on a local filesystem.
absl::Status PrepareStateDir(const SqliteJournal::Options& options) {
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
  return CheckLocalFilesystemType(options.state_dir, f_type);
}

// What the side file journal.db.state and the files on disk say before SQLite
// opens `path` (which may fold or delete them): a journal that vanished, a WAL
// lost after a crash, a damaged main file or WAL header.
absl::Status CheckFilesBeforeOpen(const std::string& path) {
  const std::string state_path = path + ".state", wal = path + "-wal";
  std::string previous;  // "", "open" or "closed"
  if (auto st = ReadAll(state_path); st.ok())
    previous = std::string(absl::StripAsciiWhitespace(*st));
  std::error_code size_ec;
  const uint64_t db_size = std::filesystem::file_size(path, size_ec);
  const bool db_present = !size_ec && db_size > 0;
  if (!previous.empty() && !db_present) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal ", path, " is missing or empty, but ", state_path,
                     " says a journal existed (deleted or truncated to 0 bytes?)", kRecovery));
  }
  if (previous == "open" && !std::filesystem::exists(wal)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "journal ", path,
        ": the previous scheduler did not shut down cleanly and its write-ahead "
        "log ",
        wal,
        " is missing (deleted?); the jobs acknowledged since the last checkpoint are "
        "only in that file. Put it back if you can. If another program (e.g. the sqlite3 shell) "
        "opened the journal since the crash, it folded the log into journal.db and deleted it: "
        "then nothing is lost and you may delete ",
        state_path,
        ". If the log is lost for good, "
        "deleting ",
        state_path, " and ", path, ".commits",
        " starts from the main file alone (jobs only in the log are "
        "lost)",
        kRecovery));
  }
  if (db_present) ZFARM_RETURN_IF_ERROR(CheckMainFile(path, db_size));
  return CheckWal(wal);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteJournal>> SqliteJournal::Open(const Options& options) {
  ZFARM_RETURN_IF_ERROR(PrepareStateDir(options));
  std::string path = options.state_dir + "/journal.db";
  ZFARM_RETURN_IF_ERROR(CheckFilesBeforeOpen(path));
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK) {
    absl::Status s = absl::FailedPreconditionError(
        absl::StrCat("journal ", path, ": cannot open: ", db ? sqlite3_errmsg(db) : "no memory"));
    sqlite3_close(db);
    return s;
  }
  std::unique_ptr<SqliteJournal> j(new SqliteJournal(db, path));
  sqlite3_busy_timeout(db, 5000);
  // Until the journal is accepted, closing must not checkpoint: a refused open
  // would otherwise fold the WAL into journal.db and delete it, changing the
  // evidence (and the next message) under the operator.
  sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
  ZFARM_RETURN_IF_ERROR(j->CheckAndMigrate());
  ZFARM_RETURN_IF_ERROR(j->WriteStateFile("open"));
  sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, nullptr);
  j->mark_closed_ = true;
  j->StartWriter();
  return j;
}

absl::Status SqliteJournal::CheckAndMigrate() {
  // SQLite reports damage as CORRUPT / NOTADB: refused with the file and the recovery.
  auto damaged = [&](const absl::Status& s) {
    if (s.ok() || !IsCorruption(db_)) return s;
    return absl::FailedPreconditionError(
        absl::StrCat("journal ", path_, " is damaged: ", sqlite3_errmsg(db_), kRecovery));
  };
  ZFARM_RETURN_IF_ERROR(damaged(Exec(db_, "PRAGMA journal_mode=WAL")));
  ZFARM_RETURN_IF_ERROR(damaged(Exec(db_, "PRAGMA synchronous=FULL")));
  ZFARM_ASSIGN_OR_RETURN(std::string mode, Pragma("journal_mode"));
  if (mode != "wal") {
    return absl::FailedPreconditionError(
        absl::StrCat("journal ", path_, ": cannot enable WAL (journal_mode=", mode, ")"));
  }
  // integrity_check (not quick_check): also catches damaged indexes, which would
  // let a later INSERT OR REPLACE duplicate a job row.
  absl::Time check_start = absl::Now();
  auto check = Pragma("integrity_check");
  LOG(INFO) << "event=journal_checked path=" << path_
            << " check=integrity_check ms=" << absl::ToInt64Milliseconds(absl::Now() - check_start);
  ZFARM_RETURN_IF_ERROR(damaged(check.status()));
  if (*check != "ok") {
    return absl::FailedPreconditionError(
        absl::StrCat("journal ", path_, " is damaged: integrity_check: ", *check, kRecovery));
  }
  // Anything else that fails on an existing file (a damaged schema, a version
  // cookie that no longer matches the tables) is refused naming the file.
  auto named = [&](const absl::Status& s) {
    if (s.ok() || absl::StrContains(s.message(), path_)) return s;
    return absl::FailedPreconditionError(absl::StrCat(
        "journal ", path_, " is damaged or not a zfarm journal: ", s.message(), kRecovery));
  };
  ZFARM_RETURN_IF_ERROR(named(damaged(Migrate())));
  ZFARM_RETURN_IF_ERROR(named(Prepare()));
  return named(CheckCommitRecord());
}

SqliteJournal::~SqliteJournal() {
  Close();
  for (sqlite3_stmt* s : {put_job_, del_job_, put_req_, del_req_, put_worker_, bump_commits_}) {
    sqlite3_finalize(s);
  }
  if (commits_fd_ >= 0) ::close(commits_fd_);
  // A clean close checkpoints the WAL into journal.db and deletes it: only then
  // is the journal "closed" (a missing WAL is expected).
  if (sqlite3_close(db_) == SQLITE_OK && mark_closed_) {
    absl::Status s = WriteStateFile("closed");
    if (!s.ok()) LOG(ERROR) << "event=journal_state_write_failed error=\"" << s << "\"";
  }
}

absl::Status SqliteJournal::WriteStateFile(const char* state) {
  const std::string target = path_ + ".state";
  if (absl::Status s = base::WriteFileAtomically(target, std::string(state) + "\n"); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("journal: cannot write ", target, ": ",
                                                      s.message()));
  }
  return absl::OkStatus();
}

absl::Status SqliteJournal::Migrate() {
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

absl::Status SqliteJournal::Prepare() {
  auto prep = [&](const char* sql, sqlite3_stmt** out) -> absl::Status {
    if (sqlite3_prepare_v2(db_, sql, -1, out, nullptr) != SQLITE_OK) {
      return SqlError(db_, sql);
    }
    return absl::OkStatus();
  };
  ZFARM_RETURN_IF_ERROR(
      prep("INSERT OR REPLACE INTO jobs(job_id,state,batch_id,seq,runs,min_memory_bytes,"
           "commit_pending,cancel_requested,fingerprint,job,crc) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
           &put_job_));
  ZFARM_RETURN_IF_ERROR(prep("DELETE FROM jobs WHERE job_id=?", &del_job_));
  ZFARM_RETURN_IF_ERROR(
      prep("INSERT OR REPLACE INTO requests(request_id,job_id,fingerprint,create_us,crc,owner) "
           "VALUES(?,?,?,?,?,?)",
           &put_req_));
  ZFARM_RETURN_IF_ERROR(
      prep("DELETE FROM requests WHERE request_id=? AND owner=?", &del_req_));
  ZFARM_RETURN_IF_ERROR(
      prep("INSERT OR REPLACE INTO workers(worker_name,principal,crc) VALUES(?,?,?)",
           &put_worker_));
  ZFARM_RETURN_IF_ERROR(prep("UPDATE meta SET v=? WHERE k='commits'", &bump_commits_));
  return absl::OkStatus();
}

namespace {
// journal.db.commits: the counter and its complement, little-endian.
constexpr size_t kCommitRecordBytes = 16;
void EncodeCommitRecord(uint64_t seq, unsigned char out[kCommitRecordBytes]) {
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<unsigned char>(seq >> (8 * i));
    out[8 + i] = static_cast<unsigned char>(~seq >> (8 * i));
  }
}
// False when `bytes` is not a well-formed record (size or complement).
bool DecodeCommitRecord(std::string_view bytes, uint64_t* seq) {
  if (bytes.size() != kCommitRecordBytes) return false;
  uint64_t value = 0, inverse = 0;
  for (int i = 0; i < 8; ++i) {
    value |= uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * i);
    inverse |= uint64_t{static_cast<unsigned char>(bytes[8 + i])} << (8 * i);
  }
  *seq = value;
  return value == ~inverse;
}
}  // namespace

absl::Status SqliteJournal::CheckCommitRecord() {
  const std::string record = path_ + ".commits";
  uint64_t in_journal = 0;
  {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_, "SELECT v FROM meta WHERE k='commits'", -1, &st, nullptr) !=
            SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
      absl::Status s = absl::DataLossError(
          absl::StrCat("journal ", path_, ": the commit counter row is missing", kRecovery));
      sqlite3_finalize(st);
      return s;
    }
    in_journal = static_cast<uint64_t>(sqlite3_column_int64(st, 0));
    sqlite3_finalize(st);
  }
  if (auto bytes = ReadAll(record); bytes.ok()) {
    uint64_t seq = 0;
    if (!DecodeCommitRecord(*bytes, &seq)) {
      return absl::DataLossError(absl::StrCat(
          "journal ", path_, ": the commit record ", record,
          " is damaged, so the journal cannot be checked for lost transactions. If the journal "
          "is otherwise intact, delete ",
          record, " to accept it as it is", kRecovery));
    }
    if (in_journal < seq) {
      return absl::DataLossError(absl::StrCat(
          "journal ", path_, " ends at commit ", in_journal, " but commit ", seq,
          " was acknowledged (recorded in ", record, "): the last ", seq - in_journal,
          " transaction(s) of its write-ahead log ", path_,
          "-wal were lost (damaged or cut short). If you restored journal.db from a backup on "
          "purpose, delete ",
          record, " and start again", kRecovery));
    }
  }
  commits_fd_ = ::open(record.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (commits_fd_ < 0) {
    return absl::FailedPreconditionError(absl::StrCat("journal: cannot open ", record));
  }
  commit_seq_ = in_journal;
  return WriteCommitRecord(in_journal);
}

absl::Status SqliteJournal::WriteCommitRecord(uint64_t seq) {
  unsigned char buf[kCommitRecordBytes];
  EncodeCommitRecord(seq, buf);
  if (::pwrite(commits_fd_, buf, sizeof(buf), 0) != static_cast<ssize_t>(sizeof(buf)) ||
      ::fdatasync(commits_fd_) != 0) {
    return absl::InternalError(
        absl::StrCat("journal: cannot write ", path_, ".commits: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> SqliteJournal::Pragma(const std::string& name) {
  sqlite3_stmt* st = nullptr;
  std::string sql = "PRAGMA " + name;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) {
    return SqlError(db_, sql);
  }
  std::string out;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    const unsigned char* t = sqlite3_column_text(st, 0);
    out = t ? reinterpret_cast<const char*>(t) : "";
  } else if (rc != SQLITE_DONE) {
    absl::Status s = SqlError(db_, sql);
    sqlite3_finalize(st);
    return s;
  }
  sqlite3_finalize(st);
  return out;
}

absl::StatusOr<SqliteJournal::Contents> SqliteJournal::Load() {
  Contents c;
  sqlite3_stmt* st = nullptr;
  const char* q =
      "SELECT seq,runs,min_memory_bytes,commit_pending,cancel_requested,fingerprint,job,"
      "job_id,state,batch_id,crc FROM jobs ORDER BY seq";
  auto text = [&](int col) {
    const unsigned char* t = sqlite3_column_text(st, col);
    return t ? std::string(reinterpret_cast<const char*>(t), sqlite3_column_bytes(st, col))
             : std::string();
  };
  auto damaged = [&](const std::string& what) {
    sqlite3_finalize(st);
    return absl::DataLossError(absl::StrCat("journal ", path_, ": ", what, kRecovery));
  };
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
    std::string_view blob(static_cast<const char*>(sqlite3_column_blob(st, 6)),
                          sqlite3_column_bytes(st, 6));
    const std::string id = text(7);
    if (!r.job.ParseFromArray(blob.data(), static_cast<int>(blob.size()))) {
      return damaged(absl::StrCat("job row ", id, " (seq ", r.seq, ") does not parse"));
    }
    if (r.job.job_id() != id || r.job.state() != sqlite3_column_int(st, 8) ||
        r.job.batch_id() != text(9)) {
      return damaged(
          absl::StrCat("job row ", id, " (seq ", r.seq, "): columns disagree with the stored job"));
    }
    if (sqlite3_column_type(st, 10) != SQLITE_NULL &&
        sqlite3_column_int64(st, 10) != JobCrc(r, blob)) {
      return damaged(absl::StrCat("job row ", id, " (seq ", r.seq, "): checksum mismatch"));
    }
    c.jobs.push_back(std::move(r));
  }
  if (rc != SQLITE_DONE) return damaged(absl::StrCat("reading jobs: ", sqlite3_errmsg(db_)));
  sqlite3_finalize(st);
  q = "SELECT request_id,job_id,fingerprint,create_us,crc,owner FROM requests";
  if (sqlite3_prepare_v2(db_, q, -1, &st, nullptr) != SQLITE_OK) return SqlError(db_, q);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    RequestRecord r;
    r.request_id = text(0);
    r.job_id = text(1);
    r.fingerprint = text(2);
    r.create_time = absl::FromUnixMicros(sqlite3_column_int64(st, 3));
    r.owner = text(5);
    if (sqlite3_column_type(st, 4) != SQLITE_NULL && sqlite3_column_int64(st, 4) != RequestCrc(r)) {
      return damaged(absl::StrCat("request row ", r.request_id, ": checksum mismatch"));
    }
    c.requests.push_back(std::move(r));
  }
  if (rc != SQLITE_DONE) return damaged(absl::StrCat("reading requests: ", sqlite3_errmsg(db_)));
  sqlite3_finalize(st);
  q = "SELECT worker_name,principal,crc FROM workers";
  if (sqlite3_prepare_v2(db_, q, -1, &st, nullptr) != SQLITE_OK) return SqlError(db_, q);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    WorkerRecord w{text(0), text(1)};
    if (sqlite3_column_int64(st, 2) != WorkerCrc(w)) {
      return damaged(absl::StrCat("worker row ", w.worker_name, ": checksum mismatch"));
    }
    c.workers.push_back(std::move(w));
  }
  if (rc != SQLITE_DONE) return damaged(absl::StrCat("reading workers: ", sqlite3_errmsg(db_)));
  sqlite3_finalize(st);
  return c;
}

namespace {
// Binds `s` as text parameter `i`; `s` must outlive the statement's step (SQLITE_STATIC).
void BindText(sqlite3_stmt* st, int i, const std::string& s) {
  sqlite3_bind_text(st, i, s.data(), static_cast<int>(s.size()), SQLITE_STATIC);
}
}  // namespace

sqlite3_stmt* SqliteJournal::BindOp(const Op& op, std::string* blob) {
  sqlite3_stmt* st = nullptr;
  switch (op.kind) {
    case Op::Kind::kPutJob: {
      st = put_job_;
      const JobRecord& r = op.job;
      blob->clear();
      r.job.SerializeToString(blob);
      BindText(st, 1, r.job.job_id());
      sqlite3_bind_int(st, 2, r.job.state());
      BindText(st, 3, r.job.batch_id());
      sqlite3_bind_int64(st, 4, static_cast<int64_t>(r.seq));
      sqlite3_bind_int(st, 5, r.runs);
      sqlite3_bind_int64(st, 6, r.min_memory_bytes);
      sqlite3_bind_int(st, 7, r.commit_pending);
      sqlite3_bind_int(st, 8, r.cancel_requested);
      BindText(st, 9, r.fingerprint);
      sqlite3_bind_blob(st, 10, blob->data(), blob->size(), SQLITE_STATIC);
      sqlite3_bind_int64(st, 11, JobCrc(r, *blob));
      break;
    }
    case Op::Kind::kDeleteJob:
      st = del_job_;
      BindText(st, 1, op.job.job.job_id());
      break;
    case Op::Kind::kPutRequest:
      st = put_req_;
      BindText(st, 1, op.request.request_id);
      BindText(st, 2, op.request.job_id);
      BindText(st, 3, op.request.fingerprint);
      sqlite3_bind_int64(st, 4, ToMicros(op.request.create_time));
      sqlite3_bind_int64(st, 5, RequestCrc(op.request));
      BindText(st, 6, op.request.owner);
      break;
    case Op::Kind::kDeleteRequest:
      st = del_req_;
      BindText(st, 1, op.request.request_id);
      BindText(st, 2, op.request.owner);
      break;
    case Op::Kind::kPutWorker:
      st = put_worker_;
      BindText(st, 1, op.worker.worker_name);
      BindText(st, 2, op.worker.principal);
      sqlite3_bind_int64(st, 3, WorkerCrc(op.worker));
      break;
  }
  return st;
}

absl::Status SqliteJournal::Write(const std::vector<Batch>& batches) {
  ZFARM_RETURN_IF_ERROR(Exec(db_, "BEGIN IMMEDIATE"));
  auto fail = [&](const std::string& what) {
    absl::Status s = SqlError(db_, what);
    Exec(db_, "ROLLBACK").IgnoreError();
    return s;
  };
  std::string blob;
  for (const Batch& b : batches) {
    for (const Op& op : b.ops) {
      sqlite3_stmt* st = BindOp(op, &blob);
      int rc = sqlite3_step(st);
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
      if (rc != SQLITE_DONE) return fail("write");
    }
  }
  const uint64_t seq = commit_seq_ + 1;
  sqlite3_bind_int64(bump_commits_, 1, static_cast<int64_t>(seq));
  int rc = sqlite3_step(bump_commits_);
  sqlite3_reset(bump_commits_);
  if (rc != SQLITE_DONE || sqlite3_changes(db_) != 1) return fail("commit counter");
  if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) return fail("commit");
  commit_seq_ = seq;
  // Durable in the journal; now record it outside the WAL before anyone is told.
  return WriteCommitRecord(seq);
}

}  // namespace zfarm::scheduler
