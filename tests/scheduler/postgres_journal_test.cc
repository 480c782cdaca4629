// The PostgreSQL journal and the leader lease against a real PostgreSQL server
// started by the test (tests/testing/postgres_server.h): round trip, group
// commit, a newer schema refused, bad URLs and passwords refused with the
// password masked, an unreachable server, fencing of a write after a takeover,
// and writes failing (never acknowledged) while the server restarts.
#include "scheduler/postgres_journal.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "scheduler/leader_lease.h"
#include "scheduler/pg_conn.h"
#include "tests/scheduler/journal_contract.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::scheduler {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::zfarm::testing::PostgresServer;
using ::zfarm::testing::StatusIs;

PostgresJournal::Options At(const std::string& url, const std::string& password_file = "") {
  PostgresJournal::Options o;
  o.connect.url = url;
  o.connect.password_file = password_file;
  return o;
}

// A job with a spec and a batch (round trip of every column).
Journal::Op FullJob(const std::string& id, v1::JobState state, uint64_t seq) {
  Journal::Op op = PutJob(id, state, seq);
  op.job.job.set_batch_id("b");
  op.job.job.mutable_spec()->set_prompt("prompt of " + id);
  op.job.fingerprint = "fp-" + id;
  return op;
}

// Appends `ops` and waits for the outcome.
absl::Status AppendAndWait(Journal& j, std::vector<Journal::Op> ops) {
  absl::Notification done;
  absl::Status out;
  j.Append(std::move(ops), [&](absl::Status s) {
    out = s;
    done.Notify();
  });
  done.WaitForNotification();
  return out;
}

class PostgresJournalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (PostgresServer::BinDir().empty()) return;
    const std::string dir = (std::filesystem::temp_directory_path() /
                             absl::StrCat("zfarm-pg-journal-", getpid()))
                                .string();
    auto pg = PostgresServer::Start(dir);
    ASSERT_TRUE(pg.ok()) << pg.status();
    pg_ = pg->release();
  }
  static void TearDownTestSuite() {
    delete pg_;
    pg_ = nullptr;
  }
  void SetUp() override {
    if (pg_ == nullptr) GTEST_SKIP() << "PostgreSQL is not installed (Debian: postgresql)";
    static int n = 0;
    ASSERT_OK_AND_ASSIGN(url_, pg_->CreateDatabase(absl::StrCat("t", ++n)));
  }
  PostgresJournal::Options Options() const {
    return At(url_, pg_->password_file());
  }
  LeaderLease::Options LeaseOptions(const std::string& holder) const {
    LeaderLease::Options o;
    o.connect = Options().connect;
    o.holder = holder;
    o.duration = absl::Seconds(1);
    return o;
  }

  static PostgresServer* pg_;
  std::string url_;
};
PostgresServer* PostgresJournalTest::pg_ = nullptr;

