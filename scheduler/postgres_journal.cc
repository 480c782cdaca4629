#include "scheduler/postgres_journal.h"

#include <libpq-fe.h>

#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "proto/base/status_macros.h"

namespace zfarm::scheduler {
namespace {

// Migration i brings the schema from version i to i + 1.
const char* const kMigrations[] = {
    // v0 -> v1
    "CREATE TABLE zfarm_jobs ("
    "  job_id TEXT PRIMARY KEY,"
    "  state INTEGER NOT NULL,"
    "  batch_id TEXT NOT NULL,"
    "  seq BIGINT NOT NULL,"
    "  runs INTEGER NOT NULL,"
    "  min_memory_bytes BIGINT NOT NULL,"
    "  commit_pending BOOLEAN NOT NULL,"
    "  cancel_requested BOOLEAN NOT NULL,"
    "  fingerprint TEXT NOT NULL,"
    "  job BYTEA NOT NULL);"
    "CREATE TABLE zfarm_requests ("
    "  owner TEXT NOT NULL,"
    "  request_id TEXT NOT NULL,"
    "  job_id TEXT NOT NULL,"
    "  fingerprint TEXT NOT NULL,"
    "  create_us BIGINT NOT NULL,"
    "  PRIMARY KEY (owner, request_id));"
    "CREATE TABLE zfarm_workers ("
    "  worker_name TEXT PRIMARY KEY,"
    "  principal TEXT NOT NULL);"
    "CREATE TABLE zfarm_leader ("
    "  name TEXT PRIMARY KEY,"
    "  holder TEXT NOT NULL,"
    "  epoch BIGINT NOT NULL,"
    "  expires_at TIMESTAMPTZ NOT NULL);"
    // The fence of every write transaction (see the header).
    "CREATE FUNCTION zfarm_fence(lease TEXT, mine BIGINT) RETURNS void AS $$"
    " DECLARE current BIGINT; who TEXT;"
    " BEGIN"
    "  SELECT epoch, holder INTO current, who FROM zfarm_leader WHERE name = lease FOR SHARE;"
    "  IF current IS DISTINCT FROM mine THEN"
    "   RAISE EXCEPTION 'fenced: lease % has epoch % (holder %), this scheduler holds epoch %',"
    "     lease, current, who, mine USING ERRCODE = 'ZF001';"
    "  END IF;"
    " END $$ LANGUAGE plpgsql;",
};
constexpr int kKnown = sizeof(kMigrations) / sizeof(kMigrations[0]);
static_assert(kKnown == PostgresJournal::kSchemaVersion);
// Serializes migrations of schedulers starting together (pg_advisory_xact_lock).
constexpr char kMigrationLock[] = "7203114511";

void ClearResult(pg_result* r) { PQclear(r); }

// Binary result columns (network byte order).
int64_t BinInt(const PGresult* r, int row, int col) {
  const auto* p = reinterpret_cast<const unsigned char*>(PQgetvalue(r, row, col));
  int64_t v = 0;
  for (int i = 0, n = PQgetlength(r, row, col); i < n; ++i) v = (v << 8) | p[i];
  // Sign-extend 4-byte integers.
  if (PQgetlength(r, row, col) == 4) v = static_cast<int32_t>(static_cast<uint32_t>(v));
  return v;
}
std::string BinText(const PGresult* r, int row, int col) {
  return std::string(PQgetvalue(r, row, col), PQgetlength(r, row, col));
}
bool BinBool(const PGresult* r, int row, int col) { return PQgetvalue(r, row, col)[0] != 0; }

// One prepared statement's parameters, as text except the job blob (binary).
struct Params {
  std::vector<std::string> values;
  int binary_index = -1;
  void Add(std::string v) { values.push_back(std::move(v)); }
};

}  // namespace

PostgresJournal::PostgresJournal(std::unique_ptr<pg::Connection> conn) : conn_(std::move(conn)) {}

PostgresJournal::~PostgresJournal() { Close(); }

std::string PostgresJournal::path() const { return conn_->masked_url(); }

absl::StatusOr<std::unique_ptr<PostgresJournal>> PostgresJournal::Open(const Options& options) {
  ZFARM_ASSIGN_OR_RETURN(std::unique_ptr<pg::Connection> conn,
                         pg::Connection::Open(options.connect));
  std::unique_ptr<PostgresJournal> j(new PostgresJournal(std::move(conn)));
  ZFARM_RETURN_IF_ERROR(j->Migrate());
  j->StartWriter();
  return j;
}

absl::StatusOr<int> PostgresJournal::SchemaVersion() {
  ZFARM_ASSIGN_OR_RETURN(pg::Result r, conn_->Exec("SELECT version FROM zfarm_schema"));
  int v = 0;
  if (PQntuples(r.get()) != 1 || !absl::SimpleAtoi(PQgetvalue(r.get(), 0, 0), &v)) {
    return absl::DataLossError(
        absl::StrCat("journal ", path(), ": table zfarm_schema does not hold one version row"));
  }
  return v;
}

absl::Status PostgresJournal::Migrate() {
  ZFARM_RETURN_IF_ERROR(conn_->Exec("BEGIN").status());
  auto run = [&]() -> absl::Status {
    ZFARM_RETURN_IF_ERROR(
        conn_->Exec(absl::StrCat("SELECT pg_advisory_xact_lock(", kMigrationLock, ")")).status());
    ZFARM_RETURN_IF_ERROR(
        conn_->Exec("CREATE TABLE IF NOT EXISTS zfarm_schema (version INTEGER NOT NULL)").status());
    ZFARM_ASSIGN_OR_RETURN(pg::Result r, conn_->Exec("SELECT count(*) FROM zfarm_schema"));
    if (std::strcmp(PQgetvalue(r.get(), 0, 0), "0") == 0) {
      ZFARM_RETURN_IF_ERROR(conn_->Exec("INSERT INTO zfarm_schema(version) VALUES(0)").status());
    }
    ZFARM_ASSIGN_OR_RETURN(int version, SchemaVersion());
    if (version > kKnown) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--journal ", path(), ": schema version ", version, " is newer than this binary's ",
          kKnown, " (written by a newer zfarm-scheduler); run that version, or restore the "
          "database from a backup taken before the upgrade"));
    }
    for (int i = version; i < kKnown; ++i) {
      ZFARM_RETURN_IF_ERROR(conn_->Exec(kMigrations[i]).status());
      ZFARM_RETURN_IF_ERROR(
          conn_->Exec(absl::StrCat("UPDATE zfarm_schema SET version = ", i + 1)).status());
      LOG(INFO) << "event=journal_migrated journal=" << path() << " from=" << i << " to=" << i + 1;
    }
    return absl::OkStatus();
  };
  absl::Status s = run();
  if (!s.ok()) {
    conn_->Exec("ROLLBACK").IgnoreError();
    return s;
  }
  return conn_->Exec("COMMIT").status();
}

