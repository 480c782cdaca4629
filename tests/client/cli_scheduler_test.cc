// The `zfarm` CLI against the real in-process scheduler (journal on disk) with
// FakeWorkers speaking the real Connect protocol.
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/cli.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/base/files.h"
#include "scheduler/server.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_images.h"
#include "worker/io/canny.h"
#include "worker/io/file_util.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::client {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;
using json = nlohmann::json;
using zfarm::scheduler::SchedulerServer;
using zfarm::scheduler::ServerOptions;
using zfarm::testing::FakeWorker;

struct Result {
  int rc = -1;
  std::string out, err;
  std::vector<json> lines() const {
    std::vector<json> v;
    for (absl::string_view l : absl::StrSplit(out, '\n', absl::SkipEmpty())) {
      v.push_back(json::parse(l));
    }
    return v;
  }
};

class CliSchedulerTest : public ::testing::Test {
 protected:
  // The job as GetJob returns it (a test failure if the call fails).
  zfarm::v1::Job GetJob(const std::string& id) {
    auto stub = zfarm::v1::JobService::NewStub(channel_);
    zfarm::v1::GetJobRequest req;
    req.set_job_id(id);
    zfarm::v1::Job job;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub->GetJob(&ctx, req, &job).ok());
    return job;
  }
  void SetUp() override {
    std::string t = ::testing::TempDir() + "/zfarm_cli_sched_XXXXXX";
    dir_ = mkdtemp(t.data());
    options_.scheduler.state_dir = dir_ + "/state";
    options_.scheduler.output_root = dir_ + "/out";
    std::filesystem::create_directories(options_.scheduler.output_root);
    options_.listen = "127.0.0.1:0";
    StartScheduler();
    options_.listen = address_;  // restarts reuse the port
  }
  void TearDown() override {
    StopWorker();
    if (server_) server_->Shutdown();
  }

  void StartScheduler() {
    auto s = SchedulerServer::Start(options_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    address_ = server_->address();
    channel_ = grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
  }

  // A worker thread that renders every lease it gets, until StopWorker().
  void StartWorker(const std::string& name) {
    stop_worker_ = false;
    worker_ = std::thread([this, name] {
      FakeWorker::Options o;
      o.name = name;
      o.capacity = 4;
      auto w = FakeWorker::Connect(channel_, o);
      if (!w.ok()) return;
      while (!stop_worker_) {
        auto lease = (*w)->NextLease(absl::Milliseconds(200));
        if (!lease.ok()) continue;
        if ((*w)->RunToSuccess(*lease, options_.scheduler.output_root).ok()) {
          ++rendered_;
        }
      }
    });
  }
  void StopWorker() {
    stop_worker_ = true;
    if (worker_.joinable()) worker_.join();
  }

  Result Run(std::vector<std::string> args) {
    args.push_back("--scheduler");
    args.push_back(address_);
    std::ostringstream out, err;
    CliIo io;
    io.out = &out;
    io.err = &err;
    io.getenv = [this](const char* name) -> const char* {
      auto it = env_.find(name);
      return it == env_.end() ? nullptr : it->second.c_str();
    };
    int rc = RunCli(args, io);
    return {rc, out.str(), err.str()};
  }

  int CountJobs() {
    auto stub = zfarm::v1::JobService::NewStub(channel_);
    zfarm::v1::ListJobsRequest req;
    req.set_page_size(1000);
    zfarm::v1::ListJobsResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    if (!stub->ListJobs(&ctx, req, &resp).ok()) return -1;
    return resp.jobs_size();
  }

  std::string dir_, address_;
  ServerOptions options_;
  std::unique_ptr<SchedulerServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::map<std::string, std::string> env_;
  std::thread worker_;
  std::atomic<bool> stop_worker_{false};
  std::atomic<int> rendered_{0};
};

