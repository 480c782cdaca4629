#include "scheduler/server.h"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <fstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "glog/logging.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "proto/base/status_macros.h"
#include "proto/contract/contract.h"
#include "proto/contract/error_details.h"
#include "proto/contract/rpc_status.h"
#include "proto/security/paths.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"
#include "zfarm/v1/worker_service.grpc.pb.h"

namespace zfarm::scheduler {

namespace v1 = ::zfarm::v1;
using ::zfarm::contract::AddErrorTrailers;
using ::zfarm::contract::FromGrpcStatus;
using ::zfarm::contract::IsFinal;
using ::zfarm::contract::RetryDelay;
using ::zfarm::contract::RetryLater;
using ::zfarm::contract::ToGrpcStatus;
using ::zfarm::contract::WithRetryDelay;

namespace {

// A write reactor that only finishes with an error (auth, argument or limit
// failure), its details in the trailers.
template <typename T>
class FailedWriter final : public grpc::ServerWriteReactor<T> {
 public:
  FailedWriter(grpc::CallbackServerContext* ctx, const absl::Status& s) {
    AddErrorTrailers(ctx, s);
    this->Finish(ToGrpcStatus(s));
  }
  void OnDone() override { delete this; }
};

// The trailers of a failed submit: its details; a RESOURCE_EXHAUSTED without a
// retry delay of its own gets `delay` (--retry-after).
void AddSubmitTrailers(grpc::CallbackServerContext* ctx, absl::Status s, absl::Duration delay) {
  if (absl::IsResourceExhausted(s) && !RetryDelay(s)) s = WithRetryDelay(std::move(s), delay);
  AddErrorTrailers(ctx, s);
}

// One audit line per state-changing call (tokens are never part of it).
void Audit(const std::string& principal, absl::string_view method, absl::string_view target,
           const absl::Status& result) {
  LOG(INFO) << "event=audit principal=" << principal << " method=" << method << " " << target
            << " result=" << absl::StatusCodeToString(result.code());
}

// Counts concurrent streams per client key; Acquire fails beyond `max`.
class StreamLimiter {
 public:
  explicit StreamLimiter(int max) : max_(max) {}
  absl::Status Acquire(const std::string& key) {
    absl::MutexLock lock(&mu_);
    int& n = count_[key];
    if (max_ > 0 && n >= max_) {
      return RetryLater(absl::StrCat("client ", key, " already has ", n,
                                     " open streams (--max-streams-per-client=", max_, ")"),
                        absl::Seconds(1));
    }
    ++n;
    return absl::OkStatus();
  }
  void Release(const std::string& key) {
    absl::MutexLock lock(&mu_);
    auto it = count_.find(key);
    if (it != count_.end() && --it->second <= 0) count_.erase(it);
  }

 private:
  const int max_;
  absl::Mutex mu_;
  std::map<std::string, int> count_ ABSL_GUARDED_BY(mu_);
};

// The stream-limit key: the principal, or the peer's address without port when
// anonymous ("ipv4:127.0.0.1:5555" -> "ipv4:127.0.0.1").
std::string ClientKey(const Caller& caller, const std::string& peer) {
  if (caller.principal != "anonymous") return "principal:" + caller.principal;
  return peer.substr(0, peer.rfind(':'));
}

// WatchJob / WatchJobs: snapshot, then changes; ends when every watched job is final.
//
// The backlog of a stream whose client reads slowly (or not at all) is bounded:
// once its unsent events pass a quarter of `max_backlog_bytes`, a PROGRESS event
// waiting to be sent is replaced by the same job's next one (each event carries
// the whole job, so only stale step counts are lost; a client that keeps up sees
// every step), and a
// stream whose unsent events pass `max_backlog_bytes` is cut off with
// RESOURCE_EXHAUSTED naming --max-watch-backlog-bytes (its client watches again
// and gets a fresh snapshot).
class WatchReactor final : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  class Sink final : public EventSink {
   public:
    explicit Sink(WatchReactor* r) : reactor_(r) {}
    void OnEvent(const v1::JobEvent& e) override {
      absl::MutexLock lock(&mu_);
      if (reactor_) reactor_->Push(e);
    }
    void Detach() {
      absl::MutexLock lock(&mu_);
      reactor_ = nullptr;
    }

   private:
    absl::Mutex mu_;
    WatchReactor* reactor_ ABSL_GUARDED_BY(mu_);
  };

  // `owner_filter`: only this owner's jobs ("" = all). `release` runs in OnDone.
  WatchReactor(Scheduler* core, grpc::CallbackServerContext* ctx, std::string owner_filter,
               int64_t max_backlog_bytes, std::function<void()> release)
      : core_(core),
        ctx_(ctx),
        sink_(std::make_shared<Sink>(this)),
        owner_filter_(std::move(owner_filter)),
        max_backlog_bytes_(max_backlog_bytes),
        release_(std::move(release)) {}

