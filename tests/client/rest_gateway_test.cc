// The REST gateway over a real in-process scheduler, with a raw HTTP/1.1
// client on loopback.
#include "scheduler/http/rest_gateway.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/fake_worker.h"
#include "tests/testing/raw_http.h"
#include "tests/testing/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::scheduler::http {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

using ::zfarm::testing::Http;
using ::zfarm::testing::HttpResponse;

class RestGatewayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto farm = testing::TestScheduler::Start();
    ASSERT_TRUE(farm.ok()) << farm.status();
    farm_ = *std::move(farm);
    auto gw = RestGateway::Start({}, farm_->channel());
    ASSERT_TRUE(gw.ok()) << gw.status();
    gw_ = *std::move(gw);
    ASSERT_GT(gw_->port(), 0);
  }
  std::unique_ptr<testing::TestScheduler> farm_;
  std::unique_ptr<RestGateway> gw_;
};

TEST_F(RestGatewayTest, SubmitGetListCancelRoundTrip) {
  const std::string body = R"({"request_id": "rest-1", "spec": {"prompt": "a fox",
      "width_px": 256, "height_px": 256, "steps": 2, "seed": "7",
      "labels": {"team": "web"}}})";
  HttpResponse r = Http(gw_->port(), "POST", "/v1/jobs", body);
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_THAT(r.headers, HasSubstr("application/json"));
  json j = json::parse(r.body);
  EXPECT_EQ(j["created"], true);
  const std::string id = j["job"]["job_id"];
  EXPECT_EQ(j["job"]["spec"]["seed"], "7");  // uint64 as a string (proto JSON)
  // Same request id again: 200 and the same job.
  HttpResponse again = Http(gw_->port(), "POST", "/v1/jobs", body);
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(json::parse(again.body)["job"]["job_id"], id);

  HttpResponse g = Http(gw_->port(), "GET", "/v1/jobs/" + id);
  ASSERT_EQ(g.status, 200) << g.body;
  EXPECT_EQ(json::parse(g.body)["state"], "JOB_STATE_QUEUED");

  HttpResponse l = Http(gw_->port(), "GET", "/v1/jobs?state=queued&label=team%3Dweb");
  ASSERT_EQ(l.status, 200) << l.body;
  ASSERT_EQ(json::parse(l.body)["jobs"].size(), 1u);

  HttpResponse c = Http(gw_->port(), "DELETE", "/v1/jobs/" + id);
  ASSERT_EQ(c.status, 200) << c.body;
  EXPECT_EQ(json::parse(c.body)["job_ids"][0], id);
  HttpResponse after = Http(gw_->port(), "GET", "/v1/jobs/" + id);
  EXPECT_EQ(json::parse(after.body)["state"], "JOB_STATE_CANCELLED");
}

TEST_F(RestGatewayTest, ImageIsServedAsPng) {
  auto worker = testing::FakeWorker::Connect(farm_->channel(), {});
  ASSERT_TRUE(worker.ok()) << worker.status();
  HttpResponse r = Http(gw_->port(), "POST", "/v1/jobs",
                        R"({"request_id": "img-1", "spec": {"prompt": "x",
                        "width_px": 256, "height_px": 256, "steps": 1}})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string id = json::parse(r.body)["job"]["job_id"];
  ASSERT_OK_AND_ASSIGN(zfarm::v1::Lease lease, (*worker)->NextLease());
  ASSERT_OK((*worker)->RunToSuccess(lease, farm_->output_root()));
  HttpResponse img;
  // The commit is acknowledged before the job turns SUCCEEDED in the journal;
  // poll the state (no timing assertion).
  for (int i = 0; i < 200; ++i) {
    HttpResponse g = Http(gw_->port(), "GET", "/v1/jobs/" + id);
    if (json::parse(g.body)["state"] == "JOB_STATE_SUCCEEDED") break;
    usleep(10000);
  }
  img = Http(gw_->port(), "GET", "/v1/jobs/" + id + "/image");
  ASSERT_EQ(img.status, 200) << img.body;
  EXPECT_THAT(img.headers, HasSubstr("image/png"));
  EXPECT_FALSE(img.body.empty());
}

