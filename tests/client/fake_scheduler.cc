#include "tests/client/fake_scheduler.h"

#include <sys/stat.h>

#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "proto/base/files.h"

namespace zfarm::testing {

using zfarm::v1::Job;

class FakeScheduler::JobServiceImpl final : public zfarm::v1::JobService::Service {
 public:
  explicit JobServiceImpl(FakeScheduler* f) : f_(f) {}

  grpc::Status SubmitJob(grpc::ServerContext*, const zfarm::v1::SubmitJobRequest* req,
                         zfarm::v1::SubmitJobResponse* resp) override {
    if (req->spec().prompt().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "spec.prompt: must not be empty");
    }
    absl::MutexLock lock(&f_->mu_);
    ++f_->submit_calls_;
    bool created = false;
    *resp->mutable_job() = f_->SubmitLocked(*req, "", &created);
    resp->set_created(created);
    return grpc::Status::OK;
  }

  grpc::Status SubmitJobs(grpc::ServerContext*, const zfarm::v1::SubmitJobsRequest* req,
                          zfarm::v1::SubmitJobsResponse* resp) override {
    if (req->jobs_size() > 1000) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "jobs: at most 1000 per batch");
    }
    for (const auto& j : req->jobs()) {
      if (j.spec().prompt().empty()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "spec.prompt: must not be empty");
      }
    }
    absl::MutexLock lock(&f_->mu_);
    ++f_->submit_calls_;
    resp->set_batch_id(req->batch_id());
    for (const auto& j : req->jobs()) {
      bool created = false;
      auto* r = resp->add_jobs();
      *r->mutable_job() = f_->SubmitLocked(j, req->batch_id(), &created);
      r->set_created(created);
    }
    return grpc::Status::OK;
  }

  grpc::Status GetJob(grpc::ServerContext*, const zfarm::v1::GetJobRequest* req,
                      Job* job) override {
    absl::MutexLock lock(&f_->mu_);
    auto it = f_->jobs_.find(req->job_id());
    if (it == f_->jobs_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "job " + req->job_id() + " not found");
    }
    *job = it->second;
    return grpc::Status::OK;
  }

  grpc::Status WatchJob(grpc::ServerContext* ctx, const zfarm::v1::WatchJobRequest* req,
                        grpc::ServerWriter<zfarm::v1::JobEvent>* w) override {
    {
      absl::MutexLock lock(&f_->mu_);
      if (f_->jobs_.count(req->job_id()) == 0) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND, "job " + req->job_id() + " not found");
      }
    }
    return Watch(ctx, w, [&](const Job& j) { return j.job_id() == req->job_id(); });
  }

  grpc::Status WatchJobs(grpc::ServerContext* ctx, const zfarm::v1::WatchJobsRequest* req,
                         grpc::ServerWriter<zfarm::v1::JobEvent>* w) override {
    ++watch_jobs_calls;
    return Watch(ctx, w, [&](const Job& j) {
      if (req->has_batch_id()) return j.batch_id() == req->batch_id();
      return false;
    });
  }

  grpc::Status CancelJob(grpc::ServerContext*, const zfarm::v1::CancelJobRequest* req,
                         zfarm::v1::CancelJobResponse* resp) override {
    absl::MutexLock lock(&f_->mu_);
    for (auto& [id, job] : f_->jobs_) {
      bool match = (req->has_job_id() && id == req->job_id()) ||
                   (req->has_batch_id() && job.batch_id() == req->batch_id());
      if (req->has_label()) {
        size_t eq = req->label().find('=');
        auto it = job.spec().labels().find(req->label().substr(0, eq));
        match = it != job.spec().labels().end() && it->second == req->label().substr(eq + 1);
      }
      if (!match) continue;
      if (job.state() >= zfarm::v1::JOB_STATE_SUCCEEDED) continue;
      job.set_state(zfarm::v1::JOB_STATE_CANCELLED);
      job.mutable_error()->set_reason(zfarm::v1::FAILURE_REASON_CANCELLED_BY_CLIENT);
      resp->add_job_ids(id);
    }
    ++f_->version_;
    if (req->has_job_id() && resp->job_ids_size() == 0 && f_->jobs_.count(req->job_id()) == 0) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "job not found");
    }
    return grpc::Status::OK;
  }

  grpc::Status ListJobs(grpc::ServerContext*, const zfarm::v1::ListJobsRequest* req,
                        zfarm::v1::ListJobsResponse* resp) override {
    absl::MutexLock lock(&f_->mu_);
    size_t start = req->page_token().empty() ? 0 : std::stoul(req->page_token());
    size_t page = req->page_size() > 0 ? req->page_size() : 100;
    size_t i = start;
    for (; i < f_->order_.size() && resp->jobs_size() < static_cast<int>(page); ++i) {
      const Job& j = f_->jobs_[f_->order_[i]];
      if (req->states_size() > 0 &&
          std::find(req->states().begin(), req->states().end(), j.state()) == req->states().end()) {
        continue;
      }
      if (!req->batch_id().empty() && j.batch_id() != req->batch_id()) continue;
      *resp->add_jobs() = j;
    }
    if (i < f_->order_.size()) resp->set_next_page_token(std::to_string(i));
    return grpc::Status::OK;
  }

  grpc::Status GetResult(grpc::ServerContext*, const zfarm::v1::GetResultRequest* req,
                         grpc::ServerWriter<zfarm::v1::ResultChunk>* w) override {
    std::string path;
    {
      absl::MutexLock lock(&f_->mu_);
      auto it = f_->jobs_.find(req->job_id());
      if (it == f_->jobs_.end() || it->second.state() != zfarm::v1::JOB_STATE_SUCCEEDED) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND, "no result");
      }
      path = f_->output_root_ + "/" + it->second.result().path();
    }
    std::ifstream in(path, std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // Two chunks, to exercise reassembly.
    size_t half = data.size() / 2;
    zfarm::v1::ResultChunk c;
    c.set_total_size_bytes(static_cast<int64_t>(data.size()));
    c.set_data(data.substr(0, half));
    w->Write(c);
    c.set_offset(static_cast<int64_t>(half));
    c.set_data(data.substr(half));
    c.set_sha256(base::Sha256Hex(data));
    w->Write(c);
    return grpc::Status::OK;
  }

  std::atomic<int> watch_jobs_calls{0};

 private:
  template <typename Pred>
  grpc::Status Watch(grpc::ServerContext* ctx, grpc::ServerWriter<zfarm::v1::JobEvent>* w,
                     Pred pred) {
    std::map<std::string, std::string> sent;  // id -> serialized
    int64_t seen = -1;
    while (!ctx->IsCancelled()) {
      std::vector<Job> changed;
      bool all_final = true;
      {
        absl::MutexLock lock(&f_->mu_);
        auto changed_cond = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(f_->mu_) {
          return f_->version_ != seen;
        };
        f_->mu_.AwaitWithTimeout(absl::Condition(&changed_cond), absl::Milliseconds(50));
        if (f_->version_ == seen) continue;
        seen = f_->version_;
        for (const std::string& id : f_->order_) {
          const Job& j = f_->jobs_[id];
          if (!pred(j)) continue;
          if (j.state() < zfarm::v1::JOB_STATE_SUCCEEDED) all_final = false;
          std::string bytes = j.SerializeAsString();
          if (sent[id] != bytes) {
            sent[id] = bytes;
            changed.push_back(j);
          }
        }
      }
      for (const Job& j : changed) {
        zfarm::v1::JobEvent e;
        e.set_type(zfarm::v1::JOB_EVENT_TYPE_STATE_CHANGED);
        *e.mutable_job() = j;
        if (!w->Write(e)) return grpc::Status::CANCELLED;
      }
      if (all_final && !sent.empty()) return grpc::Status::OK;
    }
    return grpc::Status::CANCELLED;
  }

  FakeScheduler* f_;
};