  // Subscribes; on error finishes at once.
  void Begin(const std::string& job_id, const std::string& batch_id, const std::string& label) {
    absl::Status s = core_->Watch(job_id, batch_id, label, sink_, owner_filter_);
    if (!s.ok()) {
      absl::MutexLock lock(&mu_);
      finished_ = true;
      AddErrorTrailers(ctx_, s);
      Finish(ToGrpcStatus(s));
    }
  }

  void Push(const v1::JobEvent& e) {
    if (!owner_filter_.empty() && e.job().owner() != owner_filter_) return;
    absl::MutexLock lock(&mu_);
    if (finished_ || overflowed_) return;
    const std::string& id = e.job().job_id();
    final_[id] = IsFinal(e.job().state());
    const bool progress = e.type() == v1::JOB_EVENT_TYPE_PROGRESS;
    if (auto it = pending_progress_.find(id); it != pending_progress_.end()) {
      if (progress && max_backlog_bytes_ > 0 && backlog_bytes_ > max_backlog_bytes_ / 4) {
        // Under pressure: replace the unsent step count in place.
        v1::JobEvent& old = queue_[it->second - popped_];
        backlog_bytes_ += static_cast<int64_t>(e.ByteSizeLong()) -
                          static_cast<int64_t>(old.ByteSizeLong());
        old = e;
        return;
      }
      pending_progress_.erase(it);  // later progress goes after this event
    }
    if (progress) pending_progress_[id] = popped_ + queue_.size();
    backlog_bytes_ += static_cast<int64_t>(e.ByteSizeLong());
    queue_.push_back(e);
    if (max_backlog_bytes_ > 0 && backlog_bytes_ > max_backlog_bytes_) {
      OverflowLocked();
      return;
    }
    if (!writing_) NextLocked();
  }
  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      if (!finished_) {
        finished_ = true;
        Finish(overflowed_ ? OverflowStatus()
                           : grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      }
      return;
    }
    NextLocked();
  }
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    if (!finished_ && !writing_) {
      finished_ = true;
      Finish(overflowed_ ? OverflowStatus()
                         : grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
    }
    cancelled_ = true;
  }
  void OnDone() override {
    core_->Unwatch(sink_);
    sink_->Detach();
    if (release_) release_();
    delete this;
  }

 private:
  grpc::Status OverflowStatus() const {
    return grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("watch stream cut off: its client left more than ", max_backlog_bytes_,
                     " bytes of events unread (--max-watch-backlog-bytes); watch again for a "
                     "fresh snapshot"));
  }
  // Drops the backlog and ends the stream. A write the client never reads
  // would keep it open, so the call is cancelled (OnWriteDone/OnCancel finish).
  void OverflowLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    overflowed_ = true;
    queue_.clear();
    pending_progress_.clear();
    backlog_bytes_ = 0;
    LOG(WARNING) << "watch stream of " << ctx_->peer() << " cut off: over "
                 << max_backlog_bytes_ << " bytes of unread events";
    if (!writing_) {
      finished_ = true;
      Finish(OverflowStatus());
    } else {
      ctx_->TryCancel();
    }
  }

  void NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    if (cancelled_) {
      finished_ = true;
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      return;
    }
    if (queue_.empty()) {
      bool all_final = !final_.empty();
      for (const auto& [id, f] : final_) all_final &= f;
      if (all_final) {
        finished_ = true;
        Finish(grpc::Status::OK);
      }
      return;
    }
    current_ = std::move(queue_.front());
    queue_.pop_front();
    if (auto it = pending_progress_.find(current_.job().job_id());
        it != pending_progress_.end() && it->second == popped_) {
      pending_progress_.erase(it);
    }
    ++popped_;
    backlog_bytes_ -= static_cast<int64_t>(current_.ByteSizeLong());
    writing_ = true;
    StartWrite(&current_);
  }

  Scheduler* const core_;
  grpc::CallbackServerContext* const ctx_;  // valid until OnDone
  const std::shared_ptr<Sink> sink_;
  const std::string owner_filter_;
  const int64_t max_backlog_bytes_;  // 0 = unbounded
  const std::function<void()> release_;
  absl::Mutex mu_;
  std::deque<v1::JobEvent> queue_ ABSL_GUARDED_BY(mu_);
  // Unsent PROGRESS events: job id -> position (popped_ + index in queue_).
  absl::flat_hash_map<std::string, uint64_t> pending_progress_ ABSL_GUARDED_BY(mu_);
  uint64_t popped_ ABSL_GUARDED_BY(mu_) = 0;        // events taken off queue_
  int64_t backlog_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // serialized size of queue_
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, bool> final_ ABSL_GUARDED_BY(mu_);
  v1::JobEvent current_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