TEST_F(RestGatewayTest, ErrorsAreJsonWithTheGrpcCode) {
  HttpResponse bad = Http(gw_->port(), "POST", "/v1/jobs",
                          R"({"request_id": "v1", "spec": {"prompt": "x", "width_px": 100}})");
  EXPECT_EQ(bad.status, 400);
  json b = json::parse(bad.body);
  EXPECT_EQ(b["code"], "INVALID_ARGUMENT");
  EXPECT_THAT(b["message"].get<std::string>(), HasSubstr("width"));

  HttpResponse garbage = Http(gw_->port(), "POST", "/v1/jobs", "{not json");
  EXPECT_EQ(garbage.status, 400);
  EXPECT_EQ(json::parse(garbage.body)["code"], "INVALID_ARGUMENT");

  HttpResponse unknown_field = Http(gw_->port(), "POST", "/v1/jobs", R"({"spec": {"promt": "x"}})");
  EXPECT_EQ(unknown_field.status, 400);

  HttpResponse missing = Http(gw_->port(), "GET", "/v1/jobs/no-such-job");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(json::parse(missing.body)["code"], "NOT_FOUND");

  HttpResponse state = Http(gw_->port(), "GET", "/v1/jobs?state=sleeping");
  EXPECT_EQ(state.status, 400);
  EXPECT_THAT(json::parse(state.body)["message"].get<std::string>(), HasSubstr("sleeping"));

  HttpResponse route = Http(gw_->port(), "GET", "/v1/jobs/a/b/c");
  EXPECT_EQ(route.status, 404);
  HttpResponse put = Http(gw_->port(), "PUT", "/v1/jobs");
  EXPECT_EQ(put.status, 405);
  EXPECT_THAT(put.headers, HasSubstr("Allow: GET, HEAD, POST"));
  EXPECT_EQ(json::parse(put.body)["code"], "INVALID_ARGUMENT");
}

// A submit refused for a full queue is 429 with the typed retry delay as Retry-After.
TEST(RestGatewayLimitsTest, AFullQueueIs429WithRetryAfter) {
  scheduler::ServerOptions so;
  so.scheduler.max_queued_jobs = 1;
  so.scheduler.retry_after = absl::Milliseconds(1500);
  auto farm = testing::TestScheduler::Start(so);
  ASSERT_TRUE(farm.ok()) << farm.status();
  auto gw = RestGateway::Start({}, (*farm)->channel());
  ASSERT_TRUE(gw.ok()) << gw.status();
  HttpResponse first = Http((*gw)->port(), "POST", "/v1/jobs",
                            R"({"request_id": "q1", "spec": {"prompt": "x"}})");
  ASSERT_EQ(first.status, 201) << first.body;
  EXPECT_EQ(first.Header("Retry-After"), "");
  HttpResponse full = Http((*gw)->port(), "POST", "/v1/jobs",
                           R"({"request_id": "q2", "spec": {"prompt": "y"}})");
  EXPECT_EQ(full.status, 429) << full.body;
  EXPECT_EQ(json::parse(full.body)["code"], "RESOURCE_EXHAUSTED");
  EXPECT_EQ(full.Header("Retry-After"), "2");  // 1.5 s, rounded up
  HttpResponse batch = Http((*gw)->port(), "POST", "/v1/batches",
                            R"({"jobs": [{"request_id": "q3", "spec": {"prompt": "z"}}]})");
  EXPECT_EQ(batch.status, 429) << batch.body;
  EXPECT_EQ(batch.Header("Retry-After"), "2");
}

TEST(HttpStatusTest, Mapping) {
  EXPECT_EQ(HttpStatusForCode(grpc::StatusCode::INVALID_ARGUMENT), 400);
  EXPECT_EQ(HttpStatusForCode(grpc::StatusCode::NOT_FOUND), 404);
  EXPECT_EQ(HttpStatusForCode(grpc::StatusCode::RESOURCE_EXHAUSTED), 429);
  EXPECT_EQ(HttpStatusForCode(grpc::StatusCode::UNAVAILABLE), 503);
  EXPECT_EQ(HttpStatusForCode(grpc::StatusCode::INTERNAL), 500);
}

}  // namespace
}  // namespace zfarm::scheduler::http