TEST_F(PostgresJournalTest, RoundTripOfEveryRecordAcrossReopen) {
  {
    ASSERT_OK_AND_ASSIGN(auto j, PostgresJournal::Open(Options()));
    EXPECT_THAT(j->path(), AllOf(HasSubstr("127.0.0.1"), Not(HasSubstr("Secr3t"))));
    Journal::Op job = FullJob("j1", v1::JOB_STATE_QUEUED, 7);
    job.job.runs = 2;
    job.job.min_memory_bytes = int64_t{40} << 30;
    job.job.commit_pending = true;
    Journal::Op req{Journal::Op::Kind::kPutRequest, {}, {}, {}};
    req.request = {"alice", "r1", "j1", "fp-j1", absl::FromUnixMicros(1234567)};
    Journal::Op worker{Journal::Op::Kind::kPutWorker, {}, {}, {}};
    worker.worker = {"gpu-1", "farm"};
    ASSERT_OK(AppendAndWait(*j, {job, FullJob("j2", v1::JOB_STATE_RUNNING, 8), req, worker}));
    Journal::Op del{Journal::Op::Kind::kDeleteJob, {}, {}, {}};
    del.job.job.set_job_id("j2");
    // The same job twice in one transaction: the last write wins.
    Journal::Op again = FullJob("j1", v1::JOB_STATE_SUCCEEDED, 7);
    again.job.runs = 3;
    ASSERT_OK(AppendAndWait(*j, {del, again}));
  }
  ASSERT_OK_AND_ASSIGN(auto j, PostgresJournal::Open(Options()));
  ASSERT_OK_AND_ASSIGN(Journal::Contents c, j->Load());
  ASSERT_EQ(c.jobs.size(), 1u);
  EXPECT_EQ(c.jobs[0].job.job_id(), "j1");
  EXPECT_EQ(c.jobs[0].job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(c.jobs[0].job.spec().prompt(), "prompt of j1");
  EXPECT_EQ(c.jobs[0].runs, 3);
  EXPECT_EQ(c.jobs[0].seq, 7u);
  EXPECT_EQ(c.jobs[0].fingerprint, "fp-j1");
  ASSERT_EQ(c.requests.size(), 1u);
  EXPECT_EQ(c.requests[0].owner, "alice");
  EXPECT_EQ(c.requests[0].request_id, "r1");
  EXPECT_EQ(c.requests[0].create_time, absl::FromUnixMicros(1234567));
  ASSERT_EQ(c.workers.size(), 1u);
  EXPECT_EQ(c.workers[0].principal, "farm");
  ASSERT_OK_AND_ASSIGN(int version, j->SchemaVersion());
  EXPECT_EQ(version, PostgresJournal::kSchemaVersion);
}

TEST_F(PostgresJournalTest, GroupCommitSharesTransactions) {
  ASSERT_OK_AND_ASSIGN(auto j, PostgresJournal::Open(Options()));
  ExpectGroupCommitSharesTransactions(*j);
}

TEST_F(PostgresJournalTest, OneHugeTransactionIsWrittenInChunksOfResults) {
  ASSERT_OK_AND_ASSIGN(auto j, PostgresJournal::Open(Options()));
  std::vector<Journal::Op> ops;
  for (int i = 0; i < 5000; ++i) ops.push_back(FullJob(absl::StrCat("big", i), v1::JOB_STATE_QUEUED, i));
  ASSERT_OK(AppendAndWait(*j, std::move(ops)));
  ASSERT_OK_AND_ASSIGN(Journal::Contents c, j->Load());
  ASSERT_EQ(c.jobs.size(), 5000u);
  EXPECT_EQ(c.jobs[4999].job.job_id(), "big4999");
  EXPECT_EQ(j->commits(), 1);
}

TEST_F(PostgresJournalTest, NewerSchemaIsRefusedNamingTheVersions) {
  { ASSERT_OK_AND_ASSIGN(auto j, PostgresJournal::Open(Options())); }
  const std::string db = url_.substr(url_.rfind('/') + 1, url_.find('?') - url_.rfind('/') - 1);
  auto r = pg_->Psql("UPDATE zfarm_schema SET version = 99", db);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(PostgresJournal::Open(Options()),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("--journal"), HasSubstr("schema version 99 is newer"),
                             HasSubstr("binary's 1"))));
}

