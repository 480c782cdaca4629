// The scheduler's HTTP port over a real in-process scheduler and fake
// workers, with a raw HTTP/1.1 client: the native REST routes (health,
// batches, workers, drain, event streams), the OpenAI images API's input
// checks and errors, and the OpenAPI document (checked by an npm validator
// and against the routes the router serves).
#include <png.h>

#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "scheduler/http/openai_api.h"
#include "scheduler/http/rest_gateway.h"
#include "scheduler/http/thumbnail.h"
#include "worker/io/jpeg.h"
#include "worker/io/png.h"
#include "worker/io/webp.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/raw_http.h"
#include "tests/testing/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"

namespace zfarm::scheduler::http {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::zfarm::testing::Http;
using ::zfarm::testing::HttpResponse;
using ::zfarm::testing::RawConn;
using json = nlohmann::json;

class WebRestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto farm = testing::TestScheduler::Start();
    ASSERT_TRUE(farm.ok()) << farm.status();
    farm_ = *std::move(farm);
    auto gw = RestGateway::Start({}, farm_->channel());
    ASSERT_TRUE(gw.ok()) << gw.status();
    gw_ = *std::move(gw);
  }
  int port() const { return gw_->port(); }
  std::string SubmitOne(const std::string& request_id) {
    HttpResponse r = Http(port(), "POST", "/v1/jobs",
                          absl::StrCat(R"({"request_id": ")", request_id,
                                       R"(", "spec": {"prompt": "x", "width_px": 256,
                                       "height_px": 256, "steps": 2}})"));
    EXPECT_EQ(r.status, 201) << r.body;
    return json::parse(r.body)["job"]["job_id"];
  }
  std::unique_ptr<testing::TestScheduler> farm_;
  std::unique_ptr<RestGateway> gw_;
};

// The "event:" names and "data:" JSON of an SSE body.
std::vector<std::pair<std::string, json>> ParseEvents(const std::string& body) {
  std::vector<std::pair<std::string, json>> out;
  for (absl::string_view block : absl::StrSplit(body, "\n\n", absl::SkipEmpty())) {
    std::string event, data;
    for (absl::string_view line : absl::StrSplit(block, '\n')) {
      if (absl::ConsumePrefix(&line, "event: ")) event = std::string(line);
      if (absl::ConsumePrefix(&line, "data: ")) absl::StrAppend(&data, line);
    }
    if (!event.empty()) out.emplace_back(event, json::parse(data, nullptr, false));
  }
  return out;
}

TEST_F(WebRestTest, HealthReadyAndUnknownRoutes) {
  HttpResponse h = Http(port(), "GET", "/healthz");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(json::parse(h.body)["status"], "ok");
  HttpResponse r = Http(port(), "GET", "/readyz");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["status"], "ready");

  HttpResponse missing = Http(port(), "GET", "/v2/nothing");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(json::parse(missing.body)["code"], "NOT_FOUND");
  HttpResponse put = Http(port(), "PUT", "/v1/workers");
  EXPECT_EQ(put.status, 405);
  EXPECT_EQ(put.Header("Allow"), "GET, HEAD");
  HttpResponse get_gen = Http(port(), "GET", "/v1/images/generations");
  EXPECT_EQ(get_gen.status, 405);
  EXPECT_EQ(get_gen.Header("Allow"), "POST");
}

TEST_F(WebRestTest, ReadyzIs503WhenTheSchedulerStopsServing) {
  farm_->server()->Shutdown(absl::Milliseconds(100));
  HttpResponse r = Http(port(), "GET", "/readyz");
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_EQ(json::parse(r.body)["code"], "UNAVAILABLE");
  EXPECT_EQ(Http(port(), "GET", "/healthz").status, 200);
}

