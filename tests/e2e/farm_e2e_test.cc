// The farm as users run it: real zfarm-scheduler, zfarm-worker serve (CPU, tiny
// model) and zfarm processes on loopback. Submit -> PNG with matching sha256;
// cancel a running job; kill -9 a worker mid-job; a worker cut off (SIGSTOP past
// the lease timeout) whose late commit is refused; a scheduler restart mid-job;
// a wrong model folder; SIGTERM drain. The offline guarantee (the worker dials
// nothing but the scheduler) is offline_test.cc.
#include <signal.h>
#include <sys/statvfs.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/base/files.h"
#include "scheduler/server.h"
#include "tests/testing/farm_client.h"
#include "tests/testing/farm_processes.h"
#include "tests/testing/mounts.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/test_certs.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm {
namespace {

namespace v1 = ::zfarm::v1;
namespace fs = std::filesystem;
using ::zfarm::testing::FarmClient;
using ::zfarm::testing::Spec;
using ::zfarm::testing::Subprocess;
using ::zfarm::testing::WaitFor;

// The file's sha256 ("" when it cannot be read: the comparison then fails).
std::string Sha256File(const std::string& path) {
  return zfarm::base::Sha256OfFile(path).value_or("");
}

// Runs a command, returns its stdout; *status gets the exit code.
std::string RunCommand(const std::string& cmd, int* status) {
  zfarm::testing::CommandResult r = zfarm::testing::RunCommand(cmd);
  *status = r.exit_code;
  return r.out;
}

class FarmTest : public zfarm::testing::FarmProcessTest {};

TEST_F(FarmTest, CliSubmitProducesThePngWithItsSha256AndSigtermExitsCleanly) {
  StartScheduler();
  Subprocess* w = StartWorker("w1", {"--health-listen=127.0.0.1:0"});
  std::string health = w->WaitForLine("grpc.health.v1 on ", absl::Seconds(5));
  ASSERT_FALSE(health.empty());
  const std::string health_addr = health.substr(18, health.find(' ', 18) - 18);
  // SERVING once warm and connected (the worker refreshes it every 250 ms).
  EXPECT_TRUE(WaitFor([&] { return scheduler::ProbeHealth(health_addr, absl::Seconds(2)).ok(); },
                      absl::Seconds(10)));

  int status = 0;
  std::string out =
      RunCommand(absl::StrCat(ZFARM_CLI_BIN, " submit --scheduler ", address_,
                              " --prompt 'a red fox in the snow' --width 256 --height 256"
                              " --steps 4 --seed 42 --wait --json"),
                 &status);
  ASSERT_EQ(status, 0) << out;
  nlohmann::json j = nlohmann::json::parse(out.substr(out.find('{')));
  ASSERT_EQ(j["state"], "succeeded") << out;
  const std::string path = dir_ + "/out/" + j["path"].get<std::string>();
  ASSERT_TRUE(fs::exists(path));
  EXPECT_EQ(Sha256File(path), j["sha256"].get<std::string>());
  EXPECT_TRUE(Files(".tmp").empty());
  // The same seed renders the same bytes on a second job.
  std::string again =
      RunCommand(absl::StrCat(ZFARM_CLI_BIN, " submit --scheduler ", address_,
                              " --prompt 'a red fox in the snow' --width 256 --height 256"
                              " --steps 4 --seed 42 --wait --json"),
                 &status);
  nlohmann::json j2 = nlohmann::json::parse(again.substr(again.find('{')));
  EXPECT_EQ(j2["sha256"], j["sha256"]);

  const int s = w->Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(s) && WEXITSTATUS(s) == 0) << w->ReadLog();
  EXPECT_NE(w->ReadLog().find("stopped after 2 images, 0 failures"), std::string::npos)
      << w->ReadLog();
}