absl::Status PostgresJournal::Prepare() {
  struct Stmt {
    const char* name;
    const char* sql;
  };
  static constexpr Stmt kStatements[] = {
      {"zfarm_put_job",
       "INSERT INTO zfarm_jobs(job_id,state,batch_id,seq,runs,min_memory_bytes,commit_pending,"
       "cancel_requested,fingerprint,job) VALUES($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) "
       "ON CONFLICT (job_id) DO UPDATE SET state=EXCLUDED.state,batch_id=EXCLUDED.batch_id,"
       "seq=EXCLUDED.seq,runs=EXCLUDED.runs,min_memory_bytes=EXCLUDED.min_memory_bytes,"
       "commit_pending=EXCLUDED.commit_pending,cancel_requested=EXCLUDED.cancel_requested,"
       "fingerprint=EXCLUDED.fingerprint,job=EXCLUDED.job"},
      {"zfarm_del_job", "DELETE FROM zfarm_jobs WHERE job_id=$1"},
      {"zfarm_put_req",
       "INSERT INTO zfarm_requests(owner,request_id,job_id,fingerprint,create_us) "
       "VALUES($1,$2,$3,$4,$5) ON CONFLICT (owner,request_id) DO UPDATE SET "
       "job_id=EXCLUDED.job_id,fingerprint=EXCLUDED.fingerprint,create_us=EXCLUDED.create_us"},
      {"zfarm_del_req", "DELETE FROM zfarm_requests WHERE owner=$1 AND request_id=$2"},
      {"zfarm_put_worker",
       "INSERT INTO zfarm_workers(worker_name,principal) VALUES($1,$2) "
       "ON CONFLICT (worker_name) DO UPDATE SET principal=EXCLUDED.principal"},
      {"zfarm_fence", "SELECT zfarm_fence($1,$2)"},
  };
  for (const Stmt& s : kStatements) {
    pg::Result r(PQprepare(conn_->get(), s.name, s.sql, 0, nullptr), ClearResult);
    ZFARM_RETURN_IF_ERROR(conn_->Check(r.get(), s.sql));
  }
  prepared_ = conn_->generation();
  return absl::OkStatus();
}

void PostgresJournal::Fence(const std::string& name, int64_t epoch,
                            std::function<void()> on_fenced) {
  absl::MutexLock lock(&mu_);
  fence_name_ = name;
  fence_epoch_ = epoch;
  on_fenced_ = std::move(on_fenced);
}

