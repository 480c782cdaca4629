// The real zfarm-scheduler binary with mutual TLS on all three of its ports
// (gRPC, REST, /metrics) and bearer tokens, driven by real clients: curl for
// REST and /metrics, the real `zfarm` CLI for gRPC, and a fake worker that
// connects with its own client certificate and worker token. Certificates are
// made at test time (openssl); curl and openssl are installed by
// deploy/install-deps.sh (a missing one fails the test).
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/base/version.h"
#include "proto/security/tls.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/test_certs.h"

namespace zfarm::scheduler {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::zfarm::testing::CommandResult;
using ::zfarm::testing::RunCommand;
using ::zfarm::testing::Subprocess;
using json = nlohmann::json;

constexpr char kAlice[] = "alice-token-0123456789abcdef";
constexpr char kBob[] = "bob-token-0123456789abcdef";
constexpr char kRoot[] = "root-token-0123456789abcdef";
constexpr char kWorker[] = "worker-token-0123456789abcdef";

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

struct HttpResult {
  int curl_exit = -1;  // 0 when an HTTP response arrived
  int status = 0;
  std::string body;
};

class SecureProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("zfarm-secure-", getpid(), "-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ + "/out");
    ASSERT_OK(zfarm::testing::MakeTestCertificates(dir_));
    ASSERT_EQ(RunCommand("env -u LD_LIBRARY_PATH curl --version >/dev/null 2>&1").exit_code, 0)
        << "the curl binary is required (deploy/install-deps.sh installs it)";
    std::ofstream(dir_ + "/tokens") << "# principal tokens\n"
                                    << kAlice << " alice submitter\n"
                                    << kBob << " bob submitter\n"
                                    << kRoot << " root admin\n"
                                    << kWorker << " gpu-node worker\n";
    for (auto [name, token] : {std::pair{"alice", kAlice}, {"bob", kBob}}) {
      std::ofstream(dir_ + "/" + name + ".tok") << token << "\n";
    }
  }
  void TearDown() override {
    scheduler_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Starts the scheduler with mutual TLS and tokens; fills the three ports.
  void StartScheduler() {
    const std::string d = dir_;
    scheduler_ = std::make_unique<Subprocess>(
        std::vector<std::string>{
            ZFARM_SCHEDULER_BIN, "--listen=127.0.0.1:0", "--http-listen=127.0.0.1:0",
            "--metrics-listen=127.0.0.1:0", "--state-dir=" + d + "/state",
            "--output-root=" + d + "/out", "--tls-cert=" + d + "/server.pem",
            "--tls-key=" + d + "/server.key", "--tls-client-ca=" + d + "/ca.pem",
            "--token-file=" + d + "/tokens"},
        d + "/sched.log");
    std::string line = scheduler_->WaitForLine("listening on ", absl::Seconds(30));
    ASSERT_FALSE(line.empty()) << scheduler_->ReadLog();
    address_ = std::string(absl::StripPrefix(line, "listening on "));
    for (auto [marker, port] :
         {std::pair{"REST gateway on port ", &http_port_}, {"metrics on port ", &metrics_port_}}) {
      line = scheduler_->WaitForLine(marker, absl::Seconds(10));
      ASSERT_TRUE(absl::SimpleAtoi(absl::StripPrefix(line, marker), port)) << scheduler_->ReadLog();
    }
  }

  // One HTTPS request with curl: the CA always, the client certificate when
  // `client_cert`, the bearer token when non-empty.
  HttpResult Curl(const std::string& method, int port, const std::string& path,
                  const std::string& token, const std::string& body = "", bool client_cert = true) {
    const std::string d = dir_;
    // curl is a system tool: run it with the system's libraries (on the GPU
    // host LD_LIBRARY_PATH points at a dependency bundle with another libcurl).
    std::string cmd =
        absl::StrCat("env -u LD_LIBRARY_PATH curl -sS --max-time 20 -o ", Quote(d + "/body"),
                     " -w '%{http_code}' --cacert ", Quote(d + "/ca.pem"));
    if (client_cert) {
      absl::StrAppend(&cmd, " --cert ", Quote(d + "/client.pem"), " --key ",
                      Quote(d + "/client.key"));
    }
    if (!token.empty()) absl::StrAppend(&cmd, " -H ", Quote("Authorization: Bearer " + token));
    if (!body.empty()) {
      std::ofstream(d + "/req.json") << body;
      absl::StrAppend(&cmd, " -H 'Content-Type: application/json' --data-binary @",
                      Quote(d + "/req.json"));
    }
    absl::StrAppend(&cmd, " -X ", method, " ",
                    Quote(absl::StrCat("https://127.0.0.1:", port, path)), " 2>/dev/null");
    std::filesystem::remove(d + "/body");
    CommandResult r = RunCommand(cmd);
    HttpResult h;
    h.curl_exit = r.exit_code;
    absl::SimpleAtoi(r.out, &h.status);
    std::ifstream f(d + "/body");
    h.body.assign(std::istreambuf_iterator<char>(f), {});
    return h;
  }

  // The `zfarm` CLI with mutual TLS and `token_file` (none when empty).
  CommandResult Cli(const std::string& args, const std::string& token_file, bool tls = true) {
    const std::string d = dir_;
    std::string cmd = absl::StrCat(ZFARM_CLI_BIN, " ", args, " --scheduler ", address_);
    if (tls) {
      absl::StrAppend(&cmd, " --tls-ca ", Quote(d + "/ca.pem"), " --tls-cert ",
                      Quote(d + "/client.pem"), " --tls-key ", Quote(d + "/client.key"));
    }
    if (!token_file.empty()) absl::StrAppend(&cmd, " --token-file ", Quote(token_file));
    return RunCommand("env -u ZFARM_TOKEN -u ZFARM_SCHEDULER " + cmd + " 2>&1");
  }

  std::string dir_, address_;
  int http_port_ = 0, metrics_port_ = 0;
  std::unique_ptr<Subprocess> scheduler_;
};

std::string Submit(const std::string& request_id, const std::string& prompt) {
  return json{{"request_id", request_id},
              {"spec", {{"prompt", prompt}, {"width_px", 512}, {"height_px", 512}}}}
      .dump();
}

TEST_F(SecureProcessTest, RestAndMetricsOverMutualTlsWithTokensAndRoles) {
  StartScheduler();
  if (HasFatalFailure()) return;
  const int p = http_port_;

  // Transport: without a client certificate the handshake fails (no HTTP status).
  HttpResult r = Curl("GET", p, "/v1/jobs", kAlice, "", /*client_cert=*/false);
  EXPECT_NE(r.curl_exit, 0);
  EXPECT_EQ(r.status, 0);

  // Authentication: missing or unknown token -> 401 UNAUTHENTICATED.
  r = Curl("GET", p, "/v1/jobs", "");
  EXPECT_EQ(r.status, 401) << r.body;
  EXPECT_EQ(json::parse(r.body)["code"], "UNAUTHENTICATED");
  r = Curl("POST", p, "/v1/jobs", "not-a-real-token-0123456789", Submit("x", "x"));
  EXPECT_EQ(r.status, 401) << r.body;
  // Role: a worker token may not submit -> 403.
  r = Curl("POST", p, "/v1/jobs", kWorker, Submit("w-1", "x"));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_EQ(json::parse(r.body)["code"], "PERMISSION_DENIED");

  // Submitters see and cancel only their own jobs; the admin everything.
  r = Curl("POST", p, "/v1/jobs", kAlice, Submit("alice-1", "alice's cat"));
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string alice_job = json::parse(r.body)["job"]["job_id"];
  EXPECT_EQ(json::parse(r.body)["job"]["owner"], "alice");
  r = Curl("POST", p, "/v1/jobs", kBob, Submit("bob-1", "bob's dog"));
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string bob_job = json::parse(r.body)["job"]["job_id"];

  EXPECT_EQ(Curl("GET", p, "/v1/jobs/" + alice_job, kAlice).status, 200);
  r = Curl("GET", p, "/v1/jobs/" + alice_job, kBob);
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_THAT(r.body, Not(HasSubstr("alice's cat")));
  r = Curl("GET", p, "/v1/jobs", kBob);
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_EQ(json::parse(r.body)["jobs"].size(), 1u) << r.body;
  EXPECT_EQ(json::parse(r.body)["jobs"][0]["job_id"], bob_job);
  r = Curl("GET", p, "/v1/jobs", kRoot);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["jobs"].size(), 2u) << r.body;
  EXPECT_EQ(Curl("DELETE", p, "/v1/jobs/" + alice_job, kBob).status, 403);
  r = Curl("GET", p, "/v1/jobs/" + alice_job, kAlice);
  EXPECT_EQ(json::parse(r.body)["state"], "JOB_STATE_QUEUED");
  EXPECT_EQ(Curl("DELETE", p, "/v1/jobs/" + alice_job, kRoot).status, 200);
  r = Curl("GET", p, "/v1/jobs/" + alice_job, kAlice);
  EXPECT_EQ(json::parse(r.body)["state"], "JOB_STATE_CANCELLED");
  EXPECT_EQ(Curl("DELETE", p, "/v1/jobs/" + bob_job, kBob).status, 200);