TEST_F(WebRestTest, BatchSubmitIsIdempotentAndRefusesUnknownFields) {
  const std::string body = R"({"batch_id": "web-b1", "jobs": [
      {"request_id": "b1-0", "spec": {"prompt": "a", "width_px": 256, "height_px": 256}},
      {"request_id": "b1-1", "spec": {"prompt": "b", "width_px": 256, "height_px": 256}}]})";
  HttpResponse r = Http(port(), "POST", "/v1/batches", body);
  ASSERT_EQ(r.status, 201) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["batch_id"], "web-b1");
  ASSERT_EQ(j["jobs"].size(), 2u);
  HttpResponse again = Http(port(), "POST", "/v1/batches", body);
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(json::parse(again.body)["jobs"][1]["job"]["job_id"], j["jobs"][1]["job"]["job_id"]);
  HttpResponse listed = Http(port(), "GET", "/v1/jobs?batch=web-b1");
  EXPECT_EQ(json::parse(listed.body)["jobs"].size(), 2u);

  HttpResponse unknown = Http(port(), "POST", "/v1/batches", R"({"jobz": []})");
  EXPECT_EQ(unknown.status, 400);
  EXPECT_THAT(json::parse(unknown.body)["message"].get<std::string>(), HasSubstr("jobz"));
  HttpResponse too_big = Http(port(), "POST", "/v1/batches",
                              R"({"jobs": [{"spec": {"prompt": "a", "width_px": 100}}]})");
  EXPECT_EQ(too_big.status, 400);
  EXPECT_THAT(json::parse(too_big.body)["message"].get<std::string>(),
              HasSubstr("jobs[0].spec.width_px"));
  HttpResponse form = Http(port(), "POST", "/v1/batches", body, "Content-Type: text/plain\r\n");
  EXPECT_EQ(form.status, 415);
}

TEST_F(WebRestTest, WorkersListDrainAndUndrain) {
  testing::FakeWorker::Options wo;
  wo.name = "gpu-node/cuda:0";
  ASSERT_OK_AND_ASSIGN(auto worker, testing::FakeWorker::Connect(farm_->channel(), wo));
  HttpResponse l = Http(port(), "GET", "/v1/workers");
  ASSERT_EQ(l.status, 200) << l.body;
  json w = json::parse(l.body)["workers"];
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0]["worker_name"], "gpu-node/cuda:0");
  EXPECT_EQ(w[0]["state"], "WORKER_STATE_READY");

  // The name has '/' and ':': percent-encoded in the path.
  HttpResponse d = Http(port(), "POST", "/v1/workers/gpu-node%2Fcuda%3A0:drain");
  ASSERT_EQ(d.status, 200) << d.body;
  EXPECT_EQ(json::parse(d.body)["worker"]["state"], "WORKER_STATE_DRAINING");
  EXPECT_EQ(json::parse(d.body)["changed"], true);
  l = Http(port(), "GET", "/v1/workers");
  EXPECT_EQ(json::parse(l.body)["workers"][0]["state"], "WORKER_STATE_DRAINING");

  HttpResponse u = Http(port(), "POST", "/v1/workers/gpu-node%2Fcuda%3A0:undrain");
  ASSERT_EQ(u.status, 200) << u.body;
  EXPECT_EQ(json::parse(u.body)["worker"]["state"], "WORKER_STATE_READY");
  l = Http(port(), "GET", "/v1/workers");
  EXPECT_EQ(json::parse(l.body)["workers"][0]["state"], "WORKER_STATE_READY");

  HttpResponse none = Http(port(), "POST", "/v1/workers/nobody:drain");
  EXPECT_EQ(none.status, 404) << none.body;
  EXPECT_EQ(json::parse(none.body)["code"], "NOT_FOUND");
}