// GetResult: streams the PNG in 64 KiB chunks.
class ResultReactor final : public grpc::ServerWriteReactor<v1::ResultChunk> {
 public:
  ResultReactor(const std::string& path, const v1::JobResult& result, std::function<void()> release)
      : sha_(result.sha256()), release_(std::move(release)) {
    file_.open(path, std::ios::binary);
    if (!file_) {
      Finish(grpc::Status(
          grpc::StatusCode::NOT_FOUND,
          absl::StrCat("result file ", result.path(), " is missing under the output root")));
      return;
    }
    file_.seekg(0, std::ios::end);
    total_ = file_.tellg();
    file_.seekg(0);
    Next();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
    Next();
  }
  void OnDone() override {
    if (release_) release_();
    delete this;
  }

 private:
  void Next() {
    if (offset_ >= total_ && offset_ > 0) return Finish(grpc::Status::OK);
    chunk_.Clear();
    std::string buf(std::min<int64_t>(64 << 10, total_ - offset_), '\0');
    file_.read(buf.data(), buf.size());
    if (!file_ && buf.size() > 0) {
      return Finish(grpc::Status(grpc::StatusCode::INTERNAL, "result file: read failed"));
    }
    chunk_.set_offset(offset_);
    chunk_.set_total_size_bytes(total_);
    if (offset_ == 0) chunk_.set_sha256(sha_);
    offset_ += buf.size();
    *chunk_.mutable_data() = std::move(buf);
    if (total_ == 0) offset_ = 1;  // empty file: one chunk, then finish
    StartWrite(&chunk_);
  }
  std::ifstream file_;
  const std::string sha_;
  const std::function<void()> release_;
  int64_t total_ = 0, offset_ = 0;
  v1::ResultChunk chunk_;
};

// WorkerService.Connect.
class ConnectReactor final
    : public grpc::ServerBidiReactor<v1::WorkerMessage, v1::SchedulerMessage> {
 public:
  class Sink final : public WorkerSink {
   public:
    Sink(ConnectReactor* r, const InputStore* inputs) : reactor_(r), inputs_(inputs) {}
    void Send(const v1::SchedulerMessage& m) override {
      if (m.msg_case() == v1::SchedulerMessage::kAssignment && HasInputs(m.assignment())) {
        // The lease send path: the journaled spec holds sha256 references; the
        // worker gets the bytes, one lease per message (at most two pictures).
        for (const v1::Lease& lease : m.assignment().leases()) {
          v1::SchedulerMessage one;
          v1::Lease* l = one.mutable_assignment()->add_leases();
          *l = lease;
          if (absl::Status s = inputs_->Fill(l->mutable_spec()); !s.ok()) {
            // The worker fails a lease without the picture's bytes (INVALID_REQUEST).
            LOG(ERROR) << "event=input_missing job=" << lease.lease().job_id() << " error=\""
                       << s.message() << "\"";
          }
          absl::MutexLock lock(&mu_);
          if (reactor_) reactor_->Enqueue(one);
        }
        return;
      }
      absl::MutexLock lock(&mu_);
      if (reactor_) reactor_->Enqueue(m);
    }
    void Close(const absl::Status& s) override {
      absl::MutexLock lock(&mu_);
      if (reactor_) reactor_->FinishWith(ToGrpcStatus(s));
    }
    void Detach() {
      absl::MutexLock lock(&mu_);
      reactor_ = nullptr;
    }

   private:
    bool HasInputs(const v1::Assignment& a) const {
      if (inputs_ == nullptr) return false;
      for (const v1::Lease& l : a.leases()) {
        if (l.spec().init_image().source_case() == v1::ImageInput::kSha256 ||
            l.spec().mask_image().source_case() == v1::ImageInput::kSha256 ||
            l.spec().control().image().source_case() == v1::ImageInput::kSha256) {
          return true;
        }
      }
      return false;
    }

    absl::Mutex mu_;
    ConnectReactor* reactor_ ABSL_GUARDED_BY(mu_);
    const InputStore* const inputs_;
  };

  // `principal`: the caller whose token opened the stream (owns the worker name).
  ConnectReactor(Scheduler* core, std::string principal, const InputStore* inputs)
      : core_(core),
        principal_(std::move(principal)),
        sink_(std::make_shared<Sink>(this, inputs)) {
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the worker closed its side or the stream broke
      if (session_) core_->WorkerDisconnected(session_, "stream ended");
      FinishWith(grpc::Status::OK);
      return;
    }
    absl::Status st;
    if (session_ == 0) {
      if (in_.msg_case() != v1::WorkerMessage::kHello) {
        st = absl::FailedPreconditionError("the first message on Connect must be hello");
      } else {
        auto session = core_->WorkerHello(in_.hello(), sink_, principal_);
        if (session.ok()) {
          session_ = *session;
        } else {
          st = session.status();
        }
      }
    } else {
      st = core_->WorkerMessage(session_, in_);
    }
    if (!st.ok()) {
      LOG(WARNING) << "event=worker_stream_error session=" << session_ << " error=\"" << st << "\"";
      if (session_) core_->WorkerDisconnected(session_, std::string(st.message()));
      FinishWith(ToGrpcStatus(st));
      return;
    }
    StartRead(&in_);
  }

  void Enqueue(const v1::SchedulerMessage& m) {
    absl::MutexLock lock(&mu_);
    if (finish_requested_) return;
    out_.push_back(m);
    if (!writing_) NextLocked();
  }
  void FinishWith(const grpc::Status& s) {
    absl::MutexLock lock(&mu_);
    if (finish_requested_) return;
    finish_requested_ = true;
    finish_status_ = s;
    if (!writing_) NextLocked();
  }
  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      out_.clear();
      if (!finish_requested_) {
        finish_requested_ = true;
        finish_status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed");
      }
    }
    NextLocked();
  }
  void OnDone() override {
    if (session_) core_->WorkerDisconnected(session_, "stream done");
    sink_->Detach();
    delete this;
  }

 private:
  void NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    if (!out_.empty()) {
      current_ = std::move(out_.front());
      out_.pop_front();
      writing_ = true;
      StartWrite(&current_);
      return;
    }
    if (finish_requested_) {
      finished_ = true;
      Finish(finish_status_);
    }
  }

  Scheduler* const core_;
  const std::string principal_;
  const std::shared_ptr<Sink> sink_;
  v1::WorkerMessage in_;  // owned by the read side
  uint64_t session_ = 0;  // read side only (and OnDone, after all reads)
  absl::Mutex mu_;
  std::deque<v1::SchedulerMessage> out_ ABSL_GUARDED_BY(mu_);
  v1::SchedulerMessage current_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status finish_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