  // /metrics: mutual TLS too (scrapers need a client certificate).
  r = Curl("GET", metrics_port_, "/metrics", "");
  ASSERT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr("zfarm_"));
  // Build info, process metrics and short state label values.
  EXPECT_THAT(r.body, HasSubstr("zfarm_build_info{version=\"" ZFARM_VERSION "\",binary=\"zfarm-scheduler\"} 1"));
  EXPECT_THAT(r.body, HasSubstr("\nprocess_resident_memory_bytes "));
  EXPECT_THAT(r.body, HasSubstr("\nprocess_open_fds "));
  EXPECT_THAT(r.body, HasSubstr("\nprocess_cpu_seconds_total "));
  EXPECT_THAT(r.body, HasSubstr("zfarm_jobs{state=\"queued\"}"));
  EXPECT_THAT(r.body, Not(HasSubstr("JOB_STATE_")));
  EXPECT_NE(Curl("GET", metrics_port_, "/metrics", "", "", /*client_cert=*/false).curl_exit, 0);

  // Audit lines name the principal; no token ever reaches the log.
  scheduler_->Stop(SIGTERM);
  const std::string log = scheduler_->ReadLog();
  EXPECT_THAT(log, HasSubstr("event=audit principal=alice method=SubmitJob"));
  EXPECT_THAT(log, HasSubstr("event=audit principal=root method=CancelJob"));
  for (const char* t : {kAlice, kBob, kRoot, kWorker, "not-a-real-token"}) {
    EXPECT_THAT(log, Not(HasSubstr(t)));
  }
}

