#ifndef ZFARM_TESTS_TESTING_FARM_CLIENT_H_
#define ZFARM_TESTS_TESTING_FARM_CLIENT_H_

// A test client of a running scheduler: submit, read jobs and workers, and wait
// for a condition by polling (a condition wait with a generous timeout, never a
// timing assertion). Header-only; link zfarm_proto and gRPC.
//
//   FarmClient farm(channel);
//   std::string id = farm.Submit(Spec("a cat", 256, 4));
//   EXPECT_EQ(farm.WaitFinal(id).state(), v1::JOB_STATE_SUCCEEDED);

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::testing {

// A client context with a 10 s deadline.
inline std::unique_ptr<grpc::ClientContext> TestContext() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return c;
}

// Polls `pred` every 10 ms until it holds or `timeout` passes; returns its last value.
inline bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout = absl::Seconds(60)) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return pred();
}

// A job spec: `size`² pixels, `steps` steps, seed 42.
inline zfarm::v1::JobSpec Spec(const std::string& prompt, int size, int steps) {
  zfarm::v1::JobSpec s;
  s.set_prompt(prompt);
  s.set_width_px(size);
  s.set_height_px(size);
  s.set_steps(steps);
  s.set_seed(42);
  return s;
}

class FarmClient {
 public:
  explicit FarmClient(const std::shared_ptr<grpc::Channel>& channel)
      : jobs_(zfarm::v1::JobService::NewStub(channel)),
        admin_(zfarm::v1::AdminService::NewStub(channel)) {}

  // Sends "authorization: Bearer <token>" on every later call ("" = none).
  void set_token(const std::string& token) { token_ = token; }

  // Submits `spec`; the job id ("" and a test failure if refused).
  std::string Submit(const zfarm::v1::JobSpec& spec) {
    std::string id;
    grpc::Status s = TrySubmit(spec, &id);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return id;
  }
  // Submits `spec`; the scheduler's answer (the job id in *id when OK).
  grpc::Status TrySubmit(const zfarm::v1::JobSpec& spec, std::string* id) {
    zfarm::v1::SubmitJobRequest r;
    *r.mutable_spec() = spec;
    zfarm::v1::SubmitJobResponse resp;
    grpc::Status s = jobs_->SubmitJob(Ctx().get(), r, &resp);
    *id = resp.job().job_id();
    return s;
  }

  zfarm::v1::Job GetJob(const std::string& id) {
    zfarm::v1::GetJobRequest r;
    r.set_job_id(id);
    zfarm::v1::Job j;
    jobs_->GetJob(Ctx().get(), r, &j);
    return j;
  }

  bool Cancel(const std::string& id) {
    zfarm::v1::CancelJobRequest r;
    r.set_job_id(id);
    zfarm::v1::CancelJobResponse resp;
    return jobs_->CancelJob(Ctx().get(), r, &resp).ok();
  }

  // The job once SUCCEEDED, FAILED or CANCELLED (or its state at `timeout`).
  zfarm::v1::Job WaitFinal(const std::string& id, absl::Duration timeout = absl::Seconds(60)) {
    zfarm::v1::Job j;
    WaitFor(
        [&] {
          j = GetJob(id);
          return j.state() == zfarm::v1::JOB_STATE_SUCCEEDED ||
                 j.state() == zfarm::v1::JOB_STATE_FAILED ||
                 j.state() == zfarm::v1::JOB_STATE_CANCELLED;
        },
        timeout);
    return j;
  }

  // The worker as ListWorkers shows it (empty if unknown or unreachable).
  zfarm::v1::WorkerInfo Worker(const std::string& name) {
    zfarm::v1::ListWorkersResponse resp;
    admin_->ListWorkers(Ctx().get(), zfarm::v1::ListWorkersRequest(), &resp);
    for (const auto& w : resp.workers()) {
      if (w.worker_name() == name) return w;
    }
    return {};
  }

  bool Drain(const std::string& name) {
    zfarm::v1::DrainWorkerRequest r;
    r.set_worker_name(name);
    zfarm::v1::DrainWorkerResponse resp;
    return admin_->DrainWorker(Ctx().get(), r, &resp).ok();
  }

  bool Resume(const std::string& name) {
    zfarm::v1::ResumeWorkerRequest r;
    r.set_worker_name(name);
    zfarm::v1::ResumeWorkerResponse resp;
    return admin_->ResumeWorker(Ctx().get(), r, &resp).ok();
  }

 private:
  std::unique_ptr<grpc::ClientContext> Ctx() const {
    auto c = TestContext();
    if (!token_.empty()) c->AddMetadata("authorization", "Bearer " + token_);
    return c;
  }

  std::string token_;
  std::unique_ptr<zfarm::v1::JobService::Stub> jobs_;
  std::unique_ptr<zfarm::v1::AdminService::Stub> admin_;
};

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_FARM_CLIENT_H_