class SchedulerServer::Services {
 public:
  Services(Scheduler* core, std::shared_ptr<Authorizer> auth, std::string output_root,
           int max_streams_per_client, int64_t max_watch_backlog_bytes,
           const InputStore* inputs)
      : limiter_(max_streams_per_client),
        jobs_(core, auth, std::move(output_root), &limiter_, max_watch_backlog_bytes, inputs),
        workers_(core, auth, inputs),
        admin_(core, auth) {}

  template <typename Ctx>
  static absl::StatusOr<Caller> Auth(Authorizer* auth, absl::string_view method, Ctx* ctx) {
    return auth->Authorize(method, ctx->client_metadata(), ctx->peer());
  }

  class Jobs final : public v1::JobService::CallbackService {
   public:
    Jobs(Scheduler* core, std::shared_ptr<Authorizer> auth, std::string output_root,
         StreamLimiter* limiter, int64_t max_watch_backlog_bytes, const InputStore* inputs)
        : core_(core),
          auth_(std::move(auth)),
          output_root_(std::move(output_root)),
          limiter_(limiter),
          max_watch_backlog_bytes_(max_watch_backlog_bytes),
          inputs_(inputs) {}

    grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx,
                                        const v1::SubmitJobRequest* req,
                                        v1::SubmitJobResponse* resp) override {
      auto* reactor = ctx->DefaultReactor();
      auto caller = Auth(auth_.get(), "SubmitJob", ctx);
      if (!caller.ok()) {
        Audit("-", "SubmitJob", "job=-", caller.status());
        reactor->Finish(ToGrpcStatus(caller.status()));
        return reactor;
      }
      v1::SubmitJobRequest request = *req;
      if (absl::Status s = InternInputs("spec", request.mutable_spec()); !s.ok()) {
        Audit(caller->principal, "SubmitJob", "job=-", s);
        reactor->Finish(ToGrpcStatus(s));
        return reactor;
      }
      core_->Submit(std::move(request), caller->principal,
                    [this, ctx, reactor, resp, who = caller->principal](auto r) {
                      if (r.ok()) {
                        *resp = *std::move(r);
                      } else {
                        AddSubmitTrailers(ctx, r.status(), core_->options().retry_after);
                      }
                      Audit(who, "SubmitJob",
                            absl::StrCat("job=", r.ok() ? resp->job().job_id() : "-"), r.status());
                      reactor->Finish(ToGrpcStatus(r.status()));
                    });
      return reactor;
    }
    grpc::ServerUnaryReactor* SubmitJobs(grpc::CallbackServerContext* ctx,
                                         const v1::SubmitJobsRequest* req,
                                         v1::SubmitJobsResponse* resp) override {
      auto* reactor = ctx->DefaultReactor();
      auto caller = Auth(auth_.get(), "SubmitJobs", ctx);
      if (!caller.ok()) {
        Audit("-", "SubmitJobs", "batch=-", caller.status());
        reactor->Finish(ToGrpcStatus(caller.status()));
        return reactor;
      }
      v1::SubmitJobsRequest request = *req;
      for (int i = 0; i < request.jobs_size(); ++i) {
        absl::Status s =
            InternInputs(absl::StrCat("jobs[", i, "].spec"), request.mutable_jobs(i)->mutable_spec());
        if (!s.ok()) {
          Audit(caller->principal, "SubmitJobs", "batch=-", s);
          reactor->Finish(ToGrpcStatus(s));
          return reactor;
        }
      }
      core_->SubmitBatch(std::move(request), caller->principal,
                         [this, ctx, reactor, resp, who = caller->principal](auto r) {
                           if (r.ok()) {
                             *resp = *std::move(r);
                           } else {
                             AddSubmitTrailers(ctx, r.status(), core_->options().retry_after);
                           }
                           Audit(who, "SubmitJobs",
                                 absl::StrCat("batch=", r.ok() ? resp->batch_id() : "-",
                                              " jobs=", r.ok() ? resp->jobs_size() : 0),
                                 r.status());
                           reactor->Finish(ToGrpcStatus(r.status()));
                         });
      return reactor;
    }
    grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx, const v1::GetJobRequest* req,
                                     v1::Job* resp) override {
      auto* reactor = ctx->DefaultReactor();
      auto caller = Auth(auth_.get(), "GetJob", ctx);
      if (!caller.ok()) {
        reactor->Finish(ToGrpcStatus(caller.status()));
        return reactor;
      }
      if (req->job_id().empty()) {
        reactor->Finish(ToGrpcStatus(absl::InvalidArgumentError("job_id: must not be empty")));
        return reactor;
      }
      core_->GetJob(
          req->job_id(),
          [reactor, resp](auto r) {
            if (r.ok()) *resp = *std::move(r);
            reactor->Finish(ToGrpcStatus(r.status()));
          },
          caller->OwnerFilter());
      return reactor;
    }
    grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                       const v1::ListJobsRequest* req,
                                       v1::ListJobsResponse* resp) override {
      auto* reactor = ctx->DefaultReactor();
      auto caller = Auth(auth_.get(), "ListJobs", ctx);
      if (!caller.ok()) {
        reactor->Finish(ToGrpcStatus(caller.status()));
        return reactor;
      }
      core_->ListJobs(
          *req,
          [reactor, resp](auto r) {
            if (r.ok()) *resp = *std::move(r);
            reactor->Finish(ToGrpcStatus(r.status()));
          },
          caller->OwnerFilter());
      return reactor;
    }
    grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                        const v1::CancelJobRequest* req,
                                        v1::CancelJobResponse* resp) override {
      auto* reactor = ctx->DefaultReactor();
      const std::string target = req->has_job_id() ? absl::StrCat("job=", req->job_id())
                                 : req->has_batch_id()
                                     ? absl::StrCat("job=- batch=", req->batch_id())
                                     : absl::StrCat("job=- label=", req->label());
      auto caller = Auth(auth_.get(), "CancelJob", ctx);
      if (!caller.ok()) {
        Audit("-", "CancelJob", target, caller.status());
        reactor->Finish(ToGrpcStatus(caller.status()));
        return reactor;
      }
      core_->Cancel(
          *req,
          [reactor, resp, target, who = caller->principal](auto r) {
            if (r.ok()) *resp = *std::move(r);
            Audit(who, "CancelJob",
                  absl::StrCat(target, " cancelled=", r.ok() ? resp->job_ids_size() : 0),
                  r.status());
            reactor->Finish(ToGrpcStatus(r.status()));
          },
          caller->OwnerFilter());
      return reactor;
    }
    grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* ctx,
                                                     const v1::WatchJobRequest* req) override {
      auto caller = Auth(auth_.get(), "WatchJob", ctx);
      if (!caller.ok()) return new FailedWriter<v1::JobEvent>(ctx, caller.status());
      if (req->job_id().empty()) {
        return new FailedWriter<v1::JobEvent>(ctx, 
            absl::InvalidArgumentError("job_id: must not be empty"));
      }
      std::function<void()> release;
      if (auto s = AcquireStream(*caller, ctx->peer(), &release); !s.ok()) {
        return new FailedWriter<v1::JobEvent>(ctx, s);
      }
      auto* r = new WatchReactor(core_, ctx, caller->OwnerFilter(), max_watch_backlog_bytes_,
                                 std::move(release));
      r->Begin(req->job_id(), "", "");
      return r;
    }
    grpc::ServerWriteReactor<v1::JobEvent>* WatchJobs(grpc::CallbackServerContext* ctx,
                                                      const v1::WatchJobsRequest* req) override {
      auto caller = Auth(auth_.get(), "WatchJobs", ctx);
      if (!caller.ok()) return new FailedWriter<v1::JobEvent>(ctx, caller.status());
      if (req->batch_id().empty() && req->label().empty()) {
        return new FailedWriter<v1::JobEvent>(ctx, 
            absl::InvalidArgumentError("selector: set batch_id or label"));
      }
      std::function<void()> release;
      if (auto s = AcquireStream(*caller, ctx->peer(), &release); !s.ok()) {
        return new FailedWriter<v1::JobEvent>(ctx, s);
      }
      auto* r = new WatchReactor(core_, ctx, caller->OwnerFilter(), max_watch_backlog_bytes_,
                                 std::move(release));
      r->Begin("", req->batch_id(), req->label());
      return r;
    }
    grpc::ServerWriteReactor<v1::ResultChunk>* GetResult(grpc::CallbackServerContext* ctx,
                                                         const v1::GetResultRequest* req) override {
      auto caller = Auth(auth_.get(), "GetResult", ctx);
      if (!caller.ok()) return new FailedWriter<v1::ResultChunk>(ctx, caller.status());
      auto result = core_->Result(req->job_id(), caller->OwnerFilter());
      if (!result.ok()) return new FailedWriter<v1::ResultChunk>(ctx, result.status());
      // The file must resolve inside the output root (no symlink out of it).
      auto path = security::ResolveBeneath(output_root_, result->path());
      if (!path.ok()) {
        LOG(WARNING) << "event=result_refused job=" << req->job_id() << " error=\""
                     << path.status().message() << "\"";
        return new FailedWriter<v1::ResultChunk>(ctx, path.status());
      }
      std::function<void()> release;
      if (auto s = AcquireStream(*caller, ctx->peer(), &release); !s.ok()) {
        return new FailedWriter<v1::ResultChunk>(ctx, s);
      }
      return new ResultReactor(*path, *result, std::move(release));
    }

   private:
    // Pictures of `spec` into the input store, replaced by their sha256 (see
    // InputStore::Intern), after the checks that need no I/O (so a spec refused
    // anyway stores nothing). Specs without pictures are left alone.
    absl::Status InternInputs(const std::string& field, v1::JobSpec* spec) {
      if (!spec->has_init_image() && !spec->has_mask_image() && !spec->has_control()) {
        return absl::OkStatus();
      }
      if (inputs_ == nullptr) return absl::InternalError("no input store");
      {
        v1::JobSpec check = *spec;
        ZFARM_RETURN_IF_ERROR(
            ValidateAndNormalizeSpec(core_->options().limits, field, &check));
      }
      return inputs_->Intern(field, spec);
    }

    absl::Status AcquireStream(const Caller& caller, const std::string& peer,
                               std::function<void()>* release) {
      std::string key = ClientKey(caller, peer);
      ZFARM_RETURN_IF_ERROR(limiter_->Acquire(key));
      *release = [l = limiter_, key] { l->Release(key); };
      return absl::OkStatus();
    }

    Scheduler* const core_;
    const std::shared_ptr<Authorizer> auth_;
    const std::string output_root_;
    StreamLimiter* const limiter_;
    const int64_t max_watch_backlog_bytes_;
    const InputStore* const inputs_;
  };

  class Workers final : public v1::WorkerService::CallbackService {
   public:
    Workers(Scheduler* core, std::shared_ptr<Authorizer> auth, const InputStore* inputs)
        : core_(core), auth_(std::move(auth)), inputs_(inputs) {}
    grpc::ServerBidiReactor<v1::WorkerMessage, v1::SchedulerMessage>* Connect(
        grpc::CallbackServerContext* ctx) override {
      auto caller = Auth(auth_.get(), "Connect", ctx);
      Audit(caller.ok() ? caller->principal : "-", "Connect", absl::StrCat("peer=", ctx->peer()),
            caller.status());
      if (!caller.ok()) {
        class Denied final
            : public grpc::ServerBidiReactor<v1::WorkerMessage, v1::SchedulerMessage> {
         public:
          explicit Denied(const absl::Status& s) { Finish(ToGrpcStatus(s)); }
          void OnDone() override { delete this; }
        };
        return new Denied(caller.status());
      }
      return new ConnectReactor(core_, caller->principal, inputs_);
    }

   private:
    Scheduler* const core_;
    const std::shared_ptr<Authorizer> auth_;
    const InputStore* const inputs_;
  };

  class Admin final : public v1::AdminService::CallbackService {
   public:
    Admin(Scheduler* core, std::shared_ptr<Authorizer> auth)
        : core_(core), auth_(std::move(auth)) {}
    grpc::ServerUnaryReactor* ListWorkers(grpc::CallbackServerContext* ctx,
                                          const v1::ListWorkersRequest*,
                                          v1::ListWorkersResponse* resp) override {
      auto* reactor = ctx->DefaultReactor();
      auto caller = Auth(auth_.get(), "ListWorkers", ctx);
      if (!caller.ok()) {
        reactor->Finish(ToGrpcStatus(caller.status()));
        return reactor;
      }
      // A submitter sees only its own jobs on the workers.
      for (auto& w : core_->ListWorkers(caller->OwnerFilter())) {
        *resp->add_workers() = std::move(w);
      }
      reactor->Finish(grpc::Status::OK);
      return reactor;
    }
    grpc::ServerUnaryReactor* DrainWorker(grpc::CallbackServerContext* ctx,
                                          const v1::DrainWorkerRequest* req,
                                          v1::DrainWorkerResponse* resp) override {
      auto* reactor = ctx->DefaultReactor();
      const std::string target = absl::StrCat("job=- worker=", req->worker_name());
      auto caller = Auth(auth_.get(), "DrainWorker", ctx);
      if (!caller.ok()) {
        Audit("-", "DrainWorker", target, caller.status());
        reactor->Finish(ToGrpcStatus(caller.status()));
        return reactor;
      }
      auto w = core_->DrainWorker(req->worker_name());
      if (w.ok()) {
        *resp->mutable_worker() = std::move(w->worker);
        resp->set_changed(w->changed);
      }
      Audit(caller->principal, "DrainWorker", target, w.status());
      reactor->Finish(ToGrpcStatus(w.status()));
      return reactor;
    }
    grpc::ServerUnaryReactor* ResumeWorker(grpc::CallbackServerContext* ctx,
                                           const v1::ResumeWorkerRequest* req,
                                           v1::ResumeWorkerResponse* resp) override {
      auto* reactor = ctx->DefaultReactor();
      const std::string target = absl::StrCat("job=- worker=", req->worker_name());
      auto caller = Auth(auth_.get(), "ResumeWorker", ctx);
      if (!caller.ok()) {
        Audit("-", "ResumeWorker", target, caller.status());
        reactor->Finish(ToGrpcStatus(caller.status()));
        return reactor;
      }
      auto w = core_->ResumeWorker(req->worker_name());
      if (w.ok()) {
        *resp->mutable_worker() = std::move(w->worker);
        resp->set_changed(w->changed);
      }
      Audit(caller->principal, "ResumeWorker", target, w.status());
      reactor->Finish(ToGrpcStatus(w.status()));
      return reactor;
    }

   private:
    Scheduler* const core_;
    const std::shared_ptr<Authorizer> auth_;
  };

  StreamLimiter limiter_;
  Jobs jobs_;
  Workers workers_;
  Admin admin_;
};