TEST_F(CliSchedulerTest, SubmitWaitStatusGetWithAWorker) {
  StartWorker("w1");
  std::string png = dir_ + "/fox.png";
  Result r = Run({"submit", "--prompt", "a fox", "--width", "256", "--height", "256", "--steps",
                  "2", "--seed", "9", "--wait", "--out", png, "--json", "--timeout", "60s"});
  ASSERT_EQ(r.rc, 0) << r.err;
  json j = r.lines().back();
  EXPECT_EQ(j["state"], "succeeded");
  EXPECT_EQ(j["seed"], 9);
  EXPECT_EQ(j["width"], 256);
  EXPECT_EQ(j["steps"], 2);
  EXPECT_FALSE(j["path"].get<std::string>().empty());
  // The fake worker reports no sha256: the CLI fills it from the local copy.
  ASSERT_OK_AND_ASSIGN(std::string fox_sha, base::Sha256OfFile(png));
  EXPECT_EQ(j["sha256"], fox_sha);
  Result st = Run({"status", j["job"], "--json"});
  ASSERT_EQ(st.rc, 0) << st.err;
  EXPECT_EQ(st.lines()[0]["path"], j["path"]);
  // get: through GetResult (no mount) and from the mount.
  Result g = Run({"get", j["job"], "--out", dir_ + "/g.png"});
  ASSERT_EQ(g.rc, 0) << g.err;
  env_["ZFARM_OUTPUT_ROOT"] = options_.scheduler.output_root;
  Result g2 = Run({"get", j["job"], "--out", dir_ + "/g2.png"});
  ASSERT_EQ(g2.rc, 0) << g2.err;
  ASSERT_OK_AND_ASSIGN(std::string sha, base::Sha256OfFile(dir_ + "/g.png"));
  EXPECT_EQ(sha, j["sha256"].get<std::string>());
  ASSERT_OK_AND_ASSIGN(std::string sha2, base::Sha256OfFile(dir_ + "/g2.png"));
  EXPECT_EQ(sha2, j["sha256"].get<std::string>());
  Result w = Run({"workers", "--json"});
  ASSERT_EQ(w.rc, 0) << w.err;
  EXPECT_EQ(w.lines()[0]["worker"], "w1");
  Result d = Run({"drain", "w1", "--json"});
  ASSERT_EQ(d.rc, 0) << d.err;
  EXPECT_EQ(d.lines()[0]["state"], "draining");
  EXPECT_EQ(d.lines()[0]["changed"], true);
  // Draining again changes nothing and says so.
  Result again = Run({"drain", "w1"});
  EXPECT_EQ(again.rc, 0) << again.err;
  EXPECT_THAT(again.err, HasSubstr("worker w1 is already draining: nothing changed"));
  EXPECT_THAT(again.out, HasSubstr("changed=no"));
  // undrain: back to taking jobs; a second one changes nothing; an unknown worker exits 1.
  Result u = Run({"undrain", "w1", "--json"});
  ASSERT_EQ(u.rc, 0) << u.err;
  EXPECT_EQ(u.lines()[0]["changed"], true);
  EXPECT_NE(u.lines()[0]["state"], "draining");
  Result u2 = Run({"undrain", "w1"});
  EXPECT_EQ(u2.rc, 0) << u2.err;
  EXPECT_THAT(u2.err, HasSubstr("worker w1 is not draining: nothing changed"));
  Result unknown = Run({"undrain", "no-such-worker"});
  EXPECT_EQ(unknown.rc, 1);
  EXPECT_THAT(unknown.err, HasSubstr("no-such-worker"));
  EXPECT_EQ(Run({"undrain"}).rc, 2);
  EXPECT_EQ(Run({"health", address_}).rc, 0);
}