TEST_F(WebRestTest, JobEventsStreamTheWatchUntilFinal) {
  ASSERT_OK_AND_ASSIGN(auto worker, testing::FakeWorker::Connect(farm_->channel(), {}));
  const std::string id = SubmitOne("ev-1");
  RawConn c(port());
  ASSERT_TRUE(c.Send(absl::StrCat("GET /v1/jobs/", id,
                                  "/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")));
  ASSERT_TRUE(c.ReadUntil("event: snapshot")) << c.buffer();
  ASSERT_OK_AND_ASSIGN(zfarm::v1::Lease lease, worker->NextLease());
  ASSERT_OK(worker->RunToSuccess(lease, farm_->output_root()));
  HttpResponse r = c.ReadResponse();  // ends when the job is final
  ASSERT_EQ(r.status, 200) << r.headers;
  EXPECT_THAT(r.Header("Content-Type"), HasSubstr("text/event-stream"));
  auto events = ParseEvents(r.body);
  ASSERT_GE(events.size(), 3u) << r.body;
  EXPECT_EQ(events.front().first, "snapshot");
  std::set<std::string> names;
  for (const auto& [name, data] : events) {
    names.insert(name);
    ASSERT_FALSE(data.is_discarded()) << r.body;
    EXPECT_EQ(data["job"]["job_id"], id);
  }
  EXPECT_TRUE(names.count("progress")) << r.body;
  EXPECT_TRUE(names.count("state_changed")) << r.body;
  EXPECT_EQ(events.back().second["job"]["state"], "JOB_STATE_SUCCEEDED") << r.body;
  EXPECT_EQ(events.back().second["type"], "JOB_EVENT_TYPE_STATE_CHANGED");
}

