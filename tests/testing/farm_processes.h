#ifndef ZFARM_TESTS_TESTING_FARM_PROCESSES_H_
#define ZFARM_TESTS_TESTING_FARM_PROCESSES_H_

// A gtest fixture that runs the farm as users do: the real zfarm-scheduler and
// `zfarm-worker serve` (CPU, tiny model; or $ZFARM_E2E_DEVICE, e.g. cuda:0 on the
// GPU host) as child processes on loopback, a fresh directory per test
// (dir() + "/state", "/out", the logs), a FarmClient on the scheduler.
//
// The including test target defines ZFARM_SCHEDULER_BIN, ZFARM_WORKER_BIN and
// ZFARM_TINY_MODEL_DIR (tests/e2e/CMakeLists.txt shows how).
//
//   class MyTest : public zfarm::testing::FarmProcessTest {};
//   TEST_F(MyTest, Renders) {
//     StartScheduler();
//     StartWorker("w1");
//     EXPECT_EQ(WaitFinal(Submit(2)).state(), zfarm::v1::JOB_STATE_SUCCEEDED);
//   }
//
// The directory is removed after a passing test and kept after a failing one.
// Not thread-safe (one test thread).

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/testing/farm_client.h"
#include "tests/testing/subprocess.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"

#if !defined(ZFARM_SCHEDULER_BIN) || !defined(ZFARM_WORKER_BIN) || !defined(ZFARM_TINY_MODEL_DIR)
#error "define ZFARM_SCHEDULER_BIN, ZFARM_WORKER_BIN and ZFARM_TINY_MODEL_DIR for farm_processes.h"
#endif

namespace zfarm::testing {

class FarmProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() /
            absl::StrCat("zfarm-e2e-", getpid(), "-",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ + "/out");
  }
  void TearDown() override {
    workers_.clear();
    scheduler_.reset();
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }

  const std::string& dir() const { return dir_; }

  // Starts the scheduler on listen_host_:`port` (0 = a free one) with short
  // heartbeats and a 2 s lease timeout, and waits until it listens.
  void StartScheduler(int port = 0, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {ZFARM_SCHEDULER_BIN,
                                     absl::StrCat("--listen=", listen_host_, ":", port),
                                     "--state-dir=" + dir_ + "/state",
                                     "--output-root=" + dir_ + "/out",
                                     "--heartbeat_interval=200ms",
                                     "--lease_timeout=2s"};
    for (auto& a : extra) argv.push_back(a);
    scheduler_ = std::make_unique<Subprocess>(
        argv, absl::StrCat(dir_, "/scheduler-", ++scheduler_starts_, ".log"));
    std::string line = scheduler_->WaitForLine("listening on ", absl::Seconds(30));
    ASSERT_FALSE(line.empty()) << scheduler_->ReadLog();
    address_ = line.substr(13);
    port_ = std::stoi(address_.substr(address_.rfind(':') + 1));
    client_ = std::make_unique<FarmClient>(
        grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
  }

  // `zfarm-worker serve` arguments for a worker called `name` on `model`.
  std::vector<std::string> WorkerArgs(const std::string& name,
                                      const std::string& model = ZFARM_TINY_MODEL_DIR) {
    std::vector<std::string> args = {ZFARM_WORKER_BIN,
                                     "serve",
                                     "--scheduler=" + address_,
                                     "--model=" + model,
                                     "--output-root=" + dir_ + "/out",
                                     "--name=" + name,
                                     "--warmup=64x64",
                                     "--warmup-steps=1",
                                     "--min-free-disk-mb=1"};
    if (const char* device = std::getenv("ZFARM_E2E_DEVICE"); device != nullptr && *device) {
      args.push_back(absl::StrCat("--device=", device));
    }
    return args;
  }

  // Starts `prefix... zfarm-worker serve ... extra...` and waits (60 s) until the
  // scheduler lists it READY, or it exits.
  Subprocess* StartWorker(const std::string& name, std::vector<std::string> extra = {},
                          std::vector<std::string> prefix = {}) {
    std::vector<std::string> argv = prefix;
    for (auto& a : WorkerArgs(name)) argv.push_back(a);
    for (auto& a : extra) argv.push_back(a);
    workers_.push_back(std::make_unique<Subprocess>(argv, dir_ + "/" + name + ".log"));
    Subprocess* w = workers_.back().get();
    EXPECT_TRUE(
        WaitFor([&] { return !w->Running() || WorkerState(name) == zfarm::v1::WORKER_STATE_READY; },
                absl::Seconds(60)) &&
        WorkerState(name) == zfarm::v1::WORKER_STATE_READY)
        << w->ReadLog();
    return w;
  }

  zfarm::v1::WorkerState WorkerState(const std::string& name) { return client_->Worker(name).state(); }
  // Submits "a lighthouse at dusk", seed 7, `size`² pixels.
  std::string Submit(int steps, int size = 256) {
    zfarm::v1::JobSpec spec = Spec("a lighthouse at dusk", size, steps);
    spec.set_seed(7);
    return client_->Submit(spec);
  }
  zfarm::v1::Job GetJob(const std::string& id) { return client_->GetJob(id); }
  zfarm::v1::Job WaitFinal(const std::string& id) { return client_->WaitFinal(id); }

  // Files under the output root with the extension `ext` (".png"), relative to it.
  std::vector<std::string> Files(const std::string& ext) {
    std::vector<std::string> out;
    for (auto& e : std::filesystem::recursive_directory_iterator(dir_ + "/out")) {
      if (e.is_regular_file() && e.path().extension() == ext) {
        out.push_back(std::filesystem::relative(e.path(), dir_ + "/out").string());
      }
    }
    return out;
  }

  std::string dir_, address_;
  std::string listen_host_ = "127.0.0.1";  // set before StartScheduler() to listen elsewhere
  int port_ = 0, scheduler_starts_ = 0;
  std::unique_ptr<Subprocess> scheduler_;
  std::vector<std::unique_ptr<Subprocess>> workers_;
  std::unique_ptr<FarmClient> client_;
};

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_FARM_PROCESSES_H_
