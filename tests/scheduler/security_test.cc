// Security against a real scheduler over gRPC: bearer tokens and roles
// (UNAUTHENTICATED vs PERMISSION_DENIED, own jobs only, reload without restart),
// TLS and mutual TLS with certificates made by `openssl` at test time, fair share
// between principals, per-principal limits, message size, watchers, streams, and
// output-root confinement.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/contract/error_details.h"
#include "proto/contract/rpc_status.h"
#include "proto/security/auth.h"
#include "proto/security/paths.h"
#include "proto/security/tls.h"
#include "scheduler/server.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_certs.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler {
namespace {

namespace v1 = ::zfarm::v1;
using ::testing::HasSubstr;
using ::zfarm::contract::FromGrpcCall;
using ::zfarm::contract::RetryDelay;
using ::zfarm::testing::FakeClock;
using ::zfarm::testing::FakeWorker;
using ::zfarm::testing::StatusIs;
using ::zfarm::testing::TestScheduler;

const char kAlice[] = "alice-token-0123456789";
const char kBob[] = "bob-token-0123456789ab";
const char kAdmin[] = "admin-token-0123456789";
const char kWorker[] = "worker-token-012345678";

std::string TempDir(const std::string& tag) {
  std::string d =
      (std::filesystem::temp_directory_path() / absl::StrCat("zfarm-sec-", getpid(), "-", tag))
          .string();
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  security::AddBearerToken(c.get(), token);
  return c;
}

v1::SubmitJobRequest Req(const std::string& prompt) {
  v1::SubmitJobRequest r;
  r.mutable_spec()->set_prompt(prompt);
  r.mutable_spec()->set_steps(2);
  return r;
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    tokens_ = dir_ + "/tokens";
    std::ofstream(tokens_) << "# token principal role\n"
                           << kAlice << " alice submitter\n"
                           << kBob << " bob submitter\n"
                           << kAdmin << " ops admin\n"
                           << kWorker << " gpu-1 worker\n";
  }
  void TearDown() override {
    farm_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Start(ServerOptions o = {}, Clock* clock = Clock::Real()) {
    auto store = security::TokenStore::Open(tokens_);
    ASSERT_OK(store.status());
    store_ = std::shared_ptr<security::TokenStore>(*std::move(store));
    o.security.authorizer = std::make_shared<TokenAuthorizer>(store_);
    ASSERT_OK_AND_ASSIGN(farm_, TestScheduler::Start(o, clock));
    jobs_ = v1::JobService::NewStub(farm_->channel());
    admin_ = v1::AdminService::NewStub(farm_->channel());
  }
  grpc::Status Submit(const std::string& token, const std::string& prompt,
                      v1::SubmitJobResponse* resp, grpc::ClientContext* ctx = nullptr) {
    auto c = Ctx(token);
    return jobs_->SubmitJob(ctx ? ctx : c.get(), Req(prompt), resp);
  }
  grpc::Status Get(const std::string& token, const std::string& id, v1::Job* job) {
    v1::GetJobRequest r;
    r.set_job_id(id);
    return jobs_->GetJob(Ctx(token).get(), r, job);
  }

  std::string dir_, tokens_;
  std::shared_ptr<security::TokenStore> store_;
  std::unique_ptr<TestScheduler> farm_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::AdminService::Stub> admin_;
};

TEST_F(SecurityTest, MissingOrWrongTokenIsUnauthenticatedWrongRoleIsDenied) {
  Start();
  v1::SubmitJobResponse resp;
  grpc::Status s = Submit("", "x", &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(s.error_message(), HasSubstr("missing bearer token"));
  s = Submit("not-a-real-token-at-all", "x", &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(s.error_message(), ::testing::Not(HasSubstr("not-a-real-token")));
  s = Submit(kWorker, "x", &resp);  // a worker may not submit
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("role worker"));
  v1::DrainWorkerRequest dr;
  dr.set_worker_name("w1");
  v1::DrainWorkerResponse dresp;
  s = admin_->DrainWorker(Ctx(kAlice).get(), dr, &dresp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  s = admin_->DrainWorker(Ctx(kAdmin).get(), dr, &dresp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);  // allowed; no such worker
  v1::ResumeWorkerRequest rr;
  rr.set_worker_name("w1");
  v1::ResumeWorkerResponse rresp;
  s = admin_->ResumeWorker(Ctx(kAlice).get(), rr, &rresp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("ResumeWorker"));
  s = admin_->ResumeWorker(Ctx(kAdmin).get(), rr, &rresp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);  // allowed; no such worker
  // A submitter cannot connect as a worker; the worker token can.
  FakeWorker::Options wo;
  wo.name = "w1";
  EXPECT_FALSE(FakeWorker::Connect(farm_->channel(), wo, absl::Seconds(5)).ok());
}

TEST_F(SecurityTest, SubmitterSeesAndCancelsOnlyItsOwnJobsAdminEverything) {
  Start();
  v1::SubmitJobResponse a, b;
  ASSERT_TRUE(Submit(kAlice, "alice's", &a).ok());
  ASSERT_TRUE(Submit(kBob, "bob's", &b).ok());
  EXPECT_EQ(a.job().owner(), "alice");
  v1::Job j;
  EXPECT_TRUE(Get(kAlice, a.job().job_id(), &j).ok());
  EXPECT_EQ(Get(kBob, a.job().job_id(), &j).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(Get(kAdmin, a.job().job_id(), &j).ok());
  v1::ListJobsRequest lr;
  v1::ListJobsResponse list;
  ASSERT_TRUE(jobs_->ListJobs(Ctx(kBob).get(), lr, &list).ok());
  ASSERT_EQ(list.jobs_size(), 1);
  EXPECT_EQ(list.jobs(0).job_id(), b.job().job_id());
  ASSERT_TRUE(jobs_->ListJobs(Ctx(kAdmin).get(), lr, &list).ok());
  EXPECT_EQ(list.jobs_size(), 2);
  v1::CancelJobRequest cr;
  cr.set_job_id(a.job().job_id());
  v1::CancelJobResponse cresp;
  EXPECT_EQ(jobs_->CancelJob(Ctx(kBob).get(), cr, &cresp).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(Get(kAlice, a.job().job_id(), &j).ok());
  EXPECT_EQ(j.state(), v1::JOB_STATE_QUEUED);
  EXPECT_TRUE(jobs_->CancelJob(Ctx(kAdmin).get(), cr, &cresp).ok());
  v1::WatchJobRequest wr;
  wr.set_job_id(b.job().job_id());
  auto ctx = Ctx(kAlice);
  auto reader = jobs_->WatchJob(ctx.get(), wr);
  v1::JobEvent ev;
  EXPECT_FALSE(reader->Read(&ev));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(SecurityTest, TokenFileIsReloadedWithoutRestart) {
  Start();
  v1::SubmitJobResponse resp;
  const std::string carol = "carol-token-0123456789";
  EXPECT_EQ(Submit(carol, "x", &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // Rewrite atomically (temp + rename): carol added, bob removed.
  {
    std::ofstream(tokens_ + ".tmp") << carol << " carol submitter\n" << kAdmin << " ops admin\n";
    std::filesystem::rename(tokens_ + ".tmp", tokens_);
  }
  EXPECT_TRUE(Submit(carol, "x", &resp).ok());
  EXPECT_EQ(resp.job().owner(), "carol");
  EXPECT_EQ(Submit(kBob, "x", &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // A broken file keeps the previous table.
  {
    std::ofstream(tokens_ + ".tmp") << "short bad line\n";
    std::filesystem::rename(tokens_ + ".tmp", tokens_);
  }
  EXPECT_TRUE(Submit(carol, "y", &resp).ok());
}

TEST(TokenStoreTest, BadLinesNameTheLineNotTheToken) {
  std::string d = TempDir("tokenstore");
  std::ofstream(d + "/t") << "# c\n\n" << kAlice << " alice superuser\n";
  auto s = security::TokenStore::Open(d + "/t");
  EXPECT_THAT(s.status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 3")));
  EXPECT_THAT(std::string(s.status().message()), ::testing::Not(HasSubstr(kAlice)));
  std::ofstream(d + "/t") << "tooshort alice admin\n";
  EXPECT_THAT(security::TokenStore::Open(d + "/t").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("16..512")));
  std::ofstream(d + "/t") << kAlice << " a admin\n" << kAlice << " b admin\n";
  EXPECT_THAT(security::TokenStore::Open(d + "/t").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("duplicate")));
  std::filesystem::remove_all(d);
}

// ---------------------------------------------------------------- TLS

// A refused handshake is retried (wait_for_ready) until the timeout: the
// expected failures use a short one.
absl::Status Health(const std::string& addr, const security::TlsFlags& t,
                    absl::Duration timeout = absl::Seconds(10)) {
  auto creds = security::ClientCredentials(t);
  if (!creds.ok()) return creds.status();
  return ProbeHealth(addr, timeout, *creds);
}

TEST(TlsTest, ServerTlsAndMutualTls) {
  std::string d = TempDir("tls");
  ASSERT_OK(zfarm::testing::MakeTestCertificates(d));
  // Server TLS only.
  security::TlsFlags server{d + "/server.pem", d + "/server.key", ""};
  ServerOptions o;
  ASSERT_OK_AND_ASSIGN(auto creds, security::ServerCredentials(server));
  o.security.credentials = [creds] { return creds; };
  {
    ASSERT_OK_AND_ASSIGN(auto farm, TestScheduler::Start(o));
    EXPECT_OK(Health(farm->address(), {"", "", d + "/ca.pem"}));
    EXPECT_FALSE(Health(farm->address(), {}, absl::Milliseconds(700)).ok());  // plaintext
    EXPECT_FALSE(Health(farm->address(), {"", "", d + "/rogue.pem"}, absl::Milliseconds(700))
                     .ok());  // wrong CA
  }
  // Mutual TLS: a client certificate signed by the client CA is required.
  server.ca = d + "/ca.pem";
  ASSERT_OK_AND_ASSIGN(creds, security::ServerCredentials(server));
  o.security.credentials = [creds] { return creds; };
  ASSERT_OK_AND_ASSIGN(auto farm, TestScheduler::Start(o));
  EXPECT_OK(Health(farm->address(), {d + "/client.pem", d + "/client.key", d + "/ca.pem"}));
  EXPECT_FALSE(Health(farm->address(), {"", "", d + "/ca.pem"}, absl::Milliseconds(700))
                   .ok());  // no client cert
  EXPECT_FALSE(Health(farm->address(), {d + "/rogue.pem", d + "/rogue.key", d + "/ca.pem"},
                      absl::Milliseconds(700))
                   .ok());
  // Bad flags name the flag.
  EXPECT_THAT(security::ServerCredentials({d + "/server.pem", "", ""}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--tls-key")));
  EXPECT_THAT(security::ClientCredentials({"", "", d + "/missing.pem"}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--tls-ca")));
  std::filesystem::remove_all(d);
}

// ---------------------------------------------------------------- fair share, limits

TEST_F(SecurityTest, PrincipalsShareWorkersWithinAPriorityLevel) {
  FakeClock clock;
  ServerOptions o;
  o.tick_interval = absl::InfiniteDuration();
  Start(o, &clock);
  v1::SubmitJobResponse resp;
  for (int i = 0; i < 30; ++i) ASSERT_TRUE(Submit(kAlice, absl::StrCat("a", i), &resp).ok());
  clock.Advance(absl::Minutes(1));
  ASSERT_TRUE(Submit(kBob, "bob's only job", &resp).ok());
  const std::string bobs = resp.job().job_id();
  EXPECT_EQ(resp.job().queue_position(), 1);  // behind alice's first, not her 30th
  // Drive dispatch through the core with a worker sink (the Connect RPC needs a
  // worker token, which FakeWorker cannot send).
  class Sink : public WorkerSink {
   public:
    void Send(const v1::SchedulerMessage& m) override {
      absl::MutexLock l(&mu);
      for (const auto& a : m.assignment().leases()) ids.push_back(a.lease().job_id());
    }
    void Close(const absl::Status&) override {}
    absl::Mutex mu;
    std::vector<std::string> ids;
  };
  auto sink = std::make_shared<Sink>();
  v1::WorkerHello hello;
  hello.set_worker_name("w1");
  hello.set_capacity(2);
  hello.set_model("z-image-turbo");
  ASSERT_OK(farm_->scheduler()->WorkerHello(hello, sink).status());
  ASSERT_OK(farm_->scheduler()->Flush());
  absl::MutexLock l(&sink->mu);
  ASSERT_EQ(sink->ids.size(), 2u);
  EXPECT_EQ(sink->ids[1], bobs);
}

TEST_F(SecurityTest, PerPrincipalQueueAndRateLimitsNameTheLimit) {
  FakeClock clock;
  ServerOptions o;
  o.tick_interval = absl::InfiniteDuration();
  o.scheduler.max_queued_per_principal = 2;
  o.scheduler.submit_rate_per_principal = 1;
  o.scheduler.submit_burst_per_principal = 3;
  Start(o, &clock);
  v1::SubmitJobResponse resp;
  ASSERT_TRUE(Submit(kAlice, "1", &resp).ok());
  ASSERT_TRUE(Submit(kAlice, "2", &resp).ok());
  grpc::ClientContext* ctx;
  auto c = Ctx(kAlice);
  ctx = c.get();
  grpc::Status s = Submit(kAlice, "3", &resp, ctx);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("--max-queued-per-principal=2"));
  EXPECT_EQ(ctx->GetServerTrailingMetadata().count("retry-after-ms"), 1u);
  EXPECT_TRUE(Submit(kBob, "bob is not limited by alice", &resp).ok());
  // Rate: bob's burst is 3; his 1st used one token.
  EXPECT_TRUE(Submit(kBob, "b2", &resp).ok());
  v1::CancelJobRequest cr;
  cr.set_job_id(resp.job().job_id());
  v1::CancelJobResponse cresp;
  ASSERT_TRUE(jobs_->CancelJob(Ctx(kBob).get(), cr, &cresp).ok());
  EXPECT_TRUE(Submit(kBob, "b3", &resp).ok());
  cr.set_job_id(resp.job().job_id());
  ASSERT_TRUE(jobs_->CancelJob(Ctx(kBob).get(), cr, &cresp).ok());
  auto c2 = Ctx(kBob);
  s = Submit(kBob, "b4", &resp, c2.get());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("--submit-rate-per-principal=1"));
  auto hint = c2->GetServerTrailingMetadata().find("retry-after-ms");
  ASSERT_NE(hint, c2->GetServerTrailingMetadata().end());
  EXPECT_EQ(std::string(hint->second.data(), hint->second.size()), "1000");
  clock.Advance(absl::Seconds(1));  // one token back
  EXPECT_TRUE(Submit(kBob, "b5", &resp).ok());
}

TEST_F(SecurityTest, MessageSizeWatchersAndStreamsAreLimited) {
  ServerOptions o;
  o.max_message_bytes = 64 << 10;
  o.max_streams_per_client = 2;
  o.scheduler.max_watchers_per_job = 1;
  Start(o);
  v1::SubmitJobResponse resp;
  grpc::Status s = Submit(kAlice, std::string(100 << 10, 'x'), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_TRUE(Submit(kAlice, "a", &resp).ok());
  const std::string id = resp.job().job_id();
  v1::WatchJobRequest wr;
  wr.set_job_id(id);
  auto c1 = Ctx(kAlice);
  auto r1 = jobs_->WatchJob(c1.get(), wr);
  v1::JobEvent ev;
  ASSERT_TRUE(r1->Read(&ev));  // snapshot: subscribed
  auto c2 = Ctx(kAlice);
  auto r2 = jobs_->WatchJob(c2.get(), wr);
  EXPECT_FALSE(r2->Read(&ev));
  s = r2->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("--max-watchers-per-job=1"));
  EXPECT_EQ(RetryDelay(FromGrpcCall(s, *c2)), absl::Seconds(1));  // --retry-after's default
  // Streams per client: alice has 1 open; a 2nd on another job is fine, a 3rd not.
  ASSERT_TRUE(Submit(kAlice, "b", &resp).ok());
  ASSERT_TRUE(Submit(kAlice, "c", &resp).ok());
  wr.set_job_id(resp.job().job_id());
  auto c3 = Ctx(kAlice);
  auto r3 = jobs_->WatchJob(c3.get(), wr);
  ASSERT_TRUE(r3->Read(&ev));
  v1::WatchJobsRequest wjr;
  wjr.set_label("none=none");
  auto c4 = Ctx(kAlice);
  auto r4 = jobs_->WatchJobs(c4.get(), wjr);
  EXPECT_FALSE(r4->Read(&ev));
  s = r4->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("--max-streams-per-client=2"));
  EXPECT_EQ(RetryDelay(FromGrpcCall(s, *c4)), absl::Seconds(1));
  c1->TryCancel();
  c3->TryCancel();
  r1->Finish();
  r3->Finish();
}

// ---------------------------------------------------------------- output confinement

TEST(ConfinementTest, AbsoluteDotDotAndSymlinksOutOfTheRootAreRefused) {
  Limits l;
  v1::JobSpec spec;
  spec.set_prompt("x");
  spec.set_output_name("/etc/passwd");
  EXPECT_THAT(ValidateAndNormalizeSpec(l, "spec", &spec),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("spec.output_name")));
  spec.set_output_name("..");
  EXPECT_THAT(ValidateAndNormalizeSpec(l, "spec", &spec),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"..\"")));
  std::string d = TempDir("confine");
  std::filesystem::create_directories(d + "/root/2026-11-28");
  std::filesystem::create_directories(d + "/outside");
  std::ofstream(d + "/outside/secret.png") << "secret";
  std::ofstream(d + "/root/2026-11-28/ok.png") << "png";
  std::filesystem::create_symlink(d + "/outside/secret.png", d + "/root/2026-11-28/evil.png");
  std::filesystem::create_symlink(d + "/outside", d + "/root/2026-11-29");
  EXPECT_OK(security::ResolveBeneath(d + "/root", "2026-11-28/ok.png").status());
  EXPECT_THAT(security::ResolveBeneath(d + "/root", "2026-11-28/evil.png").status(),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("outside")));
  EXPECT_THAT(security::ResolveBeneath(d + "/root", "2026-11-29/secret.png").status(),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("outside")));
  EXPECT_THAT(security::ResolveBeneath(d + "/root", "/etc/passwd").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("output path")));
  EXPECT_THAT(security::ResolveBeneath(d + "/root", "2026-11-28/../../outside/secret.png").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("output path")));
  std::filesystem::remove_all(d);
}

}  // namespace
}  // namespace zfarm::scheduler