TEST_F(WebRestTest, BatchEventsCoverEveryJob) {
  ASSERT_OK_AND_ASSIGN(auto worker, testing::FakeWorker::Connect(farm_->channel(), {}));
  HttpResponse s = Http(port(), "POST", "/v1/batches",
                        R"({"batch_id": "ev-b", "jobs": [
      {"spec": {"prompt": "a", "width_px": 256, "height_px": 256, "steps": 1}},
      {"spec": {"prompt": "b", "width_px": 256, "height_px": 256, "steps": 1}}]})");
  ASSERT_EQ(s.status, 201) << s.body;
  RawConn c(port());
  ASSERT_TRUE(c.Send("GET /v1/batches/ev-b/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  ASSERT_TRUE(c.ReadUntil("event: snapshot")) << c.buffer();
  for (int i = 0; i < 2; ++i) {
    ASSERT_OK_AND_ASSIGN(zfarm::v1::Lease lease, worker->NextLease());
    ASSERT_OK(worker->RunToSuccess(lease, farm_->output_root()));
  }
  HttpResponse r = c.ReadResponse();
  ASSERT_EQ(r.status, 200);
  std::set<std::string> succeeded;
  for (const auto& [name, data] : ParseEvents(r.body)) {
    if (data["job"]["state"] == "JOB_STATE_SUCCEEDED") succeeded.insert(data["job"]["job_id"]);
  }
  EXPECT_EQ(succeeded.size(), 2u) << r.body;
}

TEST_F(WebRestTest, EventsOfAnUnknownJobAre404Json) {
  HttpResponse r = Http(port(), "GET", "/v1/jobs/j-nope/events");
  EXPECT_EQ(r.status, 404) << r.body;
  EXPECT_EQ(json::parse(r.body)["code"], "NOT_FOUND");
}

TEST_F(WebRestTest, OpenAiErrorsNameTheParameterAndTheLimit) {
  struct Case {
    std::string body;
    std::string param;
    std::string text;
  };
  const std::vector<Case> cases = {
      {R"({"prompt": "x", "n": 11})", "n", "11 is outside [1, 10]"},
      {R"({"prompt": "x", "n": 0})", "n", "0 is outside [1, 10]"},
      {R"({"prompt": "x", "size": "big"})", "size", "is not WIDTHxHEIGHT"},
      {R"({"prompt": "x", "size": "100x256"})", "size", "multiples of 16 in [256, 2048]"},
      {R"({"prompt": "x", "output_format": "gif"})", "output_format", "png, jpeg, webp"},
      {R"({"prompt": "x", "output_format": "jpeg", "output_compression": 0})",
       "output_compression", "0 is outside [1, 100]"},
      {R"({"prompt": "x", "output_compression": 50})", "output_compression", "not png"},
      {R"({"prompt": "x", "steps": 99})", "steps", "outside [1, 50]"},
      {R"({"prompt": "x", "response_format": "jpeg"})", "response_format", "b64_json, url"},
      {R"({"prompt": "x", "style": "vivid"})", "style", "unknown parameter"},
      {R"({"n": 1})", "prompt", "is required"},
      {R"({"prompt": ""})", "prompt", "must not be empty"},
      {R"([1, 2])", "body", "JSON object"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    HttpResponse r = Http(port(), "POST", "/v1/images/generations", c.body);
    EXPECT_EQ(r.status, 400) << r.body;
    json e = json::parse(r.body, nullptr, false);
    ASSERT_TRUE(e.contains("error")) << r.body;
    EXPECT_EQ(e["error"]["param"], c.param);
    EXPECT_EQ(e["error"]["type"], "invalid_request_error");
    EXPECT_THAT(e["error"]["message"].get<std::string>(), HasSubstr(c.text));
  }
  // Nothing was queued by any of them.
  EXPECT_EQ(json::parse(Http(port(), "GET", "/v1/jobs").body)["jobs"].size(), 0u);
}

TEST_F(WebRestTest, ModelsListsWhatConnectedWorkersHold) {
  HttpResponse empty = Http(port(), "GET", "/v1/models");
  ASSERT_EQ(empty.status, 200) << empty.body;
  EXPECT_EQ(json::parse(empty.body)["data"].size(), 0u);
  testing::FakeWorker::Options a, b;
  a.name = "a";
  a.model = "z-image-turbo";
  b.name = "b";
  b.model = "z-image-turbo";
  ASSERT_OK_AND_ASSIGN(auto wa, testing::FakeWorker::Connect(farm_->channel(), a));
  ASSERT_OK_AND_ASSIGN(auto wb, testing::FakeWorker::Connect(farm_->channel(), b));
  json m = json::parse(Http(port(), "GET", "/v1/models").body);
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "z-image-turbo");
  EXPECT_EQ(m["data"][0]["object"], "model");
}

TEST(ParseImagesRequestTest, BatchSeedsAndIdempotencyKeys) {
  const std::string key = "k-1";
  ASSERT_OK_AND_ASSIGN(
      ImagesRequest r,
      ParseImagesRequest(R"({"prompt": "p", "n": 3, "size": "512x768", "seed": 40,
                             "response_format": "url", "output_format": "webp",
                             "output_compression": 80, "negative_prompt": "n",
                             "guidance": 1.5, "steps": 4, "user": "u", "quality": "hd"})",
                         &key));
  ASSERT_EQ(r.batch.jobs_size(), 3);
  EXPECT_TRUE(r.want_url);
  for (int i = 0; i < 3; ++i) {
    const auto& j = r.batch.jobs(i);
    EXPECT_EQ(j.request_id(), absl::StrCat("k-1/", i));
    EXPECT_EQ(j.spec().seed(), static_cast<uint64_t>(40 + i));
    EXPECT_EQ(j.spec().width_px(), 512);
    EXPECT_EQ(j.spec().height_px(), 768);
    EXPECT_EQ(j.spec().output_format(), zfarm::v1::OUTPUT_FORMAT_WEBP);
    EXPECT_EQ(j.spec().quality(), 80);
    EXPECT_EQ(j.spec().steps(), 4);
    EXPECT_FLOAT_EQ(j.spec().guidance_scale(), 1.5f);
    EXPECT_EQ(j.spec().negative_prompt(), "n");
  }
  ASSERT_OK_AND_ASSIGN(ImagesRequest plain, ParseImagesRequest(R"({"prompt": "p"})", nullptr));
  ASSERT_EQ(plain.batch.jobs_size(), 1);
  EXPECT_FALSE(plain.batch.jobs(0).spec().has_seed());
  EXPECT_TRUE(plain.batch.jobs(0).request_id().empty());
  EXPECT_EQ(plain.batch.jobs(0).spec().width_px(), 0);  // "auto": the scheduler's default
  EXPECT_FALSE(plain.want_url);
  const std::string long_key(201, 'k');
  EXPECT_THAT(ParseImagesRequest(R"({"prompt": "p"})", &long_key).status().message(),
              HasSubstr("Idempotency-Key: must be 1..200 bytes"));
}