absl::StatusOr<Journal::Contents> PostgresJournal::Load() {
  // A connection that idled through a server restart (a standby's, until it takes
  // over) fails its first query: reading is safe to repeat on a new one.
  absl::StatusOr<Contents> c = LoadOnce();
  if (c.status().code() != absl::StatusCode::kUnavailable) return c;
  conn_->Drop();
  return LoadOnce();
}

absl::StatusOr<Journal::Contents> PostgresJournal::LoadOnce() {
  Contents c;
  auto damaged = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat("journal ", path(), ": ", what));
  };
  ZFARM_ASSIGN_OR_RETURN(
      pg::Result jobs,
      conn_->Exec("SELECT seq,runs,min_memory_bytes,commit_pending,cancel_requested,fingerprint,"
                  "job,job_id,state,batch_id FROM zfarm_jobs ORDER BY seq",
                  {}, /*binary=*/true));
  const PGresult* r = jobs.get();
  for (int i = 0, n = PQntuples(r); i < n; ++i) {
    JobRecord rec;
    rec.seq = static_cast<uint64_t>(BinInt(r, i, 0));
    rec.runs = static_cast<int32_t>(BinInt(r, i, 1));
    rec.min_memory_bytes = BinInt(r, i, 2);
    rec.commit_pending = BinBool(r, i, 3);
    rec.cancel_requested = BinBool(r, i, 4);
    rec.fingerprint = BinText(r, i, 5);
    const std::string id = BinText(r, i, 7);
    if (!rec.job.ParseFromArray(PQgetvalue(r, i, 6), PQgetlength(r, i, 6))) {
      return damaged(absl::StrCat("job row ", id, " (seq ", rec.seq, ") does not parse"));
    }
    if (rec.job.job_id() != id || rec.job.state() != BinInt(r, i, 8) ||
        rec.job.batch_id() != BinText(r, i, 9)) {
      return damaged(
          absl::StrCat("job row ", id, " (seq ", rec.seq, "): columns disagree with the stored job"));
    }
    c.jobs.push_back(std::move(rec));
  }
  ZFARM_ASSIGN_OR_RETURN(
      pg::Result reqs,
      conn_->Exec("SELECT owner,request_id,job_id,fingerprint,create_us FROM zfarm_requests", {},
                  /*binary=*/true));
  r = reqs.get();
  for (int i = 0, n = PQntuples(r); i < n; ++i) {
    RequestRecord rec;
    rec.owner = BinText(r, i, 0);
    rec.request_id = BinText(r, i, 1);
    rec.job_id = BinText(r, i, 2);
    rec.fingerprint = BinText(r, i, 3);
    rec.create_time = absl::FromUnixMicros(BinInt(r, i, 4));
    c.requests.push_back(std::move(rec));
  }
  ZFARM_ASSIGN_OR_RETURN(
      pg::Result workers,
      conn_->Exec("SELECT worker_name,principal FROM zfarm_workers", {}, /*binary=*/true));
  r = workers.get();
  for (int i = 0, n = PQntuples(r); i < n; ++i) {
    c.workers.push_back(WorkerRecord{BinText(r, i, 0), BinText(r, i, 1)});
  }
  return c;
}

