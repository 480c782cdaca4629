#include "scheduler/http/job_streams.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/support/client_callback.h"

namespace zfarm::scheduler::http {

// Binds a reactor's context to its handle for the life of the call.
class StreamAccess {
 public:
  // Returns false when Cancel() already ran (the caller cancels at once).
  static bool Attach(StreamHandle* h, grpc::ClientContext* ctx) {
    absl::MutexLock lock(&h->mu_);
    h->ctx_ = ctx;
    return !h->cancel_requested_;
  }
  static void Detach(StreamHandle* h) {
    absl::MutexLock lock(&h->mu_);
    h->ctx_ = nullptr;
    h->cancel_requested_ = true;
  }
};

void StreamHandle::Cancel() {
  absl::MutexLock lock(&mu_);
  cancel_requested_ = true;
  if (ctx_ != nullptr) ctx_->TryCancel();
}

namespace {

// Owns itself: deleted in OnDone.
class Watch : public grpc::ClientReadReactor<zfarm::v1::JobEvent> {
 public:
  Watch(std::unique_ptr<grpc::ClientContext> ctx, EventCallback on_event, DoneCallback on_done)
      : ctx_(std::move(ctx)),
        on_event_(std::move(on_event)),
        on_done_(std::move(on_done)),
        handle_(std::make_shared<StreamHandle>()) {}

  std::shared_ptr<StreamHandle> handle() const { return handle_; }
  grpc::ClientContext* ctx() { return ctx_.get(); }
  // The request lives as long as the call.
  zfarm::v1::WatchJobRequest* job_request() { return &job_request_; }
  zfarm::v1::WatchJobsRequest* batch_request() { return &batch_request_; }

  void Begin() {
    const bool live = StreamAccess::Attach(handle_.get(), ctx_.get());
    StartRead(&event_);
    StartCall();
    if (!live) ctx_->TryCancel();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows with the status
    if (!on_event_(event_)) {
      ctx_->TryCancel();
      return;
    }
    StartRead(&event_);
  }

  void OnDone(const grpc::Status& s) override {
    StreamAccess::Detach(handle_.get());
    on_done_(s);
    delete this;
  }

 private:
  std::unique_ptr<grpc::ClientContext> ctx_;
  EventCallback on_event_;
  DoneCallback on_done_;
  std::shared_ptr<StreamHandle> handle_;
  zfarm::v1::WatchJobRequest job_request_;
  zfarm::v1::WatchJobsRequest batch_request_;
  zfarm::v1::JobEvent event_;
};

class ResultRead : public grpc::ClientReadReactor<zfarm::v1::ResultChunk> {
 public:
  ResultRead(std::unique_ptr<grpc::ClientContext> ctx, size_t max_bytes,
             std::function<void(const grpc::Status&, std::string)> on_done)
      : ctx_(std::move(ctx)),
        max_bytes_(max_bytes),
        on_done_(std::move(on_done)),
        handle_(std::make_shared<StreamHandle>()) {}

  std::shared_ptr<StreamHandle> handle() const { return handle_; }
  grpc::ClientContext* ctx() { return ctx_.get(); }
  zfarm::v1::GetResultRequest* request() { return &request_; }

  void Begin() {
    const bool live = StreamAccess::Attach(handle_.get(), ctx_.get());
    StartRead(&chunk_);
    StartCall();
    if (!live) ctx_->TryCancel();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (data_.size() + chunk_.data().size() > max_bytes_) {
      too_big_ = true;
      ctx_->TryCancel();
      return;
    }
    data_ += chunk_.data();
    StartRead(&chunk_);
  }

  void OnDone(const grpc::Status& s) override {
    StreamAccess::Detach(handle_.get());
    if (too_big_) {
      on_done_(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            absl::StrCat("result: the file exceeds ", max_bytes_, " bytes")),
               {});
    } else {
      on_done_(s, s.ok() ? std::move(data_) : std::string());
    }
    delete this;
  }

 private:
  std::unique_ptr<grpc::ClientContext> ctx_;
  size_t max_bytes_;
  std::function<void(const grpc::Status&, std::string)> on_done_;
  std::shared_ptr<StreamHandle> handle_;
  zfarm::v1::GetResultRequest request_;
  zfarm::v1::ResultChunk chunk_;
  std::string data_;
  bool too_big_ = false;
};

}  // namespace

std::shared_ptr<StreamHandle> StartWatchJob(zfarm::v1::JobService::Stub* stub,
                                            std::unique_ptr<grpc::ClientContext> ctx,
                                            const std::string& job_id, EventCallback on_event,
                                            DoneCallback on_done) {
  auto* w = new Watch(std::move(ctx), std::move(on_event), std::move(on_done));
  auto handle = w->handle();
  w->job_request()->set_job_id(job_id);
  stub->async()->WatchJob(w->ctx(), w->job_request(), w);
  w->Begin();
  return handle;
}

std::shared_ptr<StreamHandle> StartWatchBatch(zfarm::v1::JobService::Stub* stub,
                                              std::unique_ptr<grpc::ClientContext> ctx,
                                              const std::string& batch_id, EventCallback on_event,
                                              DoneCallback on_done) {
  auto* w = new Watch(std::move(ctx), std::move(on_event), std::move(on_done));
  auto handle = w->handle();
  w->batch_request()->set_batch_id(batch_id);
  stub->async()->WatchJobs(w->ctx(), w->batch_request(), w);
  w->Begin();
  return handle;
}

std::shared_ptr<StreamHandle> StartReadResult(
    zfarm::v1::JobService::Stub* stub, std::unique_ptr<grpc::ClientContext> ctx,
    const std::string& job_id, size_t max_bytes,
    std::function<void(const grpc::Status&, std::string data)> on_done) {
  auto* r = new ResultRead(std::move(ctx), max_bytes, std::move(on_done));
  auto handle = r->handle();
  r->request()->set_job_id(job_id);
  stub->async()->GetResult(r->ctx(), r->request(), r);
  r->Begin();
  return handle;
}

}  // namespace zfarm::scheduler::http
