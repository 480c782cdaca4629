// The real zfarm-scheduler binary with --http-listen (and webhooks): submit, get,
// list and cancel over REST with a plain HTTP client; bodies and error bodies are
// asserted; the cancelled job's webhook reaches a loopback receiver, signed.
// HTTPS, mutual TLS and tokens on the same port: secure_process_test.cc.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "scheduler/http/webhook_sender.h"
#include "tests/scheduler/http_test_util.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/test_images.h"

namespace zfarm::scheduler {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::HttpCall;
using ::zfarm::testing::HttpMessage;
using ::zfarm::testing::HttpReceiver;
using ::zfarm::testing::Subprocess;
using json = nlohmann::json;

class RestProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("zfarm-rest-proc-", getpid(), "-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ + "/out");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

// Pictures through POST /v1/jobs: base64 bytes (protobuf's JSON mapping) up to
// --max-input-bytes (a 16 MiB picture is 21.3 MiB of base64), and a path under
// --input-root; the answers carry the sha256 reference, errors name the field.
TEST_F(RestProcessTest, PicturesAsBase64AndAsInputRootPaths) {
  std::filesystem::create_directories(dir_ + "/in/shots");
  const std::string small = zfarm::testing::MakeTestPng(320, 256);
  std::ofstream(dir_ + "/in/shots/a.png", std::ios::binary) << small;
  Subprocess p({ZFARM_SCHEDULER_BIN, "--listen=127.0.0.1:0", "--http-listen=127.0.0.1:0",
                "--state-dir=" + dir_ + "/state", "--output-root=" + dir_ + "/out",
                "--input-root=" + dir_ + "/in"},
               dir_ + "/sched.log");
  const std::string marker = "REST gateway on port ";
  std::string port_text = p.WaitForLine(marker, absl::Seconds(30));
  int port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripPrefix(port_text, marker), &port)) << p.ReadLog();

  const std::string big = zfarm::testing::MakeTestPng(512, 512, 16 << 20);
  json req = {{"spec",
               {{"prompt", "a fox"},
                {"strength", 0.6},
                {"init_image", {{"data", absl::Base64Escape(big)}}},
                {"mask_image", {{"data", absl::Base64Escape(small)}}},
                {"loras", {{{"name", "ink"}, {"scale", 0.8}}}}}}};
  HttpMessage r = HttpCall(port, "POST", "/v1/jobs", req.dump(),
                           {{"Content-Type", "application/json"}});
  ASSERT_EQ(r.status, 201) << r.body.substr(0, 500);
  json job = json::parse(r.body)["job"];
  EXPECT_EQ(job["spec"]["init_image"]["sha256"].get<std::string>().size(), 64u);
  EXPECT_FALSE(job["spec"]["init_image"].contains("data"));
  EXPECT_EQ(job["spec"]["width_px"], 512);
  EXPECT_EQ(job["spec"]["loras"][0]["name"], "ink");
  EXPECT_TRUE(std::filesystem::exists(
      dir_ + "/state/inputs/" + job["spec"]["init_image"]["sha256"].get<std::string>()));

  json by_path = {{"spec", {{"prompt", "a fox"}, {"init_image", {{"path", "shots/a.png"}}}}}};
  r = HttpCall(port, "POST", "/v1/jobs", by_path.dump());
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(json::parse(r.body)["job"]["spec"]["height_px"], 256);

  // Errors: over the limit, not base64, a path out of the root.
  const std::string over = zfarm::testing::MakeTestPng(64, 64, (16 << 20) + 1);
  json too_big = {{"spec", {{"prompt", "x"}, {"init_image", {{"data", absl::Base64Escape(over)}}}}}};
  r = HttpCall(port, "POST", "/v1/jobs", too_big.dump());
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_THAT(json::parse(r.body)["message"].get<std::string>(),
              HasSubstr("spec.init_image.data: 16.0 MiB is over --max-input-bytes (16 MiB)"));
  r = HttpCall(port, "POST", "/v1/jobs",
               R"({"spec":{"prompt":"x","init_image":{"data":"%%%not base64"}}})");
  EXPECT_EQ(r.status, 400) << r.body;
  json escape = {{"spec", {{"prompt", "x"}, {"init_image", {{"path", "../state/journal.db"}}}}}};
  r = HttpCall(port, "POST", "/v1/jobs", escape.dump());
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_THAT(json::parse(r.body)["message"].get<std::string>(),
              HasSubstr("spec.init_image.path"));
  int status = p.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << p.ReadLog();
}

