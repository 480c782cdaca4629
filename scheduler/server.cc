#include "scheduler/server.h"

#include <deque>
#include <fstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "glog/logging.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "proto/rpc_status.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"
#include "zfarm/v1/worker_service.grpc.pb.h"

namespace zfarm::scheduler {

namespace v1 = ::zfarm::v1;

namespace {

bool IsFinal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

// A write reactor that only finishes with an error (auth or argument failure).
template <typename T>
class FailedWriter final : public grpc::ServerWriteReactor<T> {
 public:
  explicit FailedWriter(const absl::Status& s) { this->Finish(ToGrpcStatus(s)); }
  void OnDone() override { delete this; }
};

// Adds the retry hint of RESOURCE_EXHAUSTED as trailing metadata.
void AddRetryHint(grpc::CallbackServerContext* ctx, const absl::Status& s, absl::Duration delay) {
  if (absl::IsResourceExhausted(s)) {
    ctx->AddTrailingMetadata("retry-after-ms", absl::StrCat(absl::ToInt64Milliseconds(delay)));
  }
}

// WatchJob / WatchJobs: snapshot, then changes; ends when every watched job is final.
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

  explicit WatchReactor(Scheduler* core) : core_(core), sink_(std::make_shared<Sink>(this)) {}

  // Subscribes; on error finishes at once.
  void Begin(const std::string& job_id, const std::string& batch_id, const std::string& label) {
    absl::Status s = core_->Watch(job_id, batch_id, label, sink_);
    if (!s.ok()) {
      absl::MutexLock lock(&mu_);
      finished_ = true;
      Finish(ToGrpcStatus(s));
    }
  }

  void Push(const v1::JobEvent& e) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    final_[e.job().job_id()] = IsFinal(e.job().state());
    queue_.push_back(e);
    if (!writing_) NextLocked();
  }
  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      if (!finished_) {
        finished_ = true;
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      }
      return;
    }
    NextLocked();
  }
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    if (!finished_ && !writing_) {
      finished_ = true;
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
    }
    cancelled_ = true;
  }
  void OnDone() override {
    core_->Unwatch(sink_);
    sink_->Detach();
    delete this;
  }

 private:
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
    writing_ = true;
    StartWrite(&current_);
  }

  Scheduler* const core_;
  const std::shared_ptr<Sink> sink_;
  absl::Mutex mu_;
  std::deque<v1::JobEvent> queue_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, bool> final_ ABSL_GUARDED_BY(mu_);
  v1::JobEvent current_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