TEST(OpenAiErrorTest, GrpcFieldsMapToParameters) {
  zfarm::http::Response r = OpenAiErrorFromGrpc(
      grpc::StatusCode::INVALID_ARGUMENT,
      "jobs[0].spec.width_px: 100 is outside the allowed sizes (multiples of 16 in [256, 2048])");
  EXPECT_EQ(r.status, 400);
  json e = json::parse(r.body)["error"];
  EXPECT_EQ(e["param"], "size");
  EXPECT_EQ(e["message"], "size: width_px 100 is outside the allowed sizes (multiples of 16 in "
                          "[256, 2048])");
  zfarm::http::Response q = OpenAiErrorFromGrpc(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full");
  EXPECT_EQ(q.status, 429);
  EXPECT_EQ(json::parse(q.body)["error"]["type"], "rate_limit_error");
  EXPECT_TRUE(json::parse(q.body)["error"]["param"].is_null());
}

// A w x h RGB PNG with a horizontal ramp in red and the key/value as tEXt.
std::string TestPng(int w, int h, const std::string& key = "", const std::string& value = "") {
  std::vector<unsigned char> px(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      unsigned char* p = &px[(static_cast<size_t>(y) * w + x) * 3];
      p[0] = static_cast<unsigned char>(x * 255 / (w - 1));
      p[1] = 100;
      p[2] = static_cast<unsigned char>(y % 2 ? 0 : 200);
    }
  }
  png_image img;
  std::memset(&img, 0, sizeof(img));
  img.version = PNG_IMAGE_VERSION;
  img.width = w;
  img.height = h;
  img.format = PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  png_image_write_to_memory(&img, nullptr, &size, 0, px.data(), 0, nullptr);
  std::string out(size, '\0');
  png_image_write_to_memory(&img, out.data(), &size, 0, px.data(), 0, nullptr);
  out.resize(size);
  if (!key.empty()) {
    // Insert a tEXt chunk after IHDR (8 + 25 bytes); its CRC is not checked by the reader.
    std::string data = key + '\0' + value;
    std::string chunk;
    for (int s = 24; s >= 0; s -= 8) chunk += static_cast<char>((data.size() >> s) & 0xff);
    chunk += "tEXt" + data + std::string(4, '\0');
    out.insert(33, chunk);
  }
  return out;
}

TEST(ThumbnailTest, ScalesTheLongerSideTo256AndAveragesPixels) {
  ASSERT_OK_AND_ASSIGN(std::string small, MakeThumbnail(TestPng(1024, 512), 256));
  png_image img;
  std::memset(&img, 0, sizeof(img));
  img.version = PNG_IMAGE_VERSION;
  ASSERT_TRUE(png_image_begin_read_from_memory(&img, small.data(), small.size()));
  EXPECT_EQ(img.width, 256u);
  EXPECT_EQ(img.height, 128u);
  img.format = PNG_FORMAT_RGB;
  std::vector<unsigned char> px(PNG_IMAGE_SIZE(img));
  ASSERT_TRUE(png_image_finish_read(&img, nullptr, px.data(), 0, nullptr));
  // Blue alternates 200/0 by row: 4 source rows per target row average to 100.
  EXPECT_NEAR(px[2], 100, 1);
  EXPECT_EQ(px[1], 100);
  EXPECT_LT(px[0], px[(255) * 3]);  // the red ramp survives
  EXPECT_FALSE(MakeThumbnail("not a png", 256).ok());
}