TEST_F(PostgresJournalTest, BadUrlsAndPasswordsAreRefusedWithThePasswordMasked) {
  // A password in the URL would be on the command line.
  const std::string with_password =
      absl::StrCat("postgres://zfarm:hunter2@127.0.0.1:", pg_->port(), "/zfarm");
  EXPECT_THAT(pg::CheckUrl(with_password),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("--journal"), HasSubstr("zfarm:****@"),
                             HasSubstr("--journal-password-file"), Not(HasSubstr("hunter2")))));
  EXPECT_EQ(pg::MaskUrl("postgres://u@h/db?sslmode=require&password=hunter2&x=1"),
            "postgres://u@h/db?sslmode=require&password=****&x=1");
  EXPECT_THAT(PostgresJournal::Open(At(with_password + "?password=hunter2")),
              StatusIs(absl::StatusCode::kInvalidArgument, Not(HasSubstr("hunter2"))));
  EXPECT_THAT(PostgresJournal::Open(At("sqlite:///var/lib/zfarm")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a PostgreSQL URL")));
  // A wrong password from the file: refused naming --journal, never printing it.
  const std::string wrong = pg_->password_file() + ".wrong";
  std::ofstream(wrong) << "wrong-Passw0rd-xyz\n";
  auto bad = PostgresJournal::Open(At(url_, wrong));
  EXPECT_THAT(bad, StatusIs(absl::StatusCode::kFailedPrecondition,
                            AllOf(HasSubstr("--journal"), HasSubstr("password authentication"),
                                  Not(HasSubstr("wrong-Passw0rd-xyz")))));
  EXPECT_THAT(PostgresJournal::Open(At(url_, wrong + ".none")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--journal-password-file")));
}

TEST_F(PostgresJournalTest, WithoutAPasswordFileLibpqsPgpassfileIsUsed) {
  const std::string pgpass = pg_->password_file() + ".pgpass";
  std::ofstream(pgpass) << "127.0.0.1:" << pg_->port() << ":*:zfarm:" << PostgresServer::kPassword
                        << "\n";
  std::filesystem::permissions(pgpass, std::filesystem::perms::owner_read |
                                           std::filesystem::perms::owner_write);
  // No password anywhere: refused.
  setenv("PGPASSFILE", (pgpass + ".none").c_str(), 1);
  EXPECT_THAT(PostgresJournal::Open(At(url_)),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("--journal")));
  setenv("PGPASSFILE", pgpass.c_str(), 1);
  auto j = PostgresJournal::Open(At(url_));
  unsetenv("PGPASSFILE");
  ASSERT_OK(j.status());
  EXPECT_OK((*j)->Load().status());
}

TEST_F(PostgresJournalTest, UnreachableServerIsUnavailableNamingTheFlag) {
  const std::string url =
      absl::StrCat("postgres://zfarm@127.0.0.1:", PostgresServer::FreePort(), "/zfarm");
  EXPECT_THAT(PostgresJournal::Open(At(url)),
              StatusIs(absl::StatusCode::kUnavailable,
                       AllOf(HasSubstr("--journal " + url), HasSubstr("cannot connect"))));
}

TEST_F(PostgresJournalTest, LeaseIsExclusiveUntilItExpiresAndEachTakeoverHasANewEpoch) {
  ASSERT_OK_AND_ASSIGN(auto j, PostgresJournal::Open(Options()));  // creates the table
  ASSERT_OK_AND_ASSIGN(auto a, LeaderLease::Open(LeaseOptions("a:1")));
  ASSERT_OK_AND_ASSIGN(auto b, LeaderLease::Open(LeaseOptions("b:1")));
  ASSERT_OK_AND_ASSIGN(LeaderLease::State sa, a->TryAcquire());
  ASSERT_TRUE(sa.held);
  ASSERT_OK_AND_ASSIGN(LeaderLease::State sb, b->TryAcquire());
  EXPECT_FALSE(sb.held);
  EXPECT_EQ(sb.holder, "a:1");
  ASSERT_OK(a->Renew(sa.epoch));
  // a stops renewing: after the lease b takes over with a new epoch.
  absl::SleepFor(absl::Milliseconds(1200));
  ASSERT_OK_AND_ASSIGN(sb, b->TryAcquire());
  ASSERT_TRUE(sb.held);
  EXPECT_GT(sb.epoch, sa.epoch);
  EXPECT_THAT(a->Renew(sa.epoch),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("leadership lost"), HasSubstr("held by b:1"))));
  // A clean release hands over at once.
  ASSERT_OK(b->Release(sb.epoch));
  ASSERT_OK_AND_ASSIGN(sa, a->TryAcquire());
  EXPECT_TRUE(sa.held);
  EXPECT_GT(sa.epoch, sb.epoch);
}