// GetResult: streams the PNG in 64 KiB chunks.
class ResultReactor final : public grpc::ServerWriteReactor<v1::ResultChunk> {
 public:
  ResultReactor(const std::string& path, const v1::JobResult& result) : sha_(result.sha256()) {
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
  void OnDone() override { delete this; }

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
  int64_t total_ = 0, offset_ = 0;
  v1::ResultChunk chunk_;
};

// WorkerService.Connect.
class ConnectReactor final
    : public grpc::ServerBidiReactor<v1::WorkerMessage, v1::SchedulerMessage> {
 public:
  class Sink final : public WorkerSink {
   public:
    explicit Sink(ConnectReactor* r) : reactor_(r) {}
    void Send(const v1::SchedulerMessage& m) override {
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
    absl::Mutex mu_;
    ConnectReactor* reactor_ ABSL_GUARDED_BY(mu_);
  };

  explicit ConnectReactor(Scheduler* core) : core_(core), sink_(std::make_shared<Sink>(this)) {
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
        auto session = core_->WorkerHello(in_.hello(), sink_);
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
  Services(Scheduler* core, std::shared_ptr<Authorizer> auth, std::string output_root)
      : jobs_(core, auth, std::move(output_root)), workers_(core, auth), admin_(core, auth) {}

  template <typename Ctx>
  static absl::StatusOr<std::string> Auth(Authorizer* auth, absl::string_view method, Ctx* ctx) {
    return auth->Authorize(method, ctx->client_metadata(), ctx->peer());
  }

  class Jobs final : public v1::JobService::CallbackService {
   public:
    Jobs(Scheduler* core, std::shared_ptr<Authorizer> auth, std::string output_root)
        : core_(core), auth_(std::move(auth)), output_root_(std::move(output_root)) {}

    grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx,
                                        const v1::SubmitJobRequest* req,
                                        v1::SubmitJobResponse* resp) override {
      auto* reactor = ctx->DefaultReactor();
      auto owner = Auth(auth_.get(), "SubmitJob", ctx);
      if (!owner.ok()) {
        reactor->Finish(ToGrpcStatus(owner.status()));
        return reactor;
      }
      core_->Submit(*req, *owner, [this, ctx, reactor, resp](auto r) {
        if (r.ok()) {
          *resp = *std::move(r);
        } else {
          AddRetryHint(ctx, r.status(), core_->options().retry_after);
        }
        reactor->Finish(ToGrpcStatus(r.status()));
      });
      return reactor;
    }
    grpc::ServerUnaryReactor* SubmitJobs(grpc::CallbackServerContext* ctx,
                                         const v1::SubmitJobsRequest* req,
                                         v1::SubmitJobsResponse* resp) override {
      auto* reactor = ctx->DefaultReactor();
      auto owner = Auth(auth_.get(), "SubmitJobs", ctx);
      if (!owner.ok()) {
        reactor->Finish(ToGrpcStatus(owner.status()));
        return reactor;
      }
      core_->SubmitBatch(*req, *owner, [this, ctx, reactor, resp](auto r) {
        if (r.ok()) {
          *resp = *std::move(r);
        } else {
          AddRetryHint(ctx, r.status(), core_->options().retry_after);
        }
        reactor->Finish(ToGrpcStatus(r.status()));
      });
      return reactor;
    }
    grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx, const v1::GetJobRequest* req,
                                     v1::Job* resp) override {
      auto* reactor = ctx->DefaultReactor();
      if (auto owner = Auth(auth_.get(), "GetJob", ctx); !owner.ok()) {
        reactor->Finish(ToGrpcStatus(owner.status()));
        return reactor;
      }
      core_->GetJob(req->job_id(), [reactor, resp](auto r) {
        if (r.ok()) *resp = *std::move(r);
        reactor->Finish(ToGrpcStatus(r.status()));
      });
      return reactor;
    }
    grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                       const v1::ListJobsRequest* req,
                                       v1::ListJobsResponse* resp) override {
      auto* reactor = ctx->DefaultReactor();
      if (auto owner = Auth(auth_.get(), "ListJobs", ctx); !owner.ok()) {
        reactor->Finish(ToGrpcStatus(owner.status()));
        return reactor;
      }
      core_->ListJobs(*req, [reactor, resp](auto r) {
        if (r.ok()) *resp = *std::move(r);
        reactor->Finish(ToGrpcStatus(r.status()));
      });
      return reactor;
    }
    grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                        const v1::CancelJobRequest* req,
                                        v1::CancelJobResponse* resp) override {
      auto* reactor = ctx->DefaultReactor();
      if (auto owner = Auth(auth_.get(), "CancelJob", ctx); !owner.ok()) {
        reactor->Finish(ToGrpcStatus(owner.status()));
        return reactor;
      }
      core_->Cancel(*req, [reactor, resp](auto r) {
        if (r.ok()) *resp = *std::move(r);
        reactor->Finish(ToGrpcStatus(r.status()));
      });
      return reactor;
    }
    grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* ctx,
                                                     const v1::WatchJobRequest* req) override {
      if (auto owner = Auth(auth_.get(), "WatchJob", ctx); !owner.ok()) {
        return new FailedWriter<v1::JobEvent>(owner.status());
      }
      if (req->job_id().empty()) {
        return new FailedWriter<v1::JobEvent>(
            absl::InvalidArgumentError("job_id: must not be empty"));
      }
      auto* r = new WatchReactor(core_);
      r->Begin(req->job_id(), "", "");
      return r;
    }
    grpc::ServerWriteReactor<v1::JobEvent>* WatchJobs(grpc::CallbackServerContext* ctx,
                                                      const v1::WatchJobsRequest* req) override {
      if (auto owner = Auth(auth_.get(), "WatchJobs", ctx); !owner.ok()) {
        return new FailedWriter<v1::JobEvent>(owner.status());
      }
      if (req->batch_id().empty() && req->label().empty()) {
        return new FailedWriter<v1::JobEvent>(
            absl::InvalidArgumentError("selector: set batch_id or label"));
      }
      auto* r = new WatchReactor(core_);
      r->Begin("", req->batch_id(), req->label());
      return r;
    }
    grpc::ServerWriteReactor<v1::ResultChunk>* GetResult(grpc::CallbackServerContext* ctx,
                                                         const v1::GetResultRequest* req) override {
      if (auto owner = Auth(auth_.get(), "GetResult", ctx); !owner.ok()) {
        return new FailedWriter<v1::ResultChunk>(owner.status());
      }
      auto result = core_->Result(req->job_id());
      if (!result.ok()) return new FailedWriter<v1::ResultChunk>(result.status());
      return new ResultReactor(output_root_ + "/" + result->path(), *result);
    }

   private:
    Scheduler* const core_;
    const std::shared_ptr<Authorizer> auth_;
    const std::string output_root_;
  };

  class Workers final : public v1::WorkerService::CallbackService {
   public:
    Workers(Scheduler* core, std::shared_ptr<Authorizer> auth)
        : core_(core), auth_(std::move(auth)) {}
    grpc::ServerBidiReactor<v1::WorkerMessage, v1::SchedulerMessage>* Connect(
        grpc::CallbackServerContext* ctx) override {
      if (auto owner = Auth(auth_.get(), "Connect", ctx); !owner.ok()) {
        class Denied final
            : public grpc::ServerBidiReactor<v1::WorkerMessage, v1::SchedulerMessage> {
         public:
          explicit Denied(const absl::Status& s) { Finish(ToGrpcStatus(s)); }
          void OnDone() override { delete this; }
        };
        return new Denied(owner.status());
      }
      return new ConnectReactor(core_);
    }

   private:
    Scheduler* const core_;
    const std::shared_ptr<Authorizer> auth_;
  };

  class Admin final : public v1::AdminService::CallbackService {
   public:
    Admin(Scheduler* core, std::shared_ptr<Authorizer> auth)
        : core_(core), auth_(std::move(auth)) {}
    grpc::ServerUnaryReactor* ListWorkers(grpc::CallbackServerContext* ctx,
                                          const v1::ListWorkersRequest*,
                                          v1::ListWorkersResponse* resp) override {
      auto* reactor = ctx->DefaultReactor();
      if (auto owner = Auth(auth_.get(), "ListWorkers", ctx); !owner.ok()) {
        reactor->Finish(ToGrpcStatus(owner.status()));
        return reactor;
      }
      for (auto& w : core_->ListWorkers()) *resp->add_workers() = std::move(w);
      reactor->Finish(grpc::Status::OK);
      return reactor;
    }
    grpc::ServerUnaryReactor* DrainWorker(grpc::CallbackServerContext* ctx,
                                          const v1::DrainWorkerRequest* req,
                                          v1::DrainWorkerResponse* resp) override {
      auto* reactor = ctx->DefaultReactor();
      if (auto owner = Auth(auth_.get(), "DrainWorker", ctx); !owner.ok()) {
        reactor->Finish(ToGrpcStatus(owner.status()));
        return reactor;
      }
      auto w = core_->DrainWorker(req->worker_name());
      if (w.ok()) *resp->mutable_worker() = *std::move(w);
      reactor->Finish(ToGrpcStatus(w.status()));
      return reactor;
    }

   private:
    Scheduler* const core_;
    const std::shared_ptr<Authorizer> auth_;
  };

  Jobs jobs_;
  Workers workers_;
  Admin admin_;
};

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
  s->services_ = std::make_unique<Services>(s->scheduler_.get(), options.security.authorizer,
                                            options.scheduler.output_root);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, options.security.credentials(), &s->port_);
  builder.RegisterService(&s->services_->jobs_);
  builder.RegisterService(&s->services_->workers_);
  builder.RegisterService(&s->services_->admin_);
  builder.SetMaxReceiveMessageSize(16 << 20);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("--listen: cannot listen on ", options.listen));
  }
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  s->ticker_ = std::thread([raw = s.get(), every = options.tick_interval] {
    while (!raw->stop_.WaitForNotificationWithTimeout(every)) raw->scheduler_->Tick();
  });
  LOG(INFO) << "event=listening address=" << s->address()
            << " state_dir=" << options.scheduler.state_dir;
  return s;
}

std::string SchedulerServer::address() const {
  std::string host = host_;
  if (host.empty() || host == "0.0.0.0" || host == "[::]") host = "127.0.0.1";
  return absl::StrCat(host, ":", port_);
}

SchedulerServer::~SchedulerServer() { Shutdown(); }

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

absl::Status ProbeHealth(const std::string& address, absl::Duration timeout) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
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