absl::StatusOr<Caller> TokenAuthorizer::Authorize(
    absl::string_view method, const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
    const std::string& peer) {
  absl::StatusOr<security::Principal> p =
      store_->Authenticate(security::BearerFromMetadata(metadata));
  if (!p.ok()) {
    LOG_EVERY_N(WARNING, 100) << "event=unauthenticated method=" << method << " peer=" << peer
                              << " error=\"" << p.status().message() << "\"";
    return p.status();
  }
  const security::Role role = p->role;
  bool allowed;
  const char* needs;
  if (method == "Connect") {
    allowed = role == security::Role::kWorker || role == security::Role::kAdmin;
    needs = "worker or admin";
  } else if (method == "DrainWorker" || method == "ResumeWorker") {
    allowed = role == security::Role::kAdmin;
    needs = "admin";
  } else {  // JobService and ListWorkers
    allowed = role == security::Role::kSubmitter || role == security::Role::kAdmin;
    needs = "submitter or admin";
  }
  if (!allowed) {
    return absl::PermissionDeniedError(absl::StrCat(method, ": principal ", p->name, " has role ",
                                                    security::RoleName(role), "; needs ", needs));
  }
  return Caller{p->name, role == security::Role::kAdmin};
}

absl::StatusOr<std::unique_ptr<SchedulerServer>> SchedulerServer::Start(ServerOptions options,
                                                                        Clock* clock) {
  if (!options.security.credentials) {
    options.security.credentials = [] { return grpc::InsecureServerCredentials(); };
  }
  if (!options.security.authorizer) {
    options.security.authorizer = std::make_shared<AllowAllAuthorizer>();
  }
  auto colon = options.listen.rfind(':');
  int requested_port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(options.listen.substr(colon + 1), &requested_port) || requested_port < 0 ||
      requested_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen: \"", options.listen, "\" is not HOST:PORT"));
  }
  std::unique_ptr<SchedulerServer> s(new SchedulerServer);
  s->host_ = options.listen.substr(0, colon);
  auto core = Scheduler::Create(options.scheduler, clock, options.registry);
  if (!core.ok()) return core.status();
  s->scheduler_ = *std::move(core);
  auto inputs = InputStore::Open({.dir = options.scheduler.state_dir + "/inputs",
                                  .input_root = options.input_root,
                                  .limits = options.scheduler.limits});
  if (!inputs.ok()) return inputs.status();
  s->inputs_ = *std::move(inputs);
  s->input_sweep_min_age_ = options.input_sweep_min_age;
  s->services_ = std::make_unique<Services>(
      s->scheduler_.get(), options.security.authorizer, options.scheduler.output_root,
      options.max_streams_per_client, options.max_watch_backlog_bytes, s->inputs_.get());
  ZFARM_RETURN_IF_ERROR(s->Listen(options));
  s->ticker_ = std::thread([raw = s.get(), every = options.tick_interval,
                            sweep_every = options.input_sweep_interval] {
    raw->TickerLoop(every, sweep_every);
  });
  LOG(INFO) << "event=listening address=" << s->address()
            << " state_dir=" << options.scheduler.state_dir;
  return s;
}