TEST_F(RestProcessTest, SubmitGetListCancelOverHttpWithWebhook) {
  HttpReceiver receiver;
  std::ofstream(dir_ + "/hook.key") << "s3cret\n";
  Subprocess p({ZFARM_SCHEDULER_BIN, "--listen=127.0.0.1:0", "--http-listen=127.0.0.1:0",
                      "--state-dir=" + dir_ + "/state", "--output-root=" + dir_ + "/out",
                      absl::StrCat("--webhook-allow=127.0.0.1:", receiver.port()),
                      "--webhook-secret-file=" + dir_ + "/hook.key"},
                     dir_ + "/sched.log");
  const std::string marker = "REST gateway on port ";
  std::string port_text = p.WaitForLine(marker, absl::Seconds(30));
  int port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripPrefix(port_text, marker), &port)) << p.ReadLog();
  const std::string hook = absl::StrCat("http://127.0.0.1:", receiver.port(), "/done");

  // Submit: 201 with the job, then the same request_id again: 200, same job.
  json spec = {
      {"prompt", "a red bicycle"}, {"width_px", 512}, {"height_px", 512}, {"webhook_url", hook}};
  json req = {{"request_id", "rest-1"}, {"spec", spec}};
  HttpMessage r = HttpCall(port, "POST", "/v1/jobs", req.dump());
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(r.headers["content-type"], "application/json");
  json submitted = json::parse(r.body);
  const std::string id = submitted["job"]["job_id"];
  EXPECT_EQ(submitted["created"], true);
  EXPECT_EQ(submitted["job"]["state"], "JOB_STATE_QUEUED");
  EXPECT_EQ(submitted["job"]["request_id"], "rest-1");
  EXPECT_EQ(submitted["job"]["spec"]["width_px"], 512);
  r = HttpCall(port, "POST", "/v1/jobs", req.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["job"]["job_id"], id);

  // Get.
  r = HttpCall(port, "GET", "/v1/jobs/" + id);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["spec"]["prompt"], "a red bicycle");

  // Errors: same validation as gRPC, as {code, message}.
  json bad = {{"spec", {{"prompt", "x"}, {"width_px", 300}}}};
  r = HttpCall(port, "POST", "/v1/jobs", bad.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(json::parse(r.body)["code"], "INVALID_ARGUMENT");
  EXPECT_THAT(json::parse(r.body)["message"].get<std::string>(), HasSubstr("spec.width_px"));
  json off_list = {{"spec", {{"prompt", "x"}, {"webhook_url", "http://10.0.0.1:9/x"}}}};
  r = HttpCall(port, "POST", "/v1/jobs", off_list.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(json::parse(r.body)["message"].get<std::string>(), HasSubstr("spec.webhook_url"));
  r = HttpCall(port, "POST", "/v1/jobs", "{not json");
  EXPECT_EQ(r.status, 400);
  r = HttpCall(port, "GET", "/v1/jobs/j-nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(json::parse(r.body)["code"], "NOT_FOUND");

  // Cancel, then the job is CANCELLED in get and list, and the webhook arrives.
  r = HttpCall(port, "DELETE", "/v1/jobs/" + id);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["job_ids"][0], id);
  r = HttpCall(port, "GET", "/v1/jobs/" + id);
  EXPECT_EQ(json::parse(r.body)["state"], "JOB_STATE_CANCELLED");
  r = HttpCall(port, "GET", "/v1/jobs?state=cancelled");
  ASSERT_EQ(r.status, 200) << r.body;
  json list = json::parse(r.body);
  ASSERT_EQ(list["jobs"].size(), 1u);
  EXPECT_EQ(list["jobs"][0]["job_id"], id);
  r = HttpCall(port, "GET", "/v1/jobs?state=bogus");
  EXPECT_EQ(r.status, 400);

  ASSERT_TRUE(receiver.WaitFor(1, absl::Seconds(20))) << p.ReadLog();
  HttpMessage got = receiver.requests()[0];
  EXPECT_EQ(got.request_line, "POST /done HTTP/1.1");
  EXPECT_EQ(got.headers["x-zfarm-signature"], "sha256=" + http::HmacSha256Hex("s3cret", got.body));
  EXPECT_EQ(json::parse(got.body)["state"], "JOB_STATE_CANCELLED");

  int status = p.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << p.ReadLog();
  EXPECT_EQ(receiver.requests().size(), 1u);
}

TEST_F(RestProcessTest, WebhookAllowWithoutSecretIsAUsageError) {
  Subprocess p({ZFARM_SCHEDULER_BIN, "--listen=127.0.0.1:0", "--state-dir=" + dir_ + "/state",
                      "--output-root=" + dir_ + "/out", "--webhook-allow=127.0.0.1:9"},
                     dir_ + "/sched.log");
  EXPECT_EQ(p.WaitForLine("listening on ", absl::Seconds(30)), "");
  EXPECT_THAT(p.ReadLog(), HasSubstr("--webhook-secret-file"));
}

}  // namespace
}  // namespace zfarm::scheduler