// One real farm job per output format through the CLI: the extension follows the
// format, the file's sha256 is the job's, the media type is reported, and
// `zfarm-worker info` reads the parameters back from PNG text / EXIF / XMP.
TEST_F(FarmTest, EveryOutputFormatIsWrittenWithItsParameters) {
  StartScheduler();
  StartWorker("w1");
  struct Case {
    std::string flags, ext, media_type, format;
  };
  const std::vector<Case> cases = {{"--output-format png", ".png", "image/png", "png"},
                                   {"--output-format jpeg --quality 85", ".jpg", "image/jpeg", "jpeg"},
                                   {"--output-format webp", ".webp", "image/webp", "webp"}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.format);
    int status = 0;
    const std::string out = RunCommand(
        absl::StrCat(ZFARM_CLI_BIN, " submit --scheduler ", address_,
                     " --prompt 'a lighthouse, <b>bold</b> & \"quoted\"' --width 256 --height 256"
                     " --steps 2 --seed 42 --wait --json ", c.flags),
        &status);
    ASSERT_EQ(status, 0) << out;
    nlohmann::json j = nlohmann::json::parse(out.substr(out.find('{')));
    ASSERT_EQ(j["state"], "succeeded") << out;
    const std::string rel = j["path"].get<std::string>();
    EXPECT_EQ(fs::path(rel).extension(), c.ext);
    EXPECT_EQ(j["media_type"], c.media_type) << out;
    const std::string path = dir_ + "/out/" + rel;
    ASSERT_TRUE(fs::exists(path));
    EXPECT_EQ(Sha256File(path), j["sha256"].get<std::string>());
    const std::string info = RunCommand(absl::StrCat(ZFARM_WORKER_BIN, " info --json ", path), &status);
    ASSERT_EQ(status, 0) << info;
    nlohmann::json i = nlohmann::json::parse(info.substr(info.find('{')));
    EXPECT_EQ(i["format"], c.format);
    EXPECT_EQ(i["width"], 256);
    EXPECT_NE(i["parameters"].get<std::string>().find("Seed: 42, Size: 256x256"), std::string::npos)
        << info;
    EXPECT_EQ(i["zfarm"]["prompt"], "a lighthouse, <b>bold</b> & \"quoted\"");
  }
  EXPECT_TRUE(Files(".tmp").empty());
  // A quality outside [1, 100] is refused at submit, naming the field.
  int status = 0;
  const std::string bad = RunCommand(
      absl::StrCat(ZFARM_CLI_BIN, " submit --scheduler ", address_,
                   " --prompt x --output-format webp --quality 101 2>&1"),
      &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(bad.find("quality"), std::string::npos) << bad;
}