absl::Status SchedulerServer::Listen(const ServerOptions& options) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default: a second scheduler on the same port
  // would then start "fine" and take half the connections. Refuse instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(options.listen, options.security.credentials(), &port_);
  builder.RegisterService(&services_->jobs_);
  builder.RegisterService(&services_->workers_);
  builder.RegisterService(&services_->admin_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes > 0
                                       ? options.max_message_bytes
                                       : MaxMessageBytesFor(options.scheduler.limits.max_input_bytes));
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) {
    return absl::UnavailableError(absl::StrCat("--listen: cannot listen on ", options.listen));
  }
  server_->GetHealthCheckService()->SetServingStatus(true);
  return absl::OkStatus();
}

// Relative sleeps (nanosleep on CLOCK_MONOTONIC) in short slices, not
// stop_.WaitForNotificationWithTimeout(): this absl's timed waits sleep until an
// absolute CLOCK_REALTIME deadline, so a backward wall-clock step stalled the
// ticker (no lease expiry, no deadlines) for the size of the step.
void SchedulerServer::TickerLoop(absl::Duration every, absl::Duration sweep_every) {
  const absl::Duration slice = std::min(every, absl::Milliseconds(20));
  absl::Duration slept = absl::ZeroDuration(), since_sweep = absl::ZeroDuration();
  while (!stop_.HasBeenNotified()) {
    absl::SleepFor(slice);
    slept += slice;
    since_sweep += slice;
    if (slept >= every && !stop_.HasBeenNotified()) {
      slept = absl::ZeroDuration();
      scheduler_->Tick();
    }
    if (since_sweep >= sweep_every && !stop_.HasBeenNotified()) {
      since_sweep = absl::ZeroDuration();
      if (auto n = SweepInputs(); !n.ok()) {
        LOG(WARNING) << "event=input_sweep_failed error=\"" << n.status().message() << "\"";
      }
    }
  }
}

