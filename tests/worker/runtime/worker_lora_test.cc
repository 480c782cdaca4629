// LoRA jobs through the real worker (Worker + PipelineRenderer on the tiny model) and the
// in-process scheduler: LoRAs resolved by name in --lora-dir, recorded in the PNG, reported
// as active in heartbeats; bad LoRAs (unknown name, truncated file, damaged header, another
// architecture, scale out of range) fail that job INVALID_REQUEST naming the file and key
// while the worker stays serving and renders the next job byte-identical to before. The
// catalogue goes into the hello and, when the directory changes, into one heartbeat; a worker
// without --lora-dir fails LoRA jobs INVALID_REQUEST.
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/files.h"
#include "tests/testing/farm_client.h"
#include "tests/testing/scheduler_fixture.h"
#include "tests/testing/status_matchers.h"
#include "tests/worker/runtime/picture_jobs.h"
#include "worker/io/file_util.h"
#include "worker/io/png.h"
#include "worker/io/safetensors.h"
#include "worker/pipeline/pipeline_renderer.h"
#include "worker/runtime/lora_catalog.h"
#include "worker/runtime/worker.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::worker {
namespace {

namespace v1 = ::zfarm::v1;
using ::testing::HasSubstr;
using ::zfarm::testing::FarmClient;
using ::zfarm::testing::Spec;
using ::zfarm::testing::TestScheduler;

std::string Testdata(const std::string& stem) {
  return std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/lora/" + stem + ".safetensors";
}

void Put(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A fresh --lora-dir: tiny_kohya and tiny_dot, a truncated and a damaged copy, a LoRA for
// a 32-wide model, and files the catalogue skips (bad name, other suffix).
std::string MakeLoraDir() {
  char tmpl[] = "/tmp/zfarm-loras-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return "";
  const std::string dir = tmpl;
  auto kohya = ReadSmallFile(Testdata("tiny_kohya"), 1 << 20);
  auto dot = ReadSmallFile(Testdata("tiny_dot"), 1 << 20);
  if (!kohya.ok() || !dot.ok()) return "";
  Put(dir + "/tiny_kohya.safetensors", *kohya);
  Put(dir + "/tiny_dot.safetensors", *dot);
  Put(dir + "/broken.safetensors", kohya->substr(0, 200));
  std::string damaged = *kohya;
  damaged[12] = '\x02';
  Put(dir + "/damaged.safetensors", damaged);
  SafetensorsWriter w;
  const std::string zeros(4 * 32 * 4, '\0');
  (void)w.Add("lora_unet_layers_0_attention_to_q.lora_down.weight", DType::kF32, {4, 32}, zeros);
  (void)w.Add("lora_unet_layers_0_attention_to_q.lora_up.weight", DType::kF32, {32, 4}, zeros);
  (void)w.Write(dir + "/other_arch.safetensors");
  Put(dir + "/a..b.safetensors", *dot);
  Put(dir + "/bad\xff.safetensors", *dot);
  Put(dir + "/notes.txt", "not a lora");
  return dir;
}

using testing::ParametersOf;

int RemoveEntry(const char* path, const struct stat*, int, struct FTW*) { return std::remove(path); }

class WorkerLoraTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeLoraDir();
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    if (!dir_.empty()) nftw(dir_.c_str(), RemoveEntry, 8, FTW_DEPTH | FTW_PHYS);
  }

  std::unique_ptr<Worker> MakeWorker(const std::string& address, const std::string& output_root,
                                     bool lora_dir = true) {
    auto catalog = LoraCatalog::Open(dir_);
    EXPECT_OK(catalog.status());
    if (!catalog.ok()) return nullptr;
    Worker::Options o;
    o.name = "lora-worker";
    if (lora_dir) o.loras = *std::move(catalog);
    return testing::MakeTinyWorker(address, output_root, PipelineOptions{}, o);
  }

  std::string dir_;
};

v1::JobSpec LoraSpec(std::vector<std::pair<std::string, float>> loras) {
  v1::JobSpec s = Spec("a red fox", 256, 2);
  s.set_seed(5);
  for (const auto& [name, scale] : loras) {
    v1::LoraRef* r = s.add_loras();
    r->set_name(name);
    r->set_scale(scale);
  }
  return s;
}

