// Principals cannot reach each other's jobs or workers: request ids scoped to the
// submitting principal (and migrated from schema v3), worker names bound to the
// principal that registered them, committed results checked against the file on
// disk, and ListWorkers showing a submitter only its own job ids. Core tests with
// a FakeClock, then the same rules over loopback gRPC with bearer tokens.
#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/security/auth.h"
#include "scheduler/server.h"
#include "scheduler/sqlite_journal.h"
#include "tests/scheduler/core_fixture.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"
#include "zfarm/v1/worker_service.grpc.pb.h"

namespace zfarm::scheduler {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::zfarm::testing::FakeWorker;
using ::zfarm::testing::StatusIs;
using ::zfarm::testing::TestScheduler;
using core_testing::RecordingSink;
using core_testing::SchedulerCoreTest;

using IdentityTest = SchedulerCoreTest;

TEST_F(IdentityTest, RequestIdsAreScopedToThePrincipal) {
  Open();
  ASSERT_OK_AND_ASSIGN(auto alice, SubmitAs("alice", Request("r1")));
  // bob reusing alice's request id gets his own job, not hers.
  ASSERT_OK_AND_ASSIGN(auto bob, SubmitAs("bob", Request("r1")));
  EXPECT_TRUE(bob.created());
  EXPECT_NE(bob.job().job_id(), alice.job().job_id());
  EXPECT_EQ(bob.job().owner(), "bob");
  // A conflicting spec names only bob's own job.
  EXPECT_THAT(SubmitAs("bob", Request("r1", "a dog")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       ::testing::AllOf(HasSubstr(bob.job().job_id()),
                                        Not(HasSubstr(alice.job().job_id())))));
  // Each principal's retry is idempotent, before and after a restart.
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round == 0 ? "before restart" : "after restart");
    ASSERT_OK_AND_ASSIGN(auto a, SubmitAs("alice", Request("r1")));
    ASSERT_OK_AND_ASSIGN(auto b, SubmitAs("bob", Request("r1")));
    EXPECT_FALSE(a.created());
    EXPECT_FALSE(b.created());
    EXPECT_EQ(a.job().job_id(), alice.job().job_id());
    EXPECT_EQ(b.job().job_id(), bob.job().job_id());
    sched_.reset();
    Open();
  }
}

// Turns the v4 journal in `state_dir` back into schema v3 (requests without an
// owner, no workers table), as a scheduler from before this change left it.
void DowngradeToV3(const std::string& state_dir) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((state_dir + "/journal.db").c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  int rc = sqlite3_exec(db,
                        "BEGIN;"
                        "CREATE TABLE requests_v3 (request_id TEXT PRIMARY KEY, job_id TEXT NOT "
                        "NULL, fingerprint TEXT NOT NULL, create_us INTEGER NOT NULL, crc INTEGER);"
                        "INSERT INTO requests_v3 SELECT request_id,job_id,fingerprint,create_us,NULL "
                        "FROM requests;"
                        "DROP TABLE requests; ALTER TABLE requests_v3 RENAME TO requests;"
                        "CREATE INDEX requests_by_time ON requests(create_us);"
                        "DROP TABLE workers; PRAGMA user_version=3; COMMIT;",
                        nullptr, nullptr, &err);
  EXPECT_EQ(rc, SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
}

TEST_F(IdentityTest, SchemaV3TombstonesAreScopedToTheirJobsOwner) {
  Open();
  ASSERT_OK_AND_ASSIGN(auto alice, SubmitAs("alice", Request("r1")));
  sched_.reset();
  DowngradeToV3(options_.state_dir);
  Open();  // migrates v3 -> v4 and scopes r1 to alice, its job's owner
  ASSERT_OK_AND_ASSIGN(std::string version, static_cast<SqliteJournal*>(sched_->journal())->Pragma("user_version"));
  EXPECT_EQ(version, "4");
  for (int round = 0; round < 2; ++round) {
    ASSERT_OK_AND_ASSIGN(auto a, SubmitAs("alice", Request("r1")));
    EXPECT_FALSE(a.created());
    EXPECT_EQ(a.job().job_id(), alice.job().job_id());
    sched_.reset();
    Open();  // the scoped tombstone was written back
  }
  ASSERT_OK_AND_ASSIGN(auto bob, SubmitAs("bob", Request("r1")));
  EXPECT_TRUE(bob.created());
}

TEST_F(IdentityTest, AWorkerNameBelongsToThePrincipalThatRegisteredIt) {
  Open();
  auto a = std::make_shared<RecordingSink>();
  ASSERT_OK(sched_->WorkerHello(Hello("host-a/cuda:0"), a, "gpu-a").status());
  auto b = std::make_shared<RecordingSink>();
  EXPECT_THAT(sched_->WorkerHello(Hello("host-a/cuda:0"), b, "gpu-b"),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       ::testing::AllOf(HasSubstr("hello.worker_name"), HasSubstr("host-a/cuda:0"),
                                        Not(HasSubstr("gpu-a")))));
  EXPECT_OK(a->closed());  // the owner's session was not replaced
  ASSERT_OK(sched_->WorkerHello(Hello("host-b/cuda:0"), b, "gpu-b").status());
  Sync();
  sched_.reset();
  Open();  // the binding is journaled
  EXPECT_THAT(sched_->WorkerHello(Hello("host-a/cuda:0"), b, "gpu-b"),
              StatusIs(absl::StatusCode::kPermissionDenied, ::testing::_));
  EXPECT_OK(sched_->WorkerHello(Hello("host-a/cuda:0"), a, "gpu-a").status());
}