absl::Status PostgresJournal::Write(const std::vector<Batch>& batches) {
  std::string fence_name;
  int64_t fence_epoch = 0;
  {
    absl::MutexLock lock(&mu_);
    fence_name = fence_name_;
    fence_epoch = fence_epoch_;
  }
  if (absl::Status s = conn_->EnsureConnected(); !s.ok()) {
    return absl::UnavailableError(absl::StrCat("journal ", path(), ": ", s.message()));
  }
  if (prepared_ != conn_->generation()) ZFARM_RETURN_IF_ERROR(Prepare());
  PGconn* db = conn_->get();
  if (PQenterPipelineMode(db) != 1) {
    return absl::InternalError(absl::StrCat("journal ", path(), ": cannot enter pipeline mode"));
  }
  // Sends every statement, then reads every result: one round trip. Results are
  // read every kChunk statements too (after a flush request), so that a huge
  // transaction never fills both sockets' buffers (blocking mode would deadlock).
  constexpr int kChunk = 500;
  absl::Status first;
  bool fenced = false, lost = false;
  int sent = 0, read = 0;
  auto drain = [&] {
    for (; read < sent && !lost; ++read) {
      bool got = false;
      for (PGresult* res; (res = PQgetResult(db)) != nullptr;) {
        got = true;
        const ExecStatusType st = PQresultStatus(res);
        if (first.ok() && st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
          if (st == PGRES_PIPELINE_ABORTED) {
            first = absl::InternalError(absl::StrCat("journal ", path(), ": transaction aborted"));
          } else {
            const char* code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            fenced = code && std::strcmp(code, "ZF001") == 0;
            first = conn_->Check(res, read == 0 ? "BEGIN" : "write");
          }
        }
        PQclear(res);
      }
      if (!got) lost = true;  // the connection went away
    }
  };
  auto sent_one = [&](int ok) {
    if (ok != 1) lost = true;
    ++sent;
    if (!lost && sent - read >= kChunk) {
      if (PQsendFlushRequest(db) != 1 || PQflush(db) != 0) {
        lost = true;
      } else {
        drain();
      }
    }
  };
  auto send = [&](const char* stmt, const Params& p) {
    std::vector<const char*> values;
    std::vector<int> lengths, formats;
    for (size_t i = 0; i < p.values.size(); ++i) {
      values.push_back(p.values[i].data());
      lengths.push_back(static_cast<int>(p.values[i].size()));
      formats.push_back(static_cast<int>(i) == p.binary_index ? 1 : 0);
    }
    sent_one(PQsendQueryPrepared(db, stmt, static_cast<int>(values.size()), values.data(),
                                 lengths.data(), formats.data(), 0));
  };
  auto send_plain = [&](const char* sql) {
    sent_one(PQsendQueryParams(db, sql, 0, nullptr, nullptr, nullptr, nullptr, 0));
  };
  send_plain("BEGIN");
  if (fence_epoch != 0) {
    Params p;
    p.Add(fence_name);
    p.Add(absl::StrCat(fence_epoch));
    send("zfarm_fence", p);
  }
  for (const Batch& b : batches) {
    for (const Op& op : b.ops) {
      if (lost) break;
      Params p;
      switch (op.kind) {
        case Op::Kind::kPutJob: {
          const JobRecord& r = op.job;
          p.Add(r.job.job_id());
          p.Add(absl::StrCat(static_cast<int>(r.job.state())));
          p.Add(r.job.batch_id());
          p.Add(absl::StrCat(static_cast<int64_t>(r.seq)));
          p.Add(absl::StrCat(r.runs));
          p.Add(absl::StrCat(r.min_memory_bytes));
          p.Add(r.commit_pending ? "t" : "f");
          p.Add(r.cancel_requested ? "t" : "f");
          p.Add(r.fingerprint);
          p.Add(r.job.SerializeAsString());
          p.binary_index = 9;
          send("zfarm_put_job", p);
          break;
        }
        case Op::Kind::kDeleteJob:
          p.Add(op.job.job.job_id());
          send("zfarm_del_job", p);
          break;
        case Op::Kind::kPutRequest:
          p.Add(op.request.owner);
          p.Add(op.request.request_id);
          p.Add(op.request.job_id);
          p.Add(op.request.fingerprint);
          p.Add(absl::StrCat(absl::ToUnixMicros(op.request.create_time)));
          send("zfarm_put_req", p);
          break;
        case Op::Kind::kDeleteRequest:
          p.Add(op.request.owner);
          p.Add(op.request.request_id);
          send("zfarm_del_req", p);
          break;
        case Op::Kind::kPutWorker:
          p.Add(op.worker.worker_name);
          p.Add(op.worker.principal);
          send("zfarm_put_worker", p);
          break;
      }
    }
  }
  if (!lost) send_plain("COMMIT");
  if (!lost && PQpipelineSync(db) != 1) lost = true;
  drain();
  if (!lost && PQstatus(db) == CONNECTION_OK) {
    // The sync point.
    for (PGresult* res; (res = PQgetResult(db)) != nullptr;) {
      const bool sync = PQresultStatus(res) == PGRES_PIPELINE_SYNC;
      PQclear(res);
      if (sync) break;
    }
  }
  if (lost || PQstatus(db) != CONNECTION_OK || PQexitPipelineMode(db) != 1) {
    const std::string why = conn_->LastError();
    conn_->Drop();  // whatever state it is in, the next write starts afresh
    return absl::UnavailableError(absl::StrCat(
        "journal ", path(), ": connection lost during the write (not acknowledged): ", why));
  }
  if (PQtransactionStatus(db) != PQTRANS_IDLE) conn_->Exec("ROLLBACK").IgnoreError();
  if (fenced) {
    std::function<void()> on_fenced;
    {
      absl::MutexLock lock(&mu_);
      on_fenced = std::move(on_fenced_);
      on_fenced_ = nullptr;
    }
    LOG(ERROR) << "event=journal_fenced journal=" << path() << " error=\"" << first.message()
               << "\"";
    if (on_fenced) on_fenced();
    return absl::UnavailableError(first.message());
  }
  if (!first.ok() && first.code() != absl::StatusCode::kUnavailable) {
    return absl::InternalError(first.message());
  }
  return first;
}

}  // namespace zfarm::scheduler