TEST_F(CliSchedulerTest, ValidationErrorsFromTheSchedulerExit2) {
  Result r = Run({"submit", "--prompt", "x", "--width", "100"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_THAT(r.err, HasSubstr("width"));
}

TEST_F(CliSchedulerTest, CancelQueuedByLabelAndList) {
  Result s = Run({"submit", "--prompt", "x", "--label", "campaign=spring", "--json"});
  ASSERT_EQ(s.rc, 0) << s.err;
  Result c = Run({"cancel", "--label", "campaign=spring", "--json"});
  ASSERT_EQ(c.rc, 0) << c.err;
  EXPECT_THAT(c.lines(), SizeIs(1));
  Result w = Run({"watch", s.lines()[0]["job"], "--timeout", "20s"});
  EXPECT_EQ(w.rc, 5) << w.err;
  Result l = Run({"list", "--state", "cancelled", "--json"});
  ASSERT_EQ(l.rc, 0) << l.err;
  EXPECT_THAT(l.lines(), SizeIs(1));
}

// Image-to-image, inpainting and LoRAs from `zfarm submit` and a prompts file: the
// pictures travel as bytes (or as --input-root paths), the scheduler keeps their
// sha256, derived request ids follow the bytes.
TEST_F(CliSchedulerTest, SubmitAndBatchWithPicturesAndLoras) {
  StopWorker();
  if (server_) server_->Shutdown();
  std::filesystem::create_directories(dir_ + "/inputs/shots");
  options_.input_root = dir_ + "/inputs";
  StartScheduler();
  const std::string in = dir_ + "/in.png", mask = dir_ + "/m.png";
  std::ofstream(in, std::ios::binary) << zfarm::testing::MakeTestPng(320, 288);
  std::ofstream(mask, std::ios::binary) << zfarm::testing::MakeTestPng(320, 288, 0, true);
  std::ofstream(dir_ + "/inputs/shots/a.png", std::ios::binary)
      << zfarm::testing::MakeTestPng(256, 512);
  env_["BUILD_TAG"] = "img";
  auto get = [this](const std::string& id) { return GetJob(id); };
  Result r = Run({"submit", "--prompt", "a fox", "--init-image", in, "--strength", "0.6", "--mask",
                  mask, "--lora", "ink:0.8", "--lora", "detail", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  zfarm::v1::Job job = get(r.lines()[0]["job"]);
  EXPECT_EQ(job.spec().init_image().sha256().size(), 64u);
  EXPECT_EQ(job.spec().mask_image().sha256().size(), 64u);
  EXPECT_EQ(job.spec().width_px(), 320);  // from the picture
  EXPECT_EQ(job.spec().height_px(), 288);
  EXPECT_FLOAT_EQ(job.spec().strength(), 0.6f);
  ASSERT_EQ(job.spec().loras_size(), 2);
  EXPECT_EQ(job.spec().loras(0).name(), "ink");
  EXPECT_FLOAT_EQ(job.spec().loras(0).scale(), 0.8f);
  // Same command again: same derived request id, same job. Another picture: new job.
  Result again = Run({"submit", "--prompt", "a fox", "--init-image", in, "--strength", "0.6",
                      "--mask", mask, "--lora", "ink:0.8", "--lora", "detail", "--json"});
  ASSERT_EQ(again.rc, 0) << again.err;
  EXPECT_EQ(again.lines()[0]["job"], r.lines()[0]["job"]);
  std::ofstream(in, std::ios::binary) << zfarm::testing::MakeTestPng(320, 304);
  Result changed = Run({"submit", "--prompt", "a fox", "--init-image", in, "--strength", "0.6",
                        "--mask", mask, "--lora", "ink:0.8", "--lora", "detail", "--json"});
  ASSERT_EQ(changed.rc, 0) << changed.err;
  EXPECT_NE(changed.lines()[0]["job"], r.lines()[0]["job"]);
  // A path under the scheduler's --input-root.
  Result byp = Run({"submit", "--prompt", "a fox", "--init-image-path", "shots/a.png", "--json"});
  ASSERT_EQ(byp.rc, 0) << byp.err;
  EXPECT_EQ(get(byp.lines()[0]["job"]).spec().height_px(), 512);
  // Errors: exit 2, naming the flag or the field.
  Result missing = Run({"submit", "--prompt", "x", "--init-image", dir_ + "/nope.png"});
  EXPECT_EQ(missing.rc, 2);
  EXPECT_THAT(missing.err, HasSubstr("--init-image: cannot read"));
  Result both = Run({"submit", "--prompt", "x", "--init-image", in, "--init-image-path", "a.png"});
  EXPECT_EQ(both.rc, 2);
  EXPECT_THAT(both.err, HasSubstr("give one of them"));
  Result escape = Run({"submit", "--prompt", "x", "--init-image-path", "../in.png"});
  EXPECT_EQ(escape.rc, 2);
  EXPECT_THAT(escape.err, HasSubstr("spec.init_image.path"));
  Result strength = Run({"submit", "--prompt", "x", "--strength", "0.5"});
  EXPECT_EQ(strength.rc, 2);
  EXPECT_THAT(strength.err, HasSubstr("spec.strength: needs init_image"));
  Result nine = Run({"submit", "--prompt", "x", "--lora", "a", "--lora", "b", "--lora", "c",
                     "--lora", "d", "--lora", "e", "--lora", "f", "--lora", "g", "--lora", "h",
                     "--lora", "i"});
  EXPECT_EQ(nine.rc, 2);
  EXPECT_THAT(nine.err, HasSubstr("spec.loras: 9 LoRAs exceeds the limit of 8"));

  // A prompts file with the same keys.
  const std::string p = dir_ + "/p.jsonl";
  std::ofstream(p) << "{\"prompt\": \"one\", \"init_image\": \"" << in
                   << "\", \"mask\": \"" << mask << "\", \"strength\": 0.5, \"loras\": [\"ink:0.5\"]}\n"
                   << "{\"prompt\": \"two\", \"init_image_path\": \"shots/a.png\"}\n"
                   << "three\n";
  Result b = Run({"batch", "--prompts", p, "--json"});
  ASSERT_EQ(b.rc, 0) << b.err;
  ASSERT_THAT(b.lines(), SizeIs(3));
  zfarm::v1::Job one = get(b.lines()[0]["job"]);
  EXPECT_EQ(one.spec().width_px(), 320);
  EXPECT_EQ(one.spec().height_px(), 304);
  EXPECT_FLOAT_EQ(one.spec().strength(), 0.5f);
  EXPECT_EQ(one.spec().mask_image().sha256().size(), 64u);
  EXPECT_EQ(get(b.lines()[1]["job"]).spec().init_image().sha256().size(), 64u);
  EXPECT_EQ(get(b.lines()[2]["job"]).spec().width_px(), 1024);
  std::ofstream(p) << "{\"prompt\": \"one\", \"loras\": [{\"name\": \"ink\"}]}\n";
  Result bad = Run({"batch", "--prompts", p});
  EXPECT_EQ(bad.rc, 2);
  EXPECT_THAT(bad.err, HasSubstr("objects are not accepted"));
}

// ControlNet from `zfarm submit`: the control picture travels as bytes (or as its Canny edge
// map with --canny), with the scale and the step fractions; bad values exit 2 naming the field.
TEST_F(CliSchedulerTest, SubmitWithAControlPicture) {
  const std::string pose = dir_ + "/pose.png";
  const std::string png = zfarm::testing::MakeTestPng(64, 48);
  std::ofstream(pose, std::ios::binary) << png;
  auto get = [this](const std::string& id) { return GetJob(id); };
  Result r = Run({"submit", "--prompt", "a dancer", "--control-image", pose, "--control-scale",
                  "0.8", "--control-start", "0.1", "--control-end", "0.9", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const zfarm::v1::Job job = get(r.lines()[0]["job"]);
  EXPECT_EQ(job.spec().control().image().sha256(), zfarm::base::Sha256Hex(png));
  EXPECT_FLOAT_EQ(job.spec().control().conditioning_scale(), 0.8f);
  EXPECT_FLOAT_EQ(job.spec().control().start(), 0.1f);
  EXPECT_FLOAT_EQ(job.spec().control().end(), 0.9f);
  EXPECT_EQ(job.spec().width_px(), 1024);  // not the control picture's size (as diffusers)
  Result canny = Run({"submit", "--prompt", "a dancer", "--control-image", pose, "--canny",
                      "--json"});
  if (zfarm::worker::CannyAvailable()) {
    ASSERT_EQ(canny.rc, 0) << canny.err;
    const zfarm::v1::Job edges = get(canny.lines()[0]["job"]);
    EXPECT_EQ(edges.spec().control().image().sha256().size(), 64u);
    EXPECT_NE(edges.spec().control().image().sha256(), zfarm::base::Sha256Hex(png));
  } else {
    EXPECT_EQ(canny.rc, 2);
    EXPECT_THAT(canny.err, HasSubstr("no OpenCV"));
  }
  Result scale = Run({"submit", "--prompt", "x", "--control-image", pose, "--control-scale", "3"});
  EXPECT_EQ(scale.rc, 2);
  EXPECT_THAT(scale.err, HasSubstr("spec.control.conditioning_scale: 3 is outside [0, 2]"));
  Result alone = Run({"submit", "--prompt", "x", "--control-scale", "0.5"});
  EXPECT_EQ(alone.rc, 2);
  EXPECT_THAT(alone.err, HasSubstr("need --control-image"));
  Result path = Run({"submit", "--prompt", "x", "--control-image-path", "p.png", "--canny"});
  EXPECT_EQ(path.rc, 2);
  EXPECT_THAT(path.err, HasSubstr("--canny needs --control-image"));
}

// 200 prompts; the scheduler is stopped and restarted on its journal while the
// CLI waits on one WatchJobs stream: exactly 200 results, and running the same
// batch again (same BUILD_TAG) submits 0 new jobs.
TEST_F(CliSchedulerTest, Batch200AcrossRestartThenRerunSubmitsNothing) {
  std::string prompts;
  for (int i = 1; i <= 200; ++i) absl::StrAppend(&prompts, "prompt ", i, "\n");
  const std::string p = dir_ + "/prompts.txt";
  std::ofstream(p) << prompts;
  env_["BUILD_TAG"] = "jenkins-render-200";
  const std::string out = dir_ + "/renders";
  const std::vector<std::string> args = {"batch",     "--prompts", p,         "--width",   "256",
                                         "--height",  "256",       "--steps", "1",         "--wait",
                                         "--out-dir", out,         "--json",  "--timeout", "120s"};
  env_["ZFARM_OUTPUT_ROOT"] = options_.scheduler.output_root;
  Result r;
  std::thread cli([&] { r = Run(args); });
  while (CountJobs() < 200) absl::SleepFor(absl::Milliseconds(20));
  StartWorker("w1");
  while (rendered_ < 50) absl::SleepFor(absl::Milliseconds(10));
  StopWorker();
  server_->Shutdown();
  server_.reset();
  StartScheduler();
  ASSERT_EQ(address_, options_.listen);
  StartWorker("w2");
  cli.join();
  ASSERT_EQ(r.rc, 0) << r.err;
  auto lines = r.lines();
  ASSERT_THAT(lines, SizeIs(200));
  std::set<std::string> ids;
  for (const json& l : lines) {
    ids.insert(l["job"].get<std::string>());
    EXPECT_EQ(l["state"], "succeeded");
  }
  EXPECT_THAT(ids, SizeIs(200));
  std::ifstream in(out + "/manifest.json");
  json m = json::parse(in);
  ASSERT_EQ(m["jobs"].size(), 200u);
  ASSERT_OK_AND_ASSIGN(std::string sha, base::Sha256OfFile(out + "/0200.png"));
  EXPECT_EQ(m["jobs"][199]["sha256"], sha);

  Result again =
      Run({"batch", "--prompts", p, "--width", "256", "--height", "256", "--steps", "1"});
  ASSERT_EQ(again.rc, 0) << again.err;
  EXPECT_THAT(again.err, HasSubstr("submitted=0 existing=200"));
  EXPECT_EQ(CountJobs(), 200);
}

}  // namespace
}  // namespace zfarm::client