std::string SchedulerServer::address() const {
  std::string host = host_;
  if (host.empty() || host == "0.0.0.0" || host == "[::]") host = "127.0.0.1";
  return absl::StrCat(host, ":", port_);
}

SchedulerServer::~SchedulerServer() { Shutdown(); }

absl::StatusOr<int> SchedulerServer::SweepInputs() {
  // Every job the scheduler still holds, in pages; a pruned job is gone from here.
  absl::flat_hash_set<std::string> referenced;
  v1::ListJobsRequest req;
  req.set_page_size(1000);
  for (;;) {
    absl::Notification done;
    absl::StatusOr<v1::ListJobsResponse> page;
    scheduler_->ListJobs(req, [&](absl::StatusOr<v1::ListJobsResponse> r) {
      page = std::move(r);
      done.Notify();
    });
    done.WaitForNotification();
    if (!page.ok()) return page.status();
    for (const v1::Job& j : page->jobs()) InputStore::AddReferences(j.spec(), &referenced);
    if (page->next_page_token().empty()) break;
    req.set_page_token(page->next_page_token());
  }
  ZFARM_ASSIGN_OR_RETURN(int removed, inputs_->Sweep(referenced, input_sweep_min_age_));
  LOG(INFO) << "event=input_sweep referenced=" << referenced.size() << " removed=" << removed;
  return removed;
}

