// The real zfarm-scheduler binary: SIGKILL mid-queue and restart on the same state
// dir (every acknowledged job survives, finished ones unchanged), SIGTERM -> exit 0.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "scheduler/server.h"
#include "tests/testing/fake_worker.h"
#include "tests/testing/status_matchers.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler {
namespace {

using ::zfarm::testing::FakeWorker;

class Process {
 public:
  Process(const std::string& dir, const std::string& tag) : log_(dir + "/" + tag + ".log") {
    pid_ = fork();
    if (pid_ == 0) {
      int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::string state = "--state-dir=" + dir + "/state", out = "--output-root=" + dir + "/out";
      execl(ZFARM_SCHEDULER_BIN, ZFARM_SCHEDULER_BIN, "--listen=127.0.0.1:0", state.c_str(),
            out.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  // Reads the address from the log ("listening on HOST:PORT"); "" if it exited.
  std::string WaitForAddress() {
    for (int i = 0; i < 3000; ++i) {
      std::ifstream f(log_);
      std::string line;
      while (std::getline(f, line)) {
        auto p = line.find("listening on ");
        if (p != std::string::npos) return line.substr(p + 13);
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
  int Signal(int sig) {
    kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }
  ~Process() {
    if (pid_ > 0) Signal(SIGKILL);
  }

 private:
  std::string log_;
  pid_t pid_ = -1;
};

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return c;
}

class ProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() /
            ("zfarm-proc-" + std::to_string(getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ + "/out");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(ProcessTest, SigkillAndRestartKeepsEveryAcknowledgedJob) {
  std::map<std::string, std::string> finished;  // job id -> serialized Job
  std::vector<std::string> acked;
  std::string running_id;
  {
    Process p(dir_, "first");
    std::string addr = p.WaitForAddress();
    ASSERT_FALSE(addr.empty());
    ASSERT_OK(ProbeHealth(addr, absl::Seconds(10)));
    auto channel = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
    auto stub = v1::JobService::NewStub(channel);
    // A worker finishes three jobs and is in the middle of a fourth.
    FakeWorker::Options wo;
    wo.name = "w";
    wo.capacity = 1;
    ASSERT_OK_AND_ASSIGN(auto worker, FakeWorker::Connect(channel, wo));
    absl::Mutex mu;
    std::vector<std::thread> clients;
    for (int t = 0; t < 4; ++t) {
      clients.emplace_back([&, t] {
        for (int i = 0; i < 50; ++i) {
          v1::SubmitJobRequest r;
          r.set_request_id("req-" + std::to_string(t) + "-" + std::to_string(i));
          r.mutable_spec()->set_prompt("prompt");
          r.mutable_spec()->set_steps(1);
          v1::SubmitJobResponse resp;
          if (stub->SubmitJob(Ctx().get(), r, &resp).ok()) {
            absl::MutexLock l(&mu);
            acked.push_back(resp.job().job_id());
          }
        }
      });
    }
    for (int i = 0; i < 3; ++i) {
      ASSERT_OK_AND_ASSIGN(v1::Lease l, worker->NextLease());
      ASSERT_OK(worker->RunToSuccess(l, dir_ + "/out"));
      v1::GetJobRequest g;
      g.set_job_id(l.lease().job_id());
      v1::Job j;
      for (int k = 0; k < 200 && j.state() != v1::JOB_STATE_SUCCEEDED; ++k) {
        ASSERT_TRUE(stub->GetJob(Ctx().get(), g, &j).ok());
      }
      ASSERT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED);
      finished[j.job_id()] = j.SerializeAsString();
    }
    ASSERT_OK_AND_ASSIGN(v1::Lease l, worker->NextLease());
    ASSERT_OK(worker->Started(l.lease()));
    running_id = l.lease().job_id();
    v1::GetJobRequest g;
    g.set_job_id(running_id);
    v1::Job j;
    for (int k = 0; k < 200 && j.state() != v1::JOB_STATE_RUNNING; ++k) {
      ASSERT_TRUE(stub->GetJob(Ctx().get(), g, &j).ok());
    }
    ASSERT_EQ(j.state(), v1::JOB_STATE_RUNNING);
    for (auto& c : clients) c.join();
    // Killed while clients may still be in flight: only acked jobs are checked.
    int status = p.Signal(SIGKILL);
    EXPECT_TRUE(WIFSIGNALED(status));
  }
  ASSERT_EQ(acked.size(), 200u);
  Process p(dir_, "second");
  std::string addr = p.WaitForAddress();
  ASSERT_FALSE(addr.empty());
  auto stub =
      v1::JobService::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  for (const auto& id : acked) {
    v1::GetJobRequest g;
    g.set_job_id(id);
    v1::Job j;
    grpc::Status s = stub->GetJob(Ctx().get(), g, &j);
    ASSERT_TRUE(s.ok()) << id << ": " << s.error_message();
    auto f = finished.find(id);
    if (f != finished.end()) {
      EXPECT_EQ(j.SerializeAsString(), f->second) << id;
    } else {
      EXPECT_EQ(j.state(), v1::JOB_STATE_QUEUED) << id;
    }
  }
  v1::GetJobRequest g;
  g.set_job_id(running_id);
  v1::Job j;
  ASSERT_TRUE(stub->GetJob(Ctx().get(), g, &j).ok());
  EXPECT_EQ(j.state(), v1::JOB_STATE_QUEUED);
  int status = p.Signal(SIGTERM);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST_F(ProcessTest, RefusesUnusableStateDir) {
  // A state dir that is a regular file cannot be created.
  std::ofstream(dir_ + "/state") << "x";
  Process p(dir_, "bad");
  EXPECT_EQ(p.WaitForAddress(), "");
  std::ifstream f(dir_ + "/bad.log");
  std::string log((std::istreambuf_iterator<char>(f)), {});
  EXPECT_NE(log.find("--state-dir"), std::string::npos) << log;
}

}  // namespace
}  // namespace zfarm::scheduler