TEST_F(SecureProcessTest, CliSubmitWaitGetListCancelAgainstTlsAndTokens) {
  StartScheduler();
  if (HasFatalFailure()) return;
  const std::string alice = dir_ + "/alice.tok", bob = dir_ + "/bob.tok";

  // A worker with its own client certificate and the worker token renders
  // (fakes) one job.
  auto tls =
      security::ClientCredentials({dir_ + "/client.pem", dir_ + "/client.key", dir_ + "/ca.pem"});
  ASSERT_OK(tls.status());
  auto channel = grpc::CreateChannel(
      address_, grpc::CompositeChannelCredentials(*tls, grpc::AccessTokenCredentials(kWorker)));
  zfarm::testing::FakeWorker::Options wo;
  wo.name = "gpu-node/cuda:0";
  auto worker = zfarm::testing::FakeWorker::Connect(channel, wo);
  ASSERT_OK(worker.status());
  absl::Status rendered = absl::UnknownError("no lease");
  std::thread render([&] {
    auto lease = (*worker)->NextLease(absl::Seconds(60));
    rendered = lease.ok() ? (*worker)->RunToSuccess(*lease, dir_ + "/out") : lease.status();
  });

  // submit --wait: exit 0 with the succeeded job as JSON.
  CommandResult run =
      Cli("submit --json --wait --prompt 'a lighthouse' --width 512 --height 512 "
          "--request-id cli-1",
          alice);
  render.join();
  ASSERT_OK(rendered);
  worker->reset();  // later jobs stay queued
  ASSERT_EQ(run.exit_code, 0) << run.out;
  json job = json::parse(run.out.substr(run.out.find('{')));
  EXPECT_EQ(job["state"], "succeeded");
  const std::string id = job["job"];

  // get --out fetches the PNG over the TLS channel.
  run = Cli(absl::StrCat("get ", id, " --out ", Quote(dir_ + "/got.png")), alice);
  EXPECT_EQ(run.exit_code, 0) << run.out;
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/got.png"));

  // A queued job of alice's: bob cannot see or cancel it; list shows only one's own.
  run = Cli("submit --json --prompt 'still queued' --request-id cli-2", alice);
  ASSERT_EQ(run.exit_code, 0) << run.out;
  const std::string queued = json::parse(run.out.substr(run.out.find('{')))["job"];
  run = Cli("status " + queued, bob);
  EXPECT_NE(run.exit_code, 0);
  EXPECT_THAT(run.out, HasSubstr("belongs to another principal"));
  run = Cli("cancel " + queued, bob);
  EXPECT_NE(run.exit_code, 0);
  run = Cli("list --json", bob);
  EXPECT_EQ(run.exit_code, 0) << run.out;
  EXPECT_THAT(run.out, Not(HasSubstr(queued)));
  run = Cli("list --json", alice);
  EXPECT_EQ(run.exit_code, 0) << run.out;
  EXPECT_THAT(run.out, HasSubstr(queued));
  EXPECT_THAT(run.out, HasSubstr(id));
  run = Cli("cancel " + queued, alice);
  EXPECT_EQ(run.exit_code, 0) << run.out;
  run = Cli("status --json " + queued, alice);
  EXPECT_THAT(run.out, HasSubstr("\"state\":\"cancelled\""));

  // No token: UNAUTHENTICATED (exit 1, the message says how to give one);
  // no TLS to a TLS port: unreachable (exit 3), never a plaintext fallback.
  run = Cli("list", "");
  EXPECT_EQ(run.exit_code, 1) << run.out;
  EXPECT_THAT(run.out, HasSubstr("token"));
  run = Cli("list --timeout 3s", alice, /*tls=*/false);
  EXPECT_EQ(run.exit_code, 3) << run.out;
}

TEST_F(SecureProcessTest, BusyPortsAreRefusedNotShared) {
  StartScheduler();
  if (HasFatalFailure()) return;
  const std::string d = dir_;
  const std::string port = address_.substr(address_.rfind(':') + 1);
  struct Case {
    std::string flag, value;
  };
  for (const Case& c : {Case{"--listen", "127.0.0.1:" + port},
                        Case{"--http-listen", absl::StrCat("127.0.0.1:", http_port_)},
                        Case{"--metrics-listen", absl::StrCat("127.0.0.1:", metrics_port_)}}) {
    std::vector<std::string> argv = {ZFARM_SCHEDULER_BIN, "--state-dir=" + d + "/state2",
                                     "--output-root=" + d + "/out"};
    if (c.flag != "--listen") argv.push_back("--listen=127.0.0.1:0");
    argv.push_back(c.flag + "=" + c.value);
    Subprocess second(argv, d + "/second.log");
    int status = second.Wait(absl::Seconds(30));
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << c.flag << second.ReadLog();
    EXPECT_THAT(second.ReadLog(), HasSubstr(c.flag)) << c.flag;
    std::filesystem::remove_all(d + "/state2");
  }
}

}  // namespace
}  // namespace zfarm::scheduler