class FakeScheduler::AdminServiceImpl final : public zfarm::v1::AdminService::Service {
 public:
  explicit AdminServiceImpl(FakeScheduler* f) : f_(f) {}
  grpc::Status ListWorkers(grpc::ServerContext*, const zfarm::v1::ListWorkersRequest*,
                           zfarm::v1::ListWorkersResponse* resp) override {
    auto* w = resp->add_workers();
    w->set_worker_name("fake-0");
    w->set_device("cpu");
    w->set_state(zfarm::v1::WORKER_STATE_READY);
    w->set_capacity(2);
    absl::MutexLock lock(&f_->mu_);
    w->set_jobs_done(f_->created_);
    return grpc::Status::OK;
  }
  grpc::Status DrainWorker(grpc::ServerContext*, const zfarm::v1::DrainWorkerRequest* req,
                           zfarm::v1::DrainWorkerResponse* resp) override {
    if (req->worker_name() != "fake-0") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "worker " + req->worker_name() + " not found");
    }
    resp->mutable_worker()->set_worker_name("fake-0");
    resp->mutable_worker()->set_state(zfarm::v1::WORKER_STATE_DRAINING);
    return grpc::Status::OK;
  }

 private:
  FakeScheduler* f_;
};

FakeScheduler::FakeScheduler(std::string output_root, bool auto_complete)
    : output_root_(std::move(output_root)),
      auto_complete_(auto_complete),
      job_service_(std::make_unique<JobServiceImpl>(this)),
      admin_service_(std::make_unique<AdminServiceImpl>(this)) {}