TEST(ThumbnailTest, JpegAndWebpResultsGetPngThumbnails) {
  std::vector<uint8_t> rgb(640 * 320 * 3, 180);
  ASSERT_OK_AND_ASSIGN(std::string jpeg, zfarm::worker::EncodeJpeg(rgb, 640, 320, 90, "", ""));
  ASSERT_OK_AND_ASSIGN(std::string webp, zfarm::worker::EncodeWebp(rgb, 640, 320, 90, "", ""));
  for (const std::string* in : {&jpeg, &webp}) {
    ASSERT_OK_AND_ASSIGN(std::string small, MakeThumbnail(*in, 256));
    ASSERT_OK_AND_ASSIGN(auto png, zfarm::worker::DecodePng(small));
    EXPECT_EQ(png.width, 256);
    EXPECT_EQ(png.height, 128);
    EXPECT_NEAR(png.rgb[0], 180, 3);
  }
}

// --- The OpenAPI document -----------------------------------------------

// "METHOD path" of every operation in the document.
std::set<std::string> DocumentedRoutes(const json& doc) {
  std::set<std::string> out;
  for (const auto& [path, item] : doc["paths"].items()) {
    for (const auto& [method, op] : item.items()) {
      std::string m = method;
      for (char& ch : m) ch = static_cast<char>(toupper(ch));
      out.insert(m + " " + path);
    }
  }
  return out;
}

std::set<std::string> ServedRoutes(const RestGateway& gw) {
  std::set<std::string> out;
  for (const auto& [method, pattern] : gw.routes()) out.insert(method + " " + pattern);
  return out;
}

// Runs the npm validator on `doc`; returns its exit code and output.
testing::CommandResult Validate(const json& doc, const std::string& name) {
  const std::string file = ::testing::TempDir() + "/" + name + ".json";
  std::ofstream(file) << doc.dump(1);
  return testing::RunCommand(absl::StrCat("node ", ZFARM_WEB_TEST_DIR, "/validate_openapi.mjs ",
                                          ZFARM_WEB_NPM_DIR, " ", file, " 2>&1"));
}

TEST_F(WebRestTest, OpenApiDocumentIsValidAndDescribesEveryServedRoute) {
  HttpResponse r = Http(port(), "GET", "/openapi.json");
  ASSERT_EQ(r.status, 200);
  EXPECT_THAT(r.Header("Content-Type"), HasSubstr("application/json"));
  json doc = json::parse(r.body, nullptr, false);
  ASSERT_FALSE(doc.is_discarded());
  EXPECT_EQ(doc["openapi"], "3.1.0");

  testing::CommandResult v = Validate(doc, "served");
  EXPECT_EQ(v.exit_code, 0) << v.out;
  EXPECT_THAT(v.out, HasSubstr("\"valid\":true"));

  const std::set<std::string> served = ServedRoutes(*gw_);
  ASSERT_GE(served.size(), 20u);
  EXPECT_EQ(DocumentedRoutes(doc), served);
  // The request bodies refuse unknown fields, as the routes do.
  for (const char* s : {"SubmitJobRequest", "SubmitJobsRequest", "JobSpec",
                        "ImagesGenerateRequest"}) {
    EXPECT_EQ(doc["components"]["schemas"][s]["additionalProperties"], false) << s;
  }
}

TEST_F(WebRestTest, OpenApiChecksFailOnPlantedErrors) {
  json doc = json::parse(Http(port(), "GET", "/openapi.json").body);
  // A route served but not described is caught.
  json missing = doc;
  missing["paths"].erase("/v1/workers/{name}:undrain");
  EXPECT_NE(DocumentedRoutes(missing), ServedRoutes(*gw_));
  // A described route that is not served is caught.
  json extra = doc;
  extra["paths"]["/v1/teleport"] = {{"get", doc["paths"]["/healthz"]["get"]}};
  EXPECT_NE(DocumentedRoutes(extra), ServedRoutes(*gw_));
  // The validator rejects a broken document.
  json broken = doc;
  broken["paths"]["/healthz"]["get"]["responses"] = "none";
  testing::CommandResult v = Validate(broken, "broken");
  EXPECT_NE(v.exit_code, 0) << v.out;
  EXPECT_THAT(v.out, HasSubstr("\"valid\":false"));
}

}  // namespace
}  // namespace zfarm::scheduler::http