int MaxMessageBytesFor(int64_t max_input_bytes) {
  return static_cast<int>(
      std::min<int64_t>(kMaxPicturesPerJob * max_input_bytes + (1 << 20), INT32_MAX));
}

void SchedulerServer::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_) {
    server_->GetHealthCheckService()->SetServingStatus(false);
    server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
    server_->Wait();
  }
  stop_.Notify();
  if (ticker_.joinable()) ticker_.join();
  if (scheduler_) scheduler_->Shutdown();
  LOG(INFO) << "event=stopped";
}

absl::Status ProbeHealth(const std::string& address, absl::Duration timeout,
                         std::shared_ptr<grpc::ChannelCredentials> credentials) {
  auto channel =
      grpc::CreateChannel(address, credentials ? credentials : grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  ctx.set_wait_for_ready(true);
  grpc::Slice empty_message(std::string{});  // HealthCheckRequest{service=""}
  grpc::ByteBuffer req(&empty_message, 1), resp;
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp,
                 [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) return FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  if (!resp.Dump(&slices).ok()) return absl::InternalError("health: unreadable reply");
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // HealthCheckResponse{status = SERVING(1)} encodes as 08 01.
  if (bytes == std::string("\x08\x01", 2)) return absl::OkStatus();
  return absl::UnavailableError("health: not SERVING");
}

}  // namespace zfarm::scheduler
