// The real zfarm-scheduler binary with --http-listen (and webhooks): submit, get,
// list and cancel over REST with a plain HTTP client; bodies and error bodies are
// asserted; the cancelled job's webhook reaches a loopback receiver, signed.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "scheduler/http/webhook_sender.h"
#include "tests/scheduler/http_test_util.h"

namespace zfarm::scheduler {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::HttpCall;
using ::zfarm::testing::HttpMessage;
using ::zfarm::testing::HttpReceiver;
using json = nlohmann::json;

// zfarm-scheduler with `args`, output to `log`; killed by the destructor.
class SchedulerProcess {
 public:
  SchedulerProcess(const std::vector<std::string>& args, std::string log) : log_(std::move(log)) {
    pid_ = fork();
    if (pid_ == 0) {
      int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(ZFARM_SCHEDULER_BIN));
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(ZFARM_SCHEDULER_BIN, argv.data());
      _exit(127);
    }
  }
  ~SchedulerProcess() {
    if (pid_ > 0) Stop(SIGKILL);
  }
  // The rest of the first log line containing `marker`; "" if the process exited.
  std::string WaitForLine(const std::string& marker) {
    for (int i = 0; i < 3000; ++i) {
      std::ifstream f(log_);
      std::string line;
      while (std::getline(f, line)) {
        auto p = line.find(marker);
        if (p != std::string::npos) return line.substr(p + marker.size());
      }
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return "";
      }
      usleep(10000);
    }
    return "";
  }
  int Stop(int sig) {
    if (pid_ <= 0) return -1;  // never kill(-1, ...)
    kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }
  std::string Log() {
    std::ifstream f(log_);
    return std::string((std::istreambuf_iterator<char>(f)), {});
  }

 private:
  std::string log_;
  pid_t pid_ = -1;
};

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

TEST_F(RestProcessTest, SubmitGetListCancelOverHttpWithWebhook) {
  HttpReceiver receiver;
  std::ofstream(dir_ + "/hook.key") << "s3cret\n";
  SchedulerProcess p({"--listen=127.0.0.1:0", "--http-listen=127.0.0.1:0",
                      "--state-dir=" + dir_ + "/state", "--output-root=" + dir_ + "/out",
                      absl::StrCat("--webhook-allow=127.0.0.1:", receiver.port()),
                      "--webhook-secret-file=" + dir_ + "/hook.key"},
                     dir_ + "/sched.log");
  std::string port_text = p.WaitForLine("REST gateway on port ");
  int port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(port_text, &port)) << p.Log();
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

  ASSERT_TRUE(receiver.WaitFor(1, absl::Seconds(20))) << p.Log();
  HttpMessage got = receiver.requests()[0];
  EXPECT_EQ(got.request_line, "POST /done HTTP/1.1");
  EXPECT_EQ(got.headers["x-zfarm-signature"], "sha256=" + http::HmacSha256Hex("s3cret", got.body));
  EXPECT_EQ(json::parse(got.body)["state"], "JOB_STATE_CANCELLED");

  int status = p.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << p.Log();
  EXPECT_EQ(receiver.requests().size(), 1u);
}

TEST_F(RestProcessTest, WebhookAllowWithoutSecretIsAUsageError) {
  SchedulerProcess p({"--listen=127.0.0.1:0", "--state-dir=" + dir_ + "/state",
                      "--output-root=" + dir_ + "/out", "--webhook-allow=127.0.0.1:9"},
                     dir_ + "/sched.log");
  EXPECT_EQ(p.WaitForLine("listening on "), "");
  EXPECT_THAT(p.Log(), HasSubstr("--webhook-secret-file"));
}

int Sh(const std::string& cmd) { return std::system(cmd.c_str()); }

TEST_F(RestProcessTest, HttpsGatewayIsRefusedNotCrashed) {
  // Debian's civetweb crashes on TLS connections: the scheduler must refuse
  // --tls-cert together with --http-listen at startup, naming the flags.
  const std::string d = dir_;
  ASSERT_EQ(Sh("cd " + d +
               " && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 "
               "-keyout s.key -out s.pem >/dev/null 2>&1"),
            0)
      << "the openssl binary is required";
  std::ofstream(d + "/tokens") << "alice-token-0123456789 alice submitter\n";
  SchedulerProcess p(
      {"--listen=127.0.0.1:0", "--http-listen=127.0.0.1:0", "--state-dir=" + d + "/state",
       "--output-root=" + d + "/out", "--tls-cert=" + d + "/s.pem", "--tls-key=" + d + "/s.key",
       "--token-file=" + d + "/tokens"},
      d + "/sched.log");
  EXPECT_EQ(p.WaitForLine("REST gateway on port "), "");
  EXPECT_THAT(p.Log(), HasSubstr("--http-listen with --tls-cert"));
  EXPECT_THAT(p.Log(), ::testing::Not(HasSubstr("alice-token-0123456789")));
}

}  // namespace
}  // namespace zfarm::scheduler
