// The farm dashboard in a real browser: headless Chromium (Debian's
// chromium) driven by playwright-core (tests/web/dashboard_browser.cjs)
// against the real zfarm-scheduler (with bearer tokens) and a CPU
// `zfarm-worker serve` on the tiny model. The script reports what the page
// showed; this test checks it against the farm. Screenshots are kept in
// BUILD/test-output/web_dashboard/.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/base/files.h"
#include "tests/testing/farm_processes.h"
#include "tests/testing/subprocess.h"

namespace zfarm::testing {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

constexpr char kAdminToken[] = "dashboard-admin-token-0123456789";
constexpr char kWorkerToken[] = "dashboard-worker-token-0123456789";

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int CountOf(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t p = haystack.find(needle); p != std::string::npos; p = haystack.find(needle, p + 1)) ++n;
  return n;
}

class DashboardTest : public FarmProcessTest {};

TEST_F(DashboardTest, LiveQueueJobPageAndFormInChromium) {
  const std::string tokens = dir() + "/tokens";
  std::ofstream(tokens) << kAdminToken << " ops admin\n" << kWorkerToken << " w1 worker\n";
  const std::string worker_token = dir() + "/worker.tok";
  std::ofstream(worker_token) << kWorkerToken << "\n";
  StartScheduler(0, {"--http-listen=127.0.0.1:0", "--token-file=" + tokens});
  std::string line = scheduler_->WaitForLine("REST gateway on port ", absl::Seconds(10));
  ASSERT_FALSE(line.empty()) << scheduler_->ReadLog();
  const int port = std::stoi(line.substr(line.rfind(' ') + 1));
  client_->set_token(kAdminToken);
  StartWorker("w1", {"--token-file=" + worker_token});

  const std::string out = ZFARM_WEB_OUTPUT_DIR "/web_dashboard";
  std::filesystem::remove_all(out);
  std::filesystem::create_directories(out);
  CommandResult r = RunCommand(absl::StrCat("node ", ZFARM_WEB_TEST_DIR, "/dashboard_browser.cjs ",
                                            ZFARM_WEB_NPM_DIR, " http://127.0.0.1:", port, " ",
                                            out, " ", kAdminToken, " w1 2>", out, "/stderr.log"));
  ASSERT_EQ(r.exit_code, 0) << r.out << ReadFile(out + "/stderr.log") << scheduler_->ReadLog();
  json rep = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(rep.is_discarded()) << r.out;

  // Auth: the page asked for the token and kept it in the tab's session.
  EXPECT_EQ(rep["tokenPrompt"], true);
  EXPECT_EQ(rep["sessionToken"], true);
  // Live: the card went queued -> succeeded in the same document (no reload).
  EXPECT_EQ(rep["seen"], json::array({"queued", "succeeded"}));
  EXPECT_EQ(rep["queuedCount"], "1");
  EXPECT_EQ(rep["sameDocument"], "yes");
  EXPECT_THAT(rep["workerRow"].get<std::string>(), HasSubstr("w1"));
  zfarm::v1::Job job = GetJob(rep["jobId"]);
  ASSERT_EQ(job.state(), zfarm::v1::JOB_STATE_SUCCEEDED);

  // The job's page: parameters, seed, PNG metadata, the download byte for byte.
  EXPECT_EQ(rep["params"]["seed"], "5");
  EXPECT_EQ(rep["params"]["prompt"], "a lighthouse at dusk");
  EXPECT_EQ(rep["params"]["sha256"], job.result().sha256());
  EXPECT_THAT(rep["metadata"].get<std::string>(), HasSubstr("Seed: 5"));
  EXPECT_EQ(rep["imageWidth"], 256);
  auto digest = zfarm::base::DigestFile(rep["download"]["file"].get<std::string>());
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(digest->sha256, job.result().sha256());

  // Thumbnails: 256 px at most, the same bytes each time, made once per result.
  ASSERT_EQ(rep["thumbnails"].size(), 2u);
  EXPECT_EQ(rep["thumbnails"][0]["status"], 200);
  EXPECT_EQ(rep["thumbnails"][0]["width"], 256);
  EXPECT_EQ(rep["thumbnails"][0]["sha256"], rep["thumbnails"][1]["sha256"]);
  const std::string log = scheduler_->ReadLog();
  EXPECT_EQ(CountOf(log, "event=thumbnail job=" + job.job_id()), 1) << log;
  EXPECT_TRUE(std::filesystem::exists(
      absl::StrCat(dir(), "/state/thumbnails/", job.result().sha256(), ".png")));

  // The form's job, with markup in its prompt: rendered as text, nothing ran.
  const std::string evil =
      "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=1\"> a fox";
  zfarm::v1::Job form_job = GetJob(rep["formJobId"]);
  EXPECT_EQ(form_job.spec().prompt(), evil);
  EXPECT_EQ(form_job.spec().seed(), 9u);
  EXPECT_EQ(form_job.state(), zfarm::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(rep["evilText"], evil);
  EXPECT_EQ(rep["evilParam"], evil);
  EXPECT_EQ(rep["injectedImages"], 0);
  EXPECT_EQ(rep["injectedScripts"], 0);
  EXPECT_TRUE(rep["pwned"].is_null());

  // Offline: nothing but the farm was asked for; no script errors.
  EXPECT_EQ(rep["external"], json::array());
  EXPECT_EQ(rep["pageErrors"], json::array());
  ASSERT_EQ(rep["screenshots"].size(), 6u);
  for (const auto& f : rep["screenshots"]) {
    const std::string png = ReadFile(f.get<std::string>());
    EXPECT_GT(png.size(), 1000u) << f;
    EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << f;
  }
}

}  // namespace
}  // namespace zfarm::testing