TEST_F(IdentityTest, ACommittedResultThatIsNotOnDiskDoesNotSucceed) {
  options_.max_attempts = 10;
  Open();
  ASSERT_OK_AND_ASSIGN(auto sub, Submit("r1"));
  const std::string id = sub.job().job_id();
  auto sink = std::make_shared<RecordingSink>();
  uint64_t s = Connect("liar", sink);
  // Claims a 1-byte PNG it never wrote, then a file that is there but differs, then
  // a wrong size: each attempt fails, and three in a row make the worker UNHEALTHY.
  for (int attempt = 1; attempt <= 3; ++attempt) {
    SCOPED_TRACE(attempt);
    auto leases = sink->TakeLeases();
    ASSERT_EQ(leases.size(), 1u);
    v1::WorkerMessage commit = Commit(leases[0]);
    if (attempt == 1) {
      commit.mutable_commit()->mutable_result()->set_size_bytes(1);
      commit.mutable_commit()->mutable_result()->set_sha256(std::string(64, 'a'));
    } else {
      std::ofstream(fs::path(options_.output_root) / leases[0].output_path())
          << (attempt == 2 ? "PNG" : "png!");
    }
    ASSERT_OK(Msg(s, Started(leases[0].lease())));
    ASSERT_OK(Msg(s, commit));
    ASSERT_OK(Msg(s, Finalized(leases[0].lease())));
    v1::Job j = Get(id);
    EXPECT_NE(j.state(), v1::JOB_STATE_SUCCEEDED);
    EXPECT_EQ(j.error().reason(), v1::FAILURE_REASON_OUTPUT_ERROR);
    EXPECT_THAT(j.error().message(), HasSubstr(leases[0].output_path()));
    EXPECT_FALSE(j.has_result());
    fs::remove(fs::path(options_.output_root) / leases[0].output_path());
  }
  std::vector<v1::WorkerInfo> workers = sched_->ListWorkers();
  ASSERT_EQ(workers.size(), 1u);
  EXPECT_EQ(workers[0].state(), v1::WORKER_STATE_UNHEALTHY);
  EXPECT_EQ(workers[0].jobs_failed(), 3);
  EXPECT_EQ(workers[0].jobs_done(), 0);

  // An honest worker's result checks out.
  auto honest = std::make_shared<RecordingSink>();
  uint64_t h = Connect("honest", honest);
  auto leases = honest->TakeLeases();
  ASSERT_EQ(leases.size(), 1u);
  ASSERT_OK(Msg(h, Started(leases[0].lease())));
  ASSERT_OK(Msg(h, Commit(leases[0])));
  WriteResult(leases[0]);
  ASSERT_OK(Msg(h, Finalized(leases[0].lease())));
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(IdentityTest, ListWorkersShowsASubmitterOnlyItsOwnJobIds) {
  Open();
  ASSERT_OK_AND_ASSIGN(auto alice, SubmitAs("alice", Request("a")));
  ASSERT_OK_AND_ASSIGN(auto bob, SubmitAs("bob", Request("b")));
  auto sink = std::make_shared<RecordingSink>();
  Connect("w", sink, /*capacity=*/2);
  ASSERT_EQ(sink->TakeLeases().size(), 2u);
  auto ids = [&](const std::string& filter) {
    std::vector<v1::WorkerInfo> w = sched_->ListWorkers(filter);
    EXPECT_EQ(w.size(), 1u);
    return w.empty() ? std::vector<std::string>()
                     : std::vector<std::string>(w[0].current_job_ids().begin(),
                                                w[0].current_job_ids().end());
  };
  EXPECT_THAT(ids("alice"), ElementsAre(alice.job().job_id()));
  EXPECT_THAT(ids("bob"), ElementsAre(bob.job().job_id()));
  EXPECT_THAT(ids(""), ::testing::UnorderedElementsAre(alice.job().job_id(), bob.job().job_id()));
}

// ---------------------------------------------------------------- over gRPC, with tokens

const char kAlice[] = "alice-token-0123456789";
const char kBob[] = "bob-token-0123456789ab";
const char kAdmin[] = "admin-token-0123456789";
const char kGpuA[] = "gpu-a-token-0123456789";
const char kGpuB[] = "gpu-b-token-0123456789";

class IdentityServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("identity-" + std::to_string(getpid()));
    fs::create_directories(dir_);
    std::ofstream(dir_ / "tokens") << kAlice << " alice submitter\n"
                                   << kBob << " bob submitter\n"
                                   << kAdmin << " ops admin\n"
                                   << kGpuA << " gpu-a worker\n"
                                   << kGpuB << " gpu-b worker\n";
    ASSERT_OK_AND_ASSIGN(auto store, security::TokenStore::Open((dir_ / "tokens").string()));
    ServerOptions o;
    o.security.authorizer =
        std::make_shared<TokenAuthorizer>(std::shared_ptr<security::TokenStore>(std::move(store)));
    ASSERT_OK_AND_ASSIGN(farm_, TestScheduler::Start(o));
    jobs_ = v1::JobService::NewStub(farm_->channel());
    admin_ = v1::AdminService::NewStub(farm_->channel());
  }
  void TearDown() override {
    farm_.reset();
    fs::remove_all(dir_);
  }
  static std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token) {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    security::AddBearerToken(c.get(), token);
    return c;
  }
  std::string Submit(const std::string& token, const std::string& request_id) {
    v1::SubmitJobRequest r;
    r.set_request_id(request_id);
    r.mutable_spec()->set_prompt("a fox");
    r.mutable_spec()->set_steps(2);
    v1::SubmitJobResponse resp;
    grpc::Status s = jobs_->SubmitJob(Ctx(token).get(), r, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.job().job_id();
  }
  std::vector<std::string> JobIdsOnWorkers(const std::string& token) {
    v1::ListWorkersResponse resp;
    grpc::Status s = admin_->ListWorkers(Ctx(token).get(), {}, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    std::vector<std::string> out;
    for (const auto& w : resp.workers()) {
      out.insert(out.end(), w.current_job_ids().begin(), w.current_job_ids().end());
    }
    return out;
  }

  fs::path dir_;
  std::unique_ptr<TestScheduler> farm_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::AdminService::Stub> admin_;
};

TEST_F(IdentityServiceTest, TokensBindWorkerNamesRequestIdsAndWorkerListings) {
  FakeWorker::Options wo;
  wo.name = "gpu-host/0";
  wo.capacity = 2;
  wo.token = kGpuA;
  ASSERT_OK_AND_ASSIGN(auto a, FakeWorker::Connect(farm_->channel(), wo));
  // gpu-b's token cannot take over (or replace the session of) gpu-a's worker name.
  {
    auto stub = v1::WorkerService::NewStub(farm_->channel());
    auto ctx = Ctx(kGpuB);
    auto stream = stub->Connect(ctx.get());
    v1::WorkerMessage hello;
    hello.mutable_hello()->set_worker_name("gpu-host/0");
    hello.mutable_hello()->set_capacity(1);
    ASSERT_TRUE(stream->Write(hello));
    stream->WritesDone();
    v1::SchedulerMessage m;
    while (stream->Read(&m)) EXPECT_FALSE(m.has_welcome());
    grpc::Status end = stream->Finish();
    EXPECT_EQ(end.error_code(), grpc::StatusCode::PERMISSION_DENIED) << end.error_message();
    EXPECT_THAT(end.error_message(), HasSubstr("registered to another principal"));
  }
  const std::string alice_job = Submit(kAlice, "same-id");
  const std::string bob_job = Submit(kBob, "same-id");
  EXPECT_NE(alice_job, bob_job);
  ASSERT_OK(a->NextLease().status());
  ASSERT_OK(a->NextLease().status());
  EXPECT_THAT(JobIdsOnWorkers(kAlice), ElementsAre(alice_job));
  EXPECT_THAT(JobIdsOnWorkers(kBob), ElementsAre(bob_job));
  EXPECT_THAT(JobIdsOnWorkers(kAdmin), ::testing::UnorderedElementsAre(alice_job, bob_job));
}

}  // namespace
}  // namespace zfarm::scheduler