TEST_F(PostgresJournalTest, WriteAfterATakeoverIsFencedAndNothingOfItIsWritten) {
  ASSERT_OK_AND_ASSIGN(auto old_leader, PostgresJournal::Open(Options()));
  ASSERT_OK_AND_ASSIGN(auto a, LeaderLease::Open(LeaseOptions("a:1")));
  ASSERT_OK_AND_ASSIGN(LeaderLease::State sa, a->TryAcquire());
  ASSERT_TRUE(sa.held);
  std::atomic<int> fenced{0};
  old_leader->Fence(a->options().name, sa.epoch, [&] { ++fenced; });
  ASSERT_OK(AppendAndWait(*old_leader, {PutJob("before", v1::JOB_STATE_QUEUED, 1)}));
  EXPECT_EQ(fenced.load(), 0);
  // a is paused past its lease; b takes over.
  absl::SleepFor(absl::Milliseconds(1200));
  ASSERT_OK_AND_ASSIGN(auto b, LeaderLease::Open(LeaseOptions("b:1")));
  ASSERT_OK_AND_ASSIGN(LeaderLease::State sb, b->TryAcquire());
  ASSERT_TRUE(sb.held);
  // a's late write (two ops, one transaction) is refused inside the transaction.
  Journal::Op del{Journal::Op::Kind::kDeleteJob, {}, {}, {}};
  del.job.job.set_job_id("before");
  EXPECT_THAT(AppendAndWait(*old_leader, {PutJob("late", v1::JOB_STATE_QUEUED, 2), del}),
              StatusIs(absl::StatusCode::kUnavailable,
                       AllOf(HasSubstr("fenced"), HasSubstr("holder b:1"))));
  EXPECT_EQ(fenced.load(), 1);
  ASSERT_OK_AND_ASSIGN(auto new_leader, PostgresJournal::Open(Options()));
  new_leader->Fence(b->options().name, sb.epoch, nullptr);
  ASSERT_OK_AND_ASSIGN(Journal::Contents c, new_leader->Load());
  ASSERT_EQ(c.jobs.size(), 1u);
  EXPECT_EQ(c.jobs[0].job.job_id(), "before");
  ASSERT_OK(AppendAndWait(*new_leader, {PutJob("new", v1::JOB_STATE_QUEUED, 3)}));
}

TEST_F(PostgresJournalTest, WritesFailWhileTheServerRestartsAndWorkAfter) {
  ASSERT_OK_AND_ASSIGN(auto j, PostgresJournal::Open(Options()));
  ASSERT_OK(AppendAndWait(*j, {PutJob("a", v1::JOB_STATE_QUEUED, 1)}));
  ASSERT_OK(pg_->Stop());
  EXPECT_THAT(AppendAndWait(*j, {PutJob("b", v1::JOB_STATE_QUEUED, 2)}),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("journal")));
  EXPECT_THAT(j->Load(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("journal")));
  ASSERT_OK(pg_->StartServer());
  j->Flush().IgnoreError();  // the failure above, latched
  ASSERT_OK(j->Load().status());
  j->ClearFailure();
  ASSERT_OK(AppendAndWait(*j, {PutJob("c", v1::JOB_STATE_QUEUED, 3)}));
  ASSERT_OK_AND_ASSIGN(Journal::Contents c, j->Load());
  ASSERT_EQ(c.jobs.size(), 2u);
  EXPECT_EQ(c.jobs[0].job.job_id(), "a");
  EXPECT_EQ(c.jobs[1].job.job_id(), "c");
}

TEST_F(PostgresJournalTest, AConnectionThatIdledThroughARestartStillLoads) {
  // A standby opens its journal at start and loads it only when it takes over.
  ASSERT_OK_AND_ASSIGN(auto j, PostgresJournal::Open(Options()));
  ASSERT_OK(AppendAndWait(*j, {PutJob("a", v1::JOB_STATE_QUEUED, 1)}));
  ASSERT_OK(pg_->Stop());
  ASSERT_OK(pg_->StartServer());
  ASSERT_OK_AND_ASSIGN(Journal::Contents c, j->Load());
  ASSERT_EQ(c.jobs.size(), 1u);
}

}  // namespace
}  // namespace zfarm::scheduler
