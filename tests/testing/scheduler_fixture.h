#ifndef ZFARM_TESTS_TESTING_SCHEDULER_FIXTURE_H_
#define ZFARM_TESTS_TESTING_SCHEDULER_FIXTURE_H_

// An in-process zfarm scheduler on 127.0.0.1:<free port> with a fresh state dir
// and output root, for service, CLI and worker tests. Link the CMake target
// zfarm_scheduler_testing (tests/scheduler/CMakeLists.txt).
//
//   ASSERT_OK_AND_ASSIGN(auto farm, TestScheduler::Start());
//   auto jobs = zfarm::v1::JobService::NewStub(farm->channel());
//   auto worker = FakeWorker::Connect(farm->channel(), {.name = "w1"});
//
// Pass a FakeClock and tick_interval = InfiniteDuration() to drive time by hand
// (farm->scheduler()->Tick()).

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "scheduler/server.h"

namespace zfarm::testing {

class TestScheduler {
 public:
  // `options.listen`, state_dir and output_root are filled in unless set.
  static absl::StatusOr<std::unique_ptr<TestScheduler>> Start(
      zfarm::scheduler::ServerOptions options = {},
      zfarm::scheduler::Clock* clock = zfarm::scheduler::Clock::Real()) {
    std::unique_ptr<TestScheduler> t(new TestScheduler);
    std::string tmpl = (std::filesystem::temp_directory_path() / "zfarm-sched-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) return absl::InternalError("mkdtemp failed");
    t->dir_ = tmpl;
    if (options.scheduler.state_dir.empty()) options.scheduler.state_dir = t->dir_ + "/state";
    if (options.scheduler.output_root.empty()) options.scheduler.output_root = t->dir_ + "/out";
    std::filesystem::create_directories(options.scheduler.output_root);
    options.listen = "127.0.0.1:0";
    auto server = zfarm::scheduler::SchedulerServer::Start(options, clock);
    if (!server.ok()) return server.status();
    t->options_ = options;
    t->server_ = *std::move(server);
    t->channel_ = grpc::CreateChannel(t->server_->address(), grpc::InsecureChannelCredentials());
    return t;
  }
  ~TestScheduler() {
    server_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  std::string address() const { return server_->address(); }
  const std::string& output_root() const { return options_.scheduler.output_root; }
  const std::string& state_dir() const { return options_.scheduler.state_dir; }
  zfarm::scheduler::Scheduler* scheduler() { return server_->scheduler(); }
  zfarm::scheduler::SchedulerServer* server() { return server_.get(); }
  // Stops the server (journal flushed); the directories stay until destruction.
  void Stop() { server_->Shutdown(); }

 private:
  TestScheduler() = default;
  std::string dir_;
  zfarm::scheduler::ServerOptions options_;
  std::unique_ptr<zfarm::scheduler::SchedulerServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_SCHEDULER_FIXTURE_H_