FakeScheduler::~FakeScheduler() { Stop(); }

std::string FakeScheduler::Start(int port) {
  if (port == 0) port = port_;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int selected = 0;
  builder.AddListeningPort(absl::StrCat("127.0.0.1:", port), grpc::InsecureServerCredentials(),
                           &selected);
  builder.RegisterService(job_service_.get());
  builder.RegisterService(admin_service_.get());
  server_ = builder.BuildAndStart();
  port_ = selected;
  address_ = absl::StrCat("127.0.0.1:", selected);
  return address_;
}

void FakeScheduler::Stop() {
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
    server_.reset();
  }
}

Job FakeScheduler::SubmitLocked(const zfarm::v1::SubmitJobRequest& req, const std::string& batch_id,
                                bool* created) {
  if (auto it = by_request_.find(req.request_id()); it != by_request_.end()) {
    *created = false;
    return jobs_[it->second];
  }
  Job job;
  job.set_job_id(absl::StrFormat("j-%05d", static_cast<int>(jobs_.size()) + 1));
  job.set_request_id(req.request_id());
  job.set_batch_id(batch_id);
  *job.mutable_spec() = req.spec();
  if (!job.spec().has_seed()) job.mutable_spec()->set_seed(1000 + jobs_.size());
  job.set_state(zfarm::v1::JOB_STATE_QUEUED);
  if (auto_complete_) FinishLocked(&job);
  jobs_[job.job_id()] = job;
  order_.push_back(job.job_id());
  if (!req.request_id().empty()) by_request_[req.request_id()] = job.job_id();
  ++created_;
  ++version_;
  *created = true;
  return job;
}

void FakeScheduler::FinishLocked(Job* job) {
  const std::string& prompt = job->spec().prompt();
  if (absl::StrContains(prompt, "FAIL")) {
    job->set_state(zfarm::v1::JOB_STATE_FAILED);
    job->mutable_error()->set_reason(zfarm::v1::FAILURE_REASON_MODEL_ERROR);
    job->mutable_error()->set_message("fake failure");
    return;
  }
  if (absl::StrContains(prompt, "CANCEL")) {
    job->set_state(zfarm::v1::JOB_STATE_CANCELLED);
    job->mutable_error()->set_reason(zfarm::v1::FAILURE_REASON_CANCELLED_BY_CLIENT);
    return;
  }
  const std::string dir = output_root_ + "/2026-11-28";
  mkdir(output_root_.c_str(), 0755);
  mkdir(dir.c_str(), 0755);
  const std::string rel = "2026-11-28/" + job->job_id() + ".png";
  const std::string data = absl::StrCat("\x89PNG fake image for ", job->job_id(),
                                        " seed=", job->spec().seed(), " prompt=", prompt);
  std::ofstream(output_root_ + "/" + rel, std::ios::binary) << data;
  job->set_state(zfarm::v1::JOB_STATE_SUCCEEDED);
  job->mutable_result()->set_path(rel);
  job->mutable_result()->set_sha256(base::Sha256Hex(data));
  job->mutable_result()->set_size_bytes(static_cast<int64_t>(data.size()));
  job->mutable_progress()->set_step(job->spec().steps());
  job->mutable_progress()->set_total_steps(job->spec().steps());
}

void FakeScheduler::CompleteAll() {
  absl::MutexLock lock(&mu_);
  for (auto& [id, job] : jobs_) {
    if (job.state() < zfarm::v1::JOB_STATE_SUCCEEDED) FinishLocked(&job);
  }
  ++version_;
}

void FakeScheduler::AwaitJobs(int n) {
  absl::MutexLock lock(&mu_);
  auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return static_cast<int>(jobs_.size()) >= n;
  };
  mu_.Await(absl::Condition(&enough));
}

int FakeScheduler::jobs_created() const {
  absl::MutexLock lock(&mu_);
  return created_;
}

int FakeScheduler::submit_calls() const {
  absl::MutexLock lock(&mu_);
  return submit_calls_;
}

std::vector<Job> FakeScheduler::jobs() const {
  absl::MutexLock lock(&mu_);
  std::vector<Job> out;
  for (const std::string& id : order_) out.push_back(jobs_.at(id));
  return out;
}

}  // namespace zfarm::testing
