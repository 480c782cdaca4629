// Webhooks wired into the scheduler: a URL off the allow-list is refused at
// submit, every final state (SUCCEEDED, FAILED, CANCELLED) is POSTed once,
// signed, to a loopback receiver, and only after the transition is durable.
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "scheduler/http/webhook_sender.h"
#include "scheduler/server.h"
#include "tests/scheduler/http_test_util.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler {
namespace {

namespace v1 = ::zfarm::v1;
using ::testing::HasSubstr;
using ::zfarm::testing::FakeWorker;
using ::zfarm::testing::HttpMessage;
using ::zfarm::testing::HttpReceiver;
using ::zfarm::testing::TestScheduler;

FakeWorker::Options WorkerOptions() {
  FakeWorker::Options o;
  o.name = "w1";
  return o;
}

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return c;
}

class WebhookDeliveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    http::WebhookSender::Options wo;
    wo.allow = {absl::StrCat("127.0.0.1:", receiver_.port())};
    wo.secret = "k3y";
    wo.initial_backoff = absl::Milliseconds(10);
    ASSERT_OK_AND_ASSIGN(sender_, http::WebhookSender::Create(wo));
    ServerOptions o;
    o.scheduler.limits.webhook_validator = [s = sender_.get()](const std::string& url) {
      return s->Validate(url);
    };
    o.scheduler.on_final = [this](const v1::Job& job) {
      // Durability contract: the final state is already in the journal.
      absl::MutexLock lock(&mu_);
      final_seen_.push_back(job.job_id());
      sender_->Enqueue(job);
    };
    ASSERT_OK_AND_ASSIGN(farm_, TestScheduler::Start(o));
    jobs_ = v1::JobService::NewStub(farm_->channel());
  }
  void TearDown() override {
    farm_.reset();
    sender_.reset();
  }
  grpc::Status Submit(const std::string& url, v1::SubmitJobResponse* resp) {
    v1::SubmitJobRequest r;
    r.mutable_spec()->set_prompt("a lighthouse");
    r.mutable_spec()->set_steps(2);
    r.mutable_spec()->set_webhook_url(url);
    return jobs_->SubmitJob(Ctx().get(), r, resp);
  }
  std::string Url(const std::string& path = "/hook") {
    return absl::StrCat("http://127.0.0.1:", receiver_.port(), path);
  }

  HttpReceiver receiver_;
  std::unique_ptr<http::WebhookSender> sender_;
  std::unique_ptr<TestScheduler> farm_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  absl::Mutex mu_;
  std::vector<std::string> final_seen_ ABSL_GUARDED_BY(mu_);
};

TEST_F(WebhookDeliveryTest, OffListUrlIsRefusedAtSubmit) {
  v1::SubmitJobResponse resp;
  grpc::Status s = Submit("http://127.0.0.1:1/hook", &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("spec.webhook_url"));
  EXPECT_THAT(s.error_message(), HasSubstr("--webhook-allow"));
  s = Submit("https://127.0.0.1/hook", &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("http://"));
  EXPECT_EQ(farm_->scheduler()->QueuedJobs(), 0);
}

TEST_F(WebhookDeliveryTest, SucceededJobIsPostedSignedAfterCommit) {
  v1::SubmitJobResponse resp;
  ASSERT_TRUE(Submit(Url(), &resp).ok());
  ASSERT_OK_AND_ASSIGN(auto w, FakeWorker::Connect(farm_->channel(), WorkerOptions()));
  ASSERT_OK_AND_ASSIGN(v1::Lease lease, w->NextLease());
  EXPECT_EQ(receiver_.requests().size(), 0u);  // nothing before the final state
  ASSERT_OK(w->RunToSuccess(lease, farm_->output_root()));
  ASSERT_TRUE(receiver_.WaitFor(1, absl::Seconds(10)));
  sender_->Flush();
  std::vector<HttpMessage> got = receiver_.requests();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].request_line, "POST /hook HTTP/1.1");
  EXPECT_EQ(got[0].headers["x-zfarm-job"], resp.job().job_id());
  EXPECT_EQ(got[0].headers["x-zfarm-signature"],
            "sha256=" + http::HmacSha256Hex("k3y", got[0].body));
  EXPECT_NE(got[0].headers["x-zfarm-signature"],
            "sha256=" + http::HmacSha256Hex("wrong", got[0].body));
  auto body = nlohmann::json::parse(got[0].body);
  EXPECT_EQ(body["job_id"], resp.job().job_id());
  EXPECT_EQ(body["state"], "JOB_STATE_SUCCEEDED");
  EXPECT_FALSE(body["result"]["path"].get<std::string>().empty());
}

