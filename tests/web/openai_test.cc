// The OpenAI images API as an OpenAI user meets it: the official `openai` npm
// client (tests/web/openai_client.cjs, installed by fetch-web-deps.sh) against
// the real zfarm-scheduler with --http-listen and a CPU `zfarm-worker serve`
// on the tiny model. The script reports what the SDK returned; this test
// checks it against the farm (job states, seeds, the files' sha256).
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

class OpenAiClientTest : public FarmProcessTest {
 protected:
  // Starts the scheduler with the HTTP port and returns that port.
  int StartWithHttp() {
    StartScheduler(0, {"--http-listen=127.0.0.1:0"});
    std::string line = scheduler_->WaitForLine("REST gateway on port ", absl::Seconds(10));
    EXPECT_FALSE(line.empty()) << scheduler_->ReadLog();
    return line.empty() ? 0 : std::stoi(line.substr(line.rfind(' ') + 1));
  }
};

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST_F(OpenAiClientTest, OfficialClientGeneratesOnTheFarm) {
  const int port = StartWithHttp();
  ASSERT_GT(port, 0);
  StartWorker("w1");
  const std::string out = dir() + "/sdk";
  std::filesystem::create_directories(out);
  CommandResult r = RunCommand(absl::StrCat("node ", ZFARM_WEB_TEST_DIR, "/openai_client.cjs ",
                                            ZFARM_WEB_NPM_DIR, " http://127.0.0.1:", port,
                                            "/v1 ", out, " 2>", out, "/stderr.log"));
  ASSERT_EQ(r.exit_code, 0) << r.out << ReadFile(out + "/stderr.log") << scheduler_->ReadLog();
  json rep = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(rep.is_discarded()) << r.out;

  // GET /v1/models: the model the worker holds.
  zfarm::v1::WorkerInfo w = client_->Worker("w1");
  ASSERT_FALSE(w.model().empty());
  EXPECT_EQ(rep["models"], json::array({w.model()}));

  // n = 2 in one batch: two PNGs, seeds 7 and 8, each the job's file byte for byte.
  ASSERT_EQ(rep["b64"].size(), 2u) << r.out;
  EXPECT_EQ(rep["size"], "256x256");
  EXPECT_EQ(rep["output_format"], "png");
  std::string batch;
  for (int i = 0; i < 2; ++i) {
    const json& item = rep["b64"][i];
    EXPECT_EQ(item["seed"], 7 + i);
    zfarm::v1::Job job = GetJob(item["job_id"]);
    EXPECT_EQ(job.state(), zfarm::v1::JOB_STATE_SUCCEEDED);
    EXPECT_EQ(job.spec().seed(), static_cast<uint64_t>(7 + i));
    EXPECT_EQ(job.spec().steps(), 2);
    EXPECT_EQ(job.spec().width_px(), 256);
    if (i == 0) batch = job.batch_id();
    EXPECT_FALSE(job.batch_id().empty());
    EXPECT_EQ(job.batch_id(), batch);  // one batch
    auto digest = zfarm::base::DigestFile(item["file"].get<std::string>());
    ASSERT_TRUE(digest.ok()) << digest.status();
    EXPECT_EQ(digest->sha256, job.result().sha256());
    EXPECT_EQ(digest->size_bytes, job.result().size_bytes());
  }
  EXPECT_NE(rep["b64"][0]["job_id"], rep["b64"][1]["job_id"]);

  // response_format url: the result route, served as a PNG.
  EXPECT_EQ(rep["url"]["url"], absl::StrCat("http://127.0.0.1:", port, "/v1/jobs/",
                                            rep["url"]["job_id"].get<std::string>(), "/image"));
  EXPECT_EQ(rep["url"]["status"], 200);
  EXPECT_EQ(rep["url"]["type"], "image/png");
  EXPECT_EQ(rep["url"]["signature"], "89504e470d0a1a0a");

  // output_format jpeg with output_compression: a JPEG of that quality.
  EXPECT_EQ(rep["jpeg"]["output_format"], "jpeg");
  EXPECT_EQ(rep["jpeg"]["signature"], "ffd8ff");
  zfarm::v1::Job jpeg = GetJob(rep["jpeg"]["job_id"]);
  EXPECT_EQ(jpeg.spec().output_format(), zfarm::v1::OUTPUT_FORMAT_JPEG);
  EXPECT_EQ(jpeg.spec().quality(), 80);
  EXPECT_EQ(jpeg.result().media_type(), "image/jpeg");

  // The same Idempotency-Key and body: one job.
  EXPECT_EQ(rep["idempotent"][0], rep["idempotent"][1]);
  EXPECT_EQ(GetJob(rep["idempotent"][0]).request_id(), "openai-test-key-1/0");

  // OpenAI-style errors naming the parameter and the limit.
  const json& e = rep["errors"];
  auto expect_error = [&](const char* name, int status, const char* param, const char* text) {
    SCOPED_TRACE(name);
    EXPECT_EQ(e[name]["status"], status) << e[name].dump();
    EXPECT_EQ(e[name]["param"], param) << e[name].dump();
    EXPECT_THAT(e[name]["message"].get<std::string>(), HasSubstr(text));
  };
  expect_error("n_over_10", 400, "n", "11 is outside [1, 10]");
  expect_error("bad_size", 400, "size", "is not WIDTHxHEIGHT");
  expect_error("size_limit", 400, "size", "multiples of 16 in [");
  expect_error("bad_format", 400, "output_format", "not one of png, jpeg, webp");
  expect_error("compression", 400, "output_compression", "101 is outside [1, 100]");
  expect_error("unknown_field", 400, "colour", "unknown parameter");
  expect_error("unknown_model", 404, "model", "not held by any connected worker");
  EXPECT_EQ(e["n_over_10"]["isBadRequest"], true);
  EXPECT_EQ(e["unknown_field"]["code"], "unknown_parameter");
  EXPECT_EQ(e["unknown_model"]["code"], "model_not_found");
}

}  // namespace
}  // namespace zfarm::testing