TEST_F(WorkerLoraTest, LoraJobsRenderAndBadOnesFailInvalidRequestWhileTheWorkerServes) {
  zfarm::scheduler::ServerOptions so;
  so.scheduler.heartbeat_interval = absl::Milliseconds(200);
  ASSERT_OK_AND_ASSIGN(auto farm, TestScheduler::Start(so));
  FarmClient client(farm->channel());
  auto w = MakeWorker(farm->address(), farm->output_root());
  ASSERT_NE(w, nullptr);
  w->Start();
  ASSERT_TRUE(zfarm::testing::WaitFor([&] { return w->Serving(); }, absl::Seconds(20)));
  auto render = [&](const v1::JobSpec& spec) {
    v1::Job j = client.WaitFinal(client.Submit(spec), absl::Seconds(30));
    return j;
  };
  auto pixels = [&](const v1::Job& j) -> std::vector<uint8_t> {
    auto bytes = ReadSmallFile(farm->output_root() + "/" + j.result().path(), 64 << 20);
    if (!bytes.ok()) return {};
    auto png = DecodePng(*bytes);
    return png.ok() ? png->rgb : std::vector<uint8_t>();
  };

  const v1::Job plain = render(LoraSpec({}));
  ASSERT_EQ(plain.state(), v1::JOB_STATE_SUCCEEDED) << plain.DebugString();
  const std::vector<uint8_t> before = pixels(plain);
  ASSERT_FALSE(before.empty());

  const v1::Job with = render(LoraSpec({{"tiny_kohya", 0.8f}, {"tiny_dot", -1.5f}}));
  ASSERT_EQ(with.state(), v1::JOB_STATE_SUCCEEDED) << with.DebugString();
  EXPECT_NE(pixels(with), before);
  ASSERT_OK_AND_ASSIGN(std::string kohya_sha, base::Sha256OfFile(Testdata("tiny_kohya")));
  const std::string params = ParametersOf(farm->output_root() + "/" + with.result().path());
  EXPECT_THAT(params, HasSubstr("a red fox <lora:tiny_kohya:0.8> <lora:tiny_dot:-1.5>\n"));
  EXPECT_THAT(params, HasSubstr("Lora hashes: \"tiny_kohya: " + kohya_sha.substr(0, 12) + ", tiny_dot: "));
  EXPECT_THAT(params, HasSubstr("{\"name\":\"tiny_kohya\",\"scale\":0.8,\"sha256\":\"" + kohya_sha + "\"}"));
  v1::WorkerHeartbeat hb = w->MakeHeartbeat();
  EXPECT_THAT(std::vector<std::string>(hb.active_loras().begin(), hb.active_loras().end()),
              ::testing::ElementsAre("tiny_kohya", "tiny_dot"));

  // A file whose header reads is in the catalogue, so the scheduler dispatches the
  // job; the worker fails it naming the key and both shapes, and keeps serving.
  const v1::Job other = render(LoraSpec({{"other_arch", 1}}));
  EXPECT_EQ(other.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(other.error().reason(), v1::FAILURE_REASON_INVALID_REQUEST) << other.DebugString();
  EXPECT_THAT(other.error().message(),
              HasSubstr("other_arch.safetensors: LoRA key "
                        "'lora_unet_layers_0_attention_to_q.lora_down.weight' targets "
                        "layers.0.attention.to_q.weight of shape [64, 64] but its update up x "
                        "down is [32, 32]"));
  EXPECT_TRUE(w->Serving());
  for (const std::string name : {"broken", "damaged"}) {  // listed, then refused on load
    const v1::Job j = render(LoraSpec({{name, 1}}));
    EXPECT_EQ(j.state(), v1::JOB_STATE_FAILED) << name;
    EXPECT_EQ(j.error().reason(), v1::FAILURE_REASON_INVALID_REQUEST) << j.DebugString();
    EXPECT_THAT(j.error().message(), HasSubstr(dir_ + "/" + name + ".safetensors"));
    EXPECT_TRUE(w->Serving()) << name;
  }
  // A name no worker has is never dispatched: the job waits QUEUED. Bad names
  // and scales are refused at submit (scheduler validation tests).
  const std::string nope = client.Submit(LoraSpec({{"nope", 1}}));
  ASSERT_FALSE(nope.empty());
  EXPECT_EQ(client.GetJob(nope).state(), v1::JOB_STATE_QUEUED);
  EXPECT_TRUE(client.Cancel(nope));
  // Still the LoRAs of the last good job, and back to the original weights exactly.
  EXPECT_THAT(w->MakeHeartbeat().active_loras(), ::testing::ElementsAre("tiny_kohya", "tiny_dot"));
  const v1::Job again = render(LoraSpec({}));
  ASSERT_EQ(again.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(pixels(again), before);
  EXPECT_EQ(w->MakeHeartbeat().active_loras_size(), 0);
  EXPECT_TRUE(w->stats().healthy);
  w->Shutdown();
}

TEST_F(WorkerLoraTest, CatalogueInTheHelloAndOnceInAHeartbeatWhenTheDirectoryChanges) {
  auto w = MakeWorker("127.0.0.1:1", ::testing::TempDir());  // never started
  ASSERT_NE(w, nullptr);
  v1::WorkerHello h = w->MakeHello();
  std::vector<std::string> names;
  for (const auto& l : h.loras()) {
    names.push_back(l.name());
    EXPECT_EQ(l.sha256().size(), 64u);
  }
  // a..b breaks the name rule, bad\xff is no UTF-8, notes.txt no .safetensors: left out.
  EXPECT_THAT(names, ::testing::ElementsAre("broken", "damaged", "other_arch", "tiny_dot", "tiny_kohya"));
  ASSERT_OK_AND_ASSIGN(std::string dot_sha, base::Sha256OfFile(Testdata("tiny_dot")));
  EXPECT_EQ(h.loras(3).sha256(), dot_sha);
  EXPECT_FALSE(w->MakeHeartbeat().has_lora_catalog());

  auto comfy = ReadSmallFile(Testdata("tiny_comfy"), 1 << 20);
  ASSERT_OK(comfy.status());
  Put(dir_ + "/tiny_comfy.safetensors", *comfy);
  v1::WorkerHeartbeat hb = w->MakeHeartbeat();
  ASSERT_TRUE(hb.has_lora_catalog());
  EXPECT_EQ(hb.lora_catalog().loras_size(), 6);
  EXPECT_FALSE(w->MakeHeartbeat().has_lora_catalog());
  // Same name, new contents: a new sha256 is reported.
  Put(dir_ + "/tiny_comfy.safetensors", *comfy + std::string(8, ' '));
  hb = w->MakeHeartbeat();
  ASSERT_TRUE(hb.has_lora_catalog());
  for (const auto& l : hb.lora_catalog().loras()) {
    if (l.name() == "tiny_comfy") {
      ASSERT_OK_AND_ASSIGN(std::string sha, base::Sha256OfFile(dir_ + "/tiny_comfy.safetensors"));
      EXPECT_EQ(l.sha256(), sha);
    }
  }
  ::unlink((dir_ + "/tiny_comfy.safetensors").c_str());
  EXPECT_EQ(w->MakeHeartbeat().lora_catalog().loras_size(), 5);
}

// Without --lora-dir the worker does not advertise the "lora" feature, so the
// scheduler never gives it a LoRA job (the job waits, QUEUED, for a worker that
// can run it) while plain jobs render. (A LoRA lease reaching such a worker
// anyway fails INVALID_REQUEST naming spec.loras[0].name: pipeline_renderer.)
TEST_F(WorkerLoraTest, WorkerWithoutLoraDirIsNotGivenLoraJobsAndRendersOthers) {
  zfarm::scheduler::ServerOptions so;
  so.scheduler.heartbeat_interval = absl::Milliseconds(200);
  ASSERT_OK_AND_ASSIGN(auto farm, TestScheduler::Start(so));
  FarmClient client(farm->channel());
  auto w = MakeWorker(farm->address(), farm->output_root(), /*lora_dir=*/false);
  ASSERT_NE(w, nullptr);
  v1::WorkerHello hello = w->MakeHello();
  EXPECT_EQ(hello.loras_size(), 0);
  EXPECT_THAT(std::vector<std::string>(hello.features().begin(), hello.features().end()),
              ::testing::Not(::testing::Contains("lora")));
  w->Start();
  ASSERT_TRUE(zfarm::testing::WaitFor([&] { return w->Serving(); }, absl::Seconds(20)));
  const std::string lora_job = client.Submit(LoraSpec({{"tiny_kohya", 1.0f}}));
  v1::Job j = client.WaitFinal(client.Submit(LoraSpec({})), absl::Seconds(30));
  EXPECT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(client.GetJob(lora_job).state(), v1::JOB_STATE_QUEUED);
  EXPECT_TRUE(client.Cancel(lora_job));
  w->Shutdown();
}

}  // namespace
}  // namespace zfarm::worker