TEST_F(WebhookDeliveryTest, FailedAndCancelledAreEachPostedOnce) {
  v1::SubmitJobResponse a, b, c;
  ASSERT_TRUE(Submit(Url("/a"), &a).ok());
  ASSERT_TRUE(Submit(Url("/b"), &b).ok());
  ASSERT_TRUE(Submit("", &c).ok());  // no URL: nothing sent
  v1::CancelJobRequest cr;
  cr.set_job_id(b.job().job_id());
  v1::CancelJobResponse cresp;
  ASSERT_TRUE(jobs_->CancelJob(Ctx().get(), cr, &cresp).ok());
  ASSERT_OK_AND_ASSIGN(auto w, FakeWorker::Connect(farm_->channel(), WorkerOptions()));
  ASSERT_OK_AND_ASSIGN(v1::Lease lease, w->NextLease());
  ASSERT_EQ(lease.lease().job_id(), a.job().job_id());
  ASSERT_OK(w->Started(lease.lease()));
  ASSERT_OK(w->Fail(lease.lease(), v1::FAILURE_REASON_INVALID_REQUEST, false, "bad"));
  ASSERT_TRUE(receiver_.WaitFor(2, absl::Seconds(10)));
  ASSERT_OK_AND_ASSIGN(v1::Lease lease_c, w->NextLease());
  ASSERT_OK(w->RunToSuccess(lease_c, farm_->output_root()));
  // Wait until the scheduler has seen Finalized (polls state, asserts no timing).
  for (int i = 0; i < 1000; ++i) {
    v1::GetJobRequest gr;
    gr.set_job_id(c.job().job_id());
    v1::Job j;
    ASSERT_TRUE(jobs_->GetJob(Ctx().get(), gr, &j).ok());
    if (j.state() == v1::JOB_STATE_SUCCEEDED) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  sender_->Flush();
  std::map<std::string, std::string> state_by_path;
  for (auto& m : receiver_.requests()) {
    state_by_path[m.request_line] = nlohmann::json::parse(m.body)["state"];
  }
  EXPECT_EQ(state_by_path.size(), 2u);
  EXPECT_EQ(state_by_path["POST /a HTTP/1.1"], "JOB_STATE_FAILED");
  EXPECT_EQ(state_by_path["POST /b HTTP/1.1"], "JOB_STATE_CANCELLED");
  EXPECT_EQ(receiver_.requests().size(), 2u);
  absl::MutexLock lock(&mu_);
  EXPECT_EQ(final_seen_.size(), 3u);  // the hook sees every final job; only 2 had a URL
}

TEST(WebhookValidation, EmptyAllowListKeepsTheOldMessage) {
  Limits l;
  v1::JobSpec spec;
  spec.set_prompt("x");
  spec.set_webhook_url("http://127.0.0.1:8080/x");
  absl::Status s = ValidateAndNormalizeSpec(l, "spec", &spec);
  EXPECT_THAT(s, ::zfarm::testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                            HasSubstr("allow-list is empty")));
}

TEST(WebhookValidation, PrefixEntriesMatchPathAndHost) {
  std::vector<std::string> allow = {"http://hooks.intranet:8080/zfarm/", "ci.intranet"};
  EXPECT_OK(http::ValidateWebhookUrl("http://hooks.intranet:8080/zfarm/done", allow));
  EXPECT_OK(http::ValidateWebhookUrl("http://CI.intranet/x", allow));
  EXPECT_FALSE(http::ValidateWebhookUrl("http://hooks.intranet:8080/other", allow).ok());
  EXPECT_FALSE(http::ValidateWebhookUrl("http://hooks.intranet:8081/zfarm/", allow).ok());
  EXPECT_FALSE(http::ValidateWebhookUrl("http://ci.intranet:8080/x", allow).ok());
}

}  // namespace
}  // namespace zfarm::scheduler