// Image-to-image with a mask and a LoRA through the CLI on a real farm: the init picture
// (a 256x256 render of the farm itself) and a mask of another size (resized by the worker,
// as diffusers does) go up as bytes, the worker resolves the LoRA in its --lora-dir, and the
// result records the strength, both inputs' sha256 and the LoRA's. A size other than the
// picture's is refused at submit, before any worker sees it.
TEST_F(FarmTest, ImageToImageWithAMaskAndALoraThroughTheCli) {
  StartScheduler();
  fs::create_directories(dir_ + "/loras");
  fs::copy_file(std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/lora/tiny_diffusers.safetensors",
                dir_ + "/loras/a.safetensors");
  Subprocess* w = StartWorker("w1", {"--lora-dir=" + dir_ + "/loras"});
  auto render = [&](const std::string& flags) {
    int status = 0;
    const std::string out = RunCommand(
        absl::StrCat(ZFARM_CLI_BIN, " submit --scheduler ", address_, " --steps 2 --seed 42",
                     " --wait --json ", flags, " 2>&1"),
        &status);
    EXPECT_EQ(status, 0) << out;
    nlohmann::json j = nlohmann::json::parse(out.substr(out.find('{')));
    EXPECT_EQ(j["state"], "succeeded") << out << w->ReadLog();
    return j;
  };
  const std::string in = dir_ + "/out/" +
      render("--prompt 'a harbour at noon' --width 256 --height 256")["path"].get<std::string>();
  const std::string mask = dir_ + "/out/" +
      render("--prompt 'a mask' --width 320 --height 256")["path"].get<std::string>();

  nlohmann::json j = render(absl::StrCat("--prompt 'a harbour at dusk' --init-image ", in,
                                         " --strength 0.6 --mask ", mask, " --lora a:0.8"));
  const std::string path = dir_ + "/out/" + j["path"].get<std::string>();
  ASSERT_TRUE(fs::exists(path));
  EXPECT_EQ(Sha256File(path), j["sha256"].get<std::string>());
  int status = 0;
  const std::string info = RunCommand(absl::StrCat(ZFARM_WORKER_BIN, " info --json ", path), &status);
  ASSERT_EQ(status, 0) << info;
  nlohmann::json i = nlohmann::json::parse(info.substr(info.find('{')));
  EXPECT_EQ(i["width"], 256);
  EXPECT_EQ(i["height"], 256);
  const std::string lora_sha = Sha256File(dir_ + "/loras/a.safetensors");
  const std::string params = i["parameters"].get<std::string>();
  EXPECT_NE(params.find("a harbour at dusk <lora:a:0.8>\n"), std::string::npos) << params;
  EXPECT_NE(params.find(absl::StrCat("Lora hashes: \"a: ", lora_sha.substr(0, 12), "\"")),
            std::string::npos)
      << params;
  EXPECT_NE(params.find(absl::StrCat("Denoising strength: 0.6, Init image sha256: ",
                                     Sha256File(in), ", Mask sha256: ", Sha256File(mask))),
            std::string::npos)
      << params;
  ASSERT_EQ(i["zfarm"]["loras"].size(), 1u) << info;
  EXPECT_EQ(i["zfarm"]["loras"][0]["sha256"], lora_sha);

  // Another size than the picture's: refused at submit naming the field, nothing rendered.
  const std::string refused = RunCommand(
      absl::StrCat(ZFARM_CLI_BIN, " submit --scheduler ", address_, " --prompt x --init-image ",
                   in, " --width 512 2>&1"),
      &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(refused.find("spec.width_px: 512 differs from the init image's width_px 256"),
            std::string::npos)
      << refused;
  EXPECT_EQ(Files(".png").size(), 3u);
}

TEST_F(FarmTest, CancelARunningJob) {
  StartScheduler();
  StartWorker("w1");
  const std::string id = Submit(50);
  ASSERT_TRUE(WaitFor([&] { return GetJob(id).progress().step() >= 1; }));
  ASSERT_TRUE(client_->Cancel(id));
  v1::Job j = WaitFinal(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_LT(j.progress().step(), 50);
  EXPECT_TRUE(Files(".png").empty());
  // The worker takes the next job.
  EXPECT_EQ(WaitFinal(Submit(2)).state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(FarmTest, KillNineAWorkerMidJobAnotherFinishesItOnce) {
  StartScheduler();
  Subprocess* w1 = StartWorker("w1");
  const std::string id = Submit(50, 512);
  ASSERT_TRUE(WaitFor([&] { return GetJob(id).progress().step() >= 1; }));
  ASSERT_EQ(GetJob(id).worker(), "w1");
  // Frozen mid-job while w2 starts (on a loaded machine the tiny model's 30 steps can end
  // before a second worker is READY), then killed: the job is never finished by w1.
  w1->Signal(SIGSTOP);
  ASSERT_NE(GetJob(id).state(), v1::JOB_STATE_SUCCEEDED);
  StartWorker("w2");
  w1->Stop(SIGKILL);
  v1::Job j = WaitFinal(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(j.worker(), "w2");
  EXPECT_EQ(Files(".png").size(), 1u);
  EXPECT_TRUE(Files(".tmp").empty());
}

TEST_F(FarmTest, CutOffWorkerFinishesLateAndItsCommitIsRefused) {
  StartScheduler();
  Subprocess* w1 = StartWorker("w1");
  const std::string id = Submit(20);
  ASSERT_TRUE(WaitFor([&] { return GetJob(id).progress().step() >= 1; }));
  // Freeze w1 past the 2 s lease timeout: the scheduler loses it and requeues.
  w1->Signal(SIGSTOP);
  ASSERT_TRUE(WaitFor([&] { return WorkerState("w1") == v1::WORKER_STATE_LOST; }));
  StartWorker("w2");
  v1::Job j = WaitFinal(id);
  ASSERT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED);
  ASSERT_EQ(j.worker(), "w2");
  // w1 wakes, finishes its render, reconnects: its commit is refused, temp deleted.
  w1->Signal(SIGCONT);
  EXPECT_FALSE(w1->WaitForLine("event=commit_refused", absl::Seconds(60)).empty()) << w1->ReadLog();
  EXPECT_EQ(Files(".png"), std::vector<std::string>{j.result().path()});
  EXPECT_TRUE(Files(".tmp").empty());
  EXPECT_EQ(GetJob(id).worker(), "w2");
}

TEST_F(FarmTest, SchedulerRestartMidJobTheJobFinishesOnce) {
  StartScheduler();
  StartWorker("w1");
  const std::string id = Submit(30);
  ASSERT_TRUE(WaitFor([&] { return GetJob(id).progress().step() >= 1; }));
  scheduler_->Stop(SIGKILL);
  StartScheduler(port_);  // same state dir and address; the worker reconnects
  v1::Job j = WaitFinal(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED) << j.DebugString();
  EXPECT_EQ(j.worker(), "w1");
  EXPECT_EQ(Files(".png").size(), 1u);
  EXPECT_TRUE(Files(".tmp").empty());
}

TEST_F(FarmTest, WrongModelFolderIsAClearErrorAndNeverReady) {
  StartScheduler();
  // A copy of the tiny model with one weight file missing.
  const std::string broken = dir_ + "/broken-model";
  fs::copy(ZFARM_TINY_MODEL_DIR, broken, fs::copy_options::recursive);
  for (auto& e : fs::directory_iterator(broken + "/transformer")) {
    if (e.path().extension() == ".safetensors") {
      fs::remove(e.path());
      break;
    }
  }
  Subprocess w(WorkerArgs("bad", broken), dir_ + "/bad.log");
  const int s = w.Wait(absl::Seconds(60));
  ASSERT_TRUE(WIFEXITED(s)) << w.ReadLog();
  EXPECT_EQ(WEXITSTATUS(s), 1);
  const std::string log = w.ReadLog();
  EXPECT_NE(log.find("cannot load model"), std::string::npos) << log;
  EXPECT_NE(log.find("transformer"), std::string::npos) << log;
  EXPECT_EQ(WorkerState("bad"), v1::WORKER_STATE_UNSPECIFIED);  // never connected
  // And a folder that is not there at all.
  Subprocess w2(WorkerArgs("bad2", dir_ + "/no-such-model"), dir_ + "/bad2.log");
  const int s2 = w2.Wait(absl::Seconds(60));
  EXPECT_TRUE(WIFEXITED(s2) && WEXITSTATUS(s2) == 1) << w2.ReadLog();
  EXPECT_NE(w2.ReadLog().find("no-such-model"), std::string::npos);
}

TEST_F(FarmTest, DoctorPassesOnTheTinyModelAndNamesABrokenFile) {
  int status = 0;
  const std::string doctor =
      absl::StrCat(ZFARM_WORKER_BIN, " doctor --device cpu --size 64x64",
                   " --steps 1 --json --output-root ", dir_, "/out --model ");
  std::string out = RunCommand(doctor + ZFARM_TINY_MODEL_DIR, &status);
  ASSERT_EQ(status, 0) << out;
  nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_TRUE(j["ok"].get<bool>());
  std::set<std::string> names;
  for (const auto& c : j["checks"]) {
    names.insert(c["name"].get<std::string>());
    EXPECT_TRUE(c["ok"].get<bool>()) << c.dump();
  }
  EXPECT_EQ(names, (std::set<std::string>{"files", "device", "output_root", "load"}));
  for (const auto& c : j["checks"]) {
    if (c["name"] == "load") {
      EXPECT_GT(c["data"]["warm_generation_seconds"].get<double>(), 0);
    }
  }

  // One flipped byte in a weight file: the md5 check names it, exit 1.
  const std::string broken = dir_ + "/broken-model";
  fs::copy(ZFARM_TINY_MODEL_DIR, broken, fs::copy_options::recursive);
  std::string victim;
  for (auto& e : fs::directory_iterator(broken + "/vae")) {
    if (e.path().extension() == ".safetensors") victim = e.path().string();
  }
  ASSERT_FALSE(victim.empty());
  {
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-1, std::ios::end);
    char c = 0;
    f.get(c);
    f.seekp(-1, std::ios::end);
    f.put(static_cast<char>(c ^ 0x5a));
  }
  out = RunCommand(doctor + broken + " --no-load", &status);
  EXPECT_EQ(status, 1) << out;
  nlohmann::json b = nlohmann::json::parse(out);
  EXPECT_FALSE(b["ok"].get<bool>());
  EXPECT_NE(b["checks"][0]["detail"].get<std::string>().find("vae/"), std::string::npos)
      << b.dump(2);

  // --weights-cache: no copy yet -> the check fails naming the command that writes it;
  // after `zfarm-worker cache-weights` it passes.
  const std::string cache = dir_ + "/weights-cache";
  const std::string with_cache =
      absl::StrCat(doctor, ZFARM_TINY_MODEL_DIR, " --no-load --fast --weights-cache ", cache);
  out = RunCommand(with_cache, &status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("run zfarm-worker cache-weights"), std::string::npos) << out;
  out = RunCommand(absl::StrCat(ZFARM_WORKER_BIN, " cache-weights --model ", ZFARM_TINY_MODEL_DIR,
                                " --weights-cache ", cache),
                   &status);
  ASSERT_EQ(status, 0) << out;
  out = RunCommand(with_cache, &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("current"), std::string::npos) << out;
}

TEST_F(FarmTest, FullOutputDiskFailsTheJobCleanlyAndTheWorkerStaysHealthy) {
  // The output root is a 4 MiB tmpfs (mounted by the test: it runs as root, like CI).
  const std::string root = dir_ + "/out";
  ASSERT_OK_AND_ASSIGN(auto tmpfs, zfarm::testing::ScratchMount::Tmpfs(root, "4m"));
  int status = 0;
  StartScheduler();
  // --min-free-disk-mb=0 lets the write itself hit ENOSPC.
  StartWorker("w1", {"--min-free-disk-mb=0"});
  // Leave ~64 KiB free: a 256² PNG of the tiny model (~160 KB) does not fit.
  RunCommand("dd if=/dev/zero of=" + root + "/filler bs=1k count=$(( $(df -k --output=avail " +
                 root + " | tail -1) - 64 )) 2>/dev/null; true",
             &status);
  struct statvfs vfs {};
  ASSERT_EQ(statvfs(root.c_str(), &vfs), 0);
  ASSERT_LT(vfs.f_bavail * vfs.f_frsize, 100u << 10);
  v1::Job j = WaitFinal(Submit(2));
  EXPECT_EQ(j.state(), v1::JOB_STATE_FAILED);
  // Caught before rendering (free space below the image's raw size); a disk that
  // fills during the write fails with ENOSPC (faults_disk_test).
  EXPECT_NE(j.error().message().find("output disk full"), std::string::npos) << j.error().message();
  EXPECT_TRUE(Files(".png").empty());
  EXPECT_TRUE(Files(".tmp").empty());
  // The worker is still READY; with space freed the next job succeeds.
  EXPECT_EQ(WorkerState("w1"), v1::WORKER_STATE_READY);
  fs::remove(root + "/filler");
  EXPECT_EQ(WaitFinal(Submit(2)).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Files(".png").size(), 1u);
}

TEST_F(FarmTest, WithTokensOnlyAWorkerRoleTokenConnects) {
  const std::string tokens = dir_ + "/tokens";
  {
    std::ofstream f(tokens);
    f << "worker-token-0123456789abcdef render-farm worker\n"
      << "submit-token-0123456789abcdef ci-team submitter\n";
  }
  std::ofstream(dir_ + "/worker.tok") << "worker-token-0123456789abcdef\n";
  std::ofstream(dir_ + "/submit.tok") << "submit-token-0123456789abcdef\n";
  StartScheduler(0, {"--token-file=" + tokens});
  // (The fixture's admin client has no token: progress is read from the logs.)
  // A submitter token is refused on WorkerService: the worker never gets a session.
  Subprocess bad(
      [&] {
        auto a = WorkerArgs("intruder");
        a.push_back("--token-file=" + dir_ + "/submit.tok");
        return a;
      }(),
      dir_ + "/intruder.log");
  // A worker-role token connects and renders a job submitted with a submitter token.
  Subprocess good(
      [&] {
        auto a = WorkerArgs("w1");
        a.push_back("--token-file=" + dir_ + "/worker.tok");
        return a;
      }(),
      dir_ + "/w1.log");
  ASSERT_FALSE(good.WaitForLine("event=worker_welcomed", absl::Seconds(60)).empty())
      << good.ReadLog();
  int status = 0;
  std::string out = RunCommand(
      absl::StrCat(ZFARM_CLI_BIN, " submit --scheduler ", address_, " --token-file ", dir_,
                   "/submit.tok --prompt 'a fox' --width 256 --height 256 --steps 2 --wait --json"),
      &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("\"succeeded\""), std::string::npos) << out;
  EXPECT_FALSE(bad.WaitForLine("PERMISSION_DENIED", absl::Seconds(30)).empty()) << bad.ReadLog();
  EXPECT_EQ(bad.ReadLog().find("event=worker_welcomed"), std::string::npos);
}

// Transport security with the real binaries: mutual TLS on every port (scheduler
// gRPC and /metrics; the worker's channel, health port and /metrics; the CLI)
// plus tokens, one job rendered end to end, and a client without a certificate
// refused everywhere.
TEST_F(FarmTest, MutualTlsOnEveryPortWithTokens) {
  const std::string d = dir_;
  ASSERT_TRUE(zfarm::testing::MakeTestCertificates(d).ok());
  std::ofstream(d + "/tokens") << "worker-token-0123456789abcdef render-farm worker\n"
                               << "submit-token-0123456789abcdef ci-team submitter\n";
  std::ofstream(d + "/worker.tok") << "worker-token-0123456789abcdef\n";
  std::ofstream(d + "/submit.tok") << "submit-token-0123456789abcdef\n";
  StartScheduler(0, {"--tls-cert=" + d + "/server.pem", "--tls-key=" + d + "/server.key",
                     "--tls-client-ca=" + d + "/ca.pem", "--token-file=" + d + "/tokens",
                     "--metrics-listen=127.0.0.1:0"});
  if (HasFatalFailure()) return;
  const std::string client_tls = absl::StrCat(" --tls-ca ", d, "/ca.pem --tls-cert ", d,
                                              "/client.pem --tls-key ", d, "/client.key");
  Subprocess worker(
      [&] {
        auto a = WorkerArgs("w-tls");
        for (const std::string& f : std::vector<std::string>{
                 "--tls-ca=" + d + "/ca.pem", "--tls-cert=" + d + "/client.pem",
                 "--tls-key=" + d + "/client.key", "--token-file=" + d + "/worker.tok",
                 "--health-listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0",
                 "--health-tls-cert=" + d + "/server.pem", "--health-tls-key=" + d + "/server.key",
                 "--health-tls-client-ca=" + d + "/ca.pem"}) {
          a.push_back(f);
        }
        return a;
      }(),
      d + "/w-tls.log");
  ASSERT_FALSE(worker.WaitForLine("event=worker_welcomed", absl::Seconds(60)).empty())
      << worker.ReadLog();
  // "grpc.health.v1 on HOST:PORT (...)" and "/metrics on port N" from its stdout.
  std::vector<std::string> words =
      absl::StrSplit(worker.WaitForLine("grpc.health.v1 on ", absl::Seconds(5)), ' ');
  ASSERT_GE(words.size(), 3u) << worker.ReadLog();
  const std::string health_addr = words[2];
  words = absl::StrSplit(worker.WaitForLine("/metrics on port ", absl::Seconds(5)), ' ');
  ASSERT_GE(words.size(), 4u) << worker.ReadLog();
  const std::string metrics_port = words[3];

  int status = 0;
  std::string out = RunCommand(
      absl::StrCat(ZFARM_CLI_BIN, " submit --scheduler ", address_, client_tls, " --token-file ", d,
                   "/submit.tok", " --prompt 'a fox' --width 256 --height 256",
                   " --steps 2 --wait --json 2>&1"),
      &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("\"succeeded\""), std::string::npos) << out;
  EXPECT_EQ(Files(".png").size(), 1u);

  // The worker's health port: SERVING over mutual TLS; no certificate -> refused.
  out = RunCommand(
      absl::StrCat(ZFARM_CLI_BIN, " health ", health_addr, client_tls, " --timeout 5s 2>&1"),
      &status);
  EXPECT_EQ(status, 0) << health_addr << ": " << out;
  out = RunCommand(absl::StrCat(ZFARM_CLI_BIN, " health ", health_addr, " --tls-ca ", d,
                                "/ca.pem --timeout 2s 2>&1"),
                   &status);
  EXPECT_NE(status, 0) << out;
  // The worker's /metrics over mutual TLS counts the image; no certificate -> no answer.
  const std::string curl =
      "env -u LD_LIBRARY_PATH curl -sS --max-time 10 --cacert " + d + "/ca.pem";
  out = RunCommand(absl::StrCat(curl, " --cert ", d, "/client.pem --key ", d,
                                "/client.key https://127.0.0.1:", metrics_port, "/metrics"),
                   &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("zfarm_worker_images_total"), std::string::npos) << out;
  EXPECT_NE(out.find("binary=\"zfarm-worker\"} 1"), std::string::npos) << out;  // zfarm_build_info
  EXPECT_NE(out.find("\nprocess_resident_memory_bytes "), std::string::npos) << out;
  EXPECT_NE(out.find("\nprocess_open_fds "), std::string::npos) << out;
  RunCommand(absl::StrCat(curl, " https://127.0.0.1:", metrics_port, "/metrics 2>/dev/null"),
             &status);
  EXPECT_NE(status, 0);
  worker.Stop(SIGTERM);
  for (const std::string& log : {worker.ReadLog(), scheduler_->ReadLog()}) {
    EXPECT_EQ(log.find("token-0123456789abcdef"), std::string::npos);  // tokens never logged
  }
}

}  // namespace
}  // namespace zfarm
