#ifndef ZFARM_SCHEDULER_HTTP_JOB_STREAMS_H_
#define ZFARM_SCHEDULER_HTTP_JOB_STREAMS_H_

// File: job_streams.h
// JobService's server streams (WatchJob, WatchJobs, GetResult) read with the
// gRPC callback API, for the HTTP doors that answer later or stream events:
// no thread waits on a stream.
//
//   auto ctx = std::make_unique<grpc::ClientContext>();   // deadline, metadata
//   std::shared_ptr<StreamHandle> h = StartWatchJob(stub, std::move(ctx), "j-1",
//       [](const zfarm::v1::JobEvent& e) { return Send(e); },   // false: stop
//       [](const grpc::Status& s) { Finish(s); });
//   h->Cancel();   // e.g. when the HTTP client went away; safe at any time
//
// on_event runs on a gRPC thread, one event at a time, and must not block;
// on_done runs once, last, after which the handle's Cancel() does nothing. A
// stream stopped by on_event returning false or by Cancel() ends CANCELLED.
// Thread-safe.

#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler::http {

// Cancels a stream in flight; a no-op once the stream is done.
class StreamHandle {
 public:
  void Cancel();

 private:
  friend class StreamAccess;
  absl::Mutex mu_;
  grpc::ClientContext* ctx_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool cancel_requested_ ABSL_GUARDED_BY(mu_) = false;
};

using EventCallback = std::function<bool(const zfarm::v1::JobEvent&)>;
using DoneCallback = std::function<void(const grpc::Status&)>;

// WatchJob(job_id).
std::shared_ptr<StreamHandle> StartWatchJob(zfarm::v1::JobService::Stub* stub,
                                            std::unique_ptr<grpc::ClientContext> ctx,
                                            const std::string& job_id, EventCallback on_event,
                                            DoneCallback on_done);
// WatchJobs(batch_id).
std::shared_ptr<StreamHandle> StartWatchBatch(zfarm::v1::JobService::Stub* stub,
                                              std::unique_ptr<grpc::ClientContext> ctx,
                                              const std::string& batch_id, EventCallback on_event,
                                              DoneCallback on_done);

// GetResult(job_id): on_done gets the status and, when OK, the whole file.
// A file over max_bytes ends the read with RESOURCE_EXHAUSTED.
std::shared_ptr<StreamHandle> StartReadResult(
    zfarm::v1::JobService::Stub* stub, std::unique_ptr<grpc::ClientContext> ctx,
    const std::string& job_id, size_t max_bytes,
    std::function<void(const grpc::Status&, std::string data)> on_done);

}  // namespace zfarm::scheduler::http

#endif  // ZFARM_SCHEDULER_HTTP_JOB_STREAMS_H_
