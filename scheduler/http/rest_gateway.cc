#include "scheduler/http/rest_gateway.h"

#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "glog/logging.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "proto/http/http_server.h"
#include "scheduler/http/dashboard.h"
#include "scheduler/http/job_streams.h"
#include "scheduler/http/openai_api.h"
#include "scheduler/http/embedded_assets.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler::http {
namespace {

using zfarm::http::EventStream;
using zfarm::http::Request;
using zfarm::http::Responder;
using zfarm::http::Response;

absl::StatusOr<zfarm::v1::JobState> ParseState(absl::string_view name) {
  std::string upper = absl::AsciiStrToUpper(name);
  if (!absl::StartsWith(upper, "JOB_STATE_")) upper = "JOB_STATE_" + upper;
  zfarm::v1::JobState st;
  if (!zfarm::v1::JobState_Parse(upper, &st) || st == zfarm::v1::JOB_STATE_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        absl::StrCat("state: unknown state '", name,
                     "' (queued, assigned, running, succeeded, failed, cancelled)"));
  }
  return st;
}

Response InvalidBody(const absl::Status& s) {
  return GrpcError(grpc::StatusCode::INVALID_ARGUMENT, std::string(s.message()));
}

// "snapshot", "state_changed", "progress".
std::string EventName(zfarm::v1::JobEventType t) {
  return absl::AsciiStrToLower(
      absl::StripPrefix(zfarm::v1::JobEventType_Name(t), "JOB_EVENT_TYPE_"));
}

// One SSE answer fed by a WatchJob/WatchJobs stream. The stream (HTTP 200)
// starts with the first event, so a watch refused at once (unknown job, bad
// token) is an ordinary error answer.
class EventRelay : public std::enable_shared_from_this<EventRelay> {
 public:
  explicit EventRelay(Responder r) : responder_(std::move(r)) {}

  // Called once, before the watch starts.
  void Attach(std::shared_ptr<StreamHandle> h) {
    absl::MutexLock lock(&mu_);
    handle_ = std::move(h);
    if (gone_) handle_->Cancel();
  }
  void ClientGone() {
    absl::MutexLock lock(&mu_);
    gone_ = true;
    if (handle_) handle_->Cancel();
  }

  bool OnEvent(const zfarm::v1::JobEvent& e) {
    if (!stream_.has_value()) {
      stream_ = responder_.StartEventStream();
      std::weak_ptr<EventRelay> weak = shared_from_this();
      stream_->OnClose([weak] {
        if (auto self = weak.lock()) self->ClientGone();
      });
    }
    return stream_->Send(EventName(e.type()), ToJson(e));
  }

  void OnDone(const grpc::Status& s) {
    if (!stream_.has_value()) {
      responder_.Finish(GrpcError(s.ok() ? grpc::Status(grpc::StatusCode::INTERNAL,
                                                        "watch ended without an event")
                                         : s));
      return;
    }
    if (!s.ok() && s.error_code() != grpc::StatusCode::CANCELLED) {
      stream_->Send("error", zfarm::http::JsonErrorBody(GrpcCodeName(s.error_code()),
                                                        s.error_message()));
    }
    stream_->End();
  }

 private:
  Responder responder_;
  // Touched only by the watch's callbacks, which run one at a time.
  std::optional<EventStream> stream_;
  absl::Mutex mu_;
  std::shared_ptr<StreamHandle> handle_ ABSL_GUARDED_BY(mu_);
  bool gone_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

struct RestGateway::Impl {
  Options options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<zfarm::v1::JobService::Stub> stub;
  std::unique_ptr<zfarm::v1::AdminService::Stub> admin;
  std::unique_ptr<Dashboard> dashboard;
  std::unique_ptr<zfarm::http::HttpServer> server;

  std::unique_ptr<grpc::ClientContext> Ctx(const Request& req) const {
    return CallContext(req, options.rpc_timeout);
  }

  Response Health(const Request&) { return Response::Json(200, "{\"status\": \"ok\"}\n"); }

  // grpc.health.v1.Health/Check with service "" over the in-process channel.
  Response Ready(const Request&) {
    grpc::GenericStub generic(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    grpc::Slice empty(std::string{});
    grpc::ByteBuffer req(&empty, 1), resp;
    absl::Notification done;
    grpc::Status status;
    generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp,
                      [&](grpc::Status s) {
                        status = std::move(s);
                        done.Notify();
                      });
    done.WaitForNotification();
    std::vector<grpc::Slice> slices;
    std::string bytes;
    if (status.ok() && resp.Dump(&slices).ok()) {
      for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    // HealthCheckResponse{status: SERVING (1)} is the two bytes 08 01.
    if (bytes == std::string("\x08\x01", 2)) {
      return Response::Json(200, "{\"status\": \"ready\"}\n");
    }
    return Response::Error(503, "UNAVAILABLE",
                           status.ok() ? "scheduler: not SERVING"
                                       : absl::StrCat("scheduler: ", status.error_message()));
  }

  Response Submit(const Request& http) {
    if (auto bad = CheckJsonBody(http)) return *bad;
    zfarm::v1::SubmitJobRequest req;
    if (auto s = ParseJsonBody(http.body, "SubmitJobRequest", &req); !s.ok()) return InvalidBody(s);
    auto ctx = Ctx(http);
    zfarm::v1::SubmitJobResponse resp;
    grpc::Status s = stub->SubmitJob(ctx.get(), req, &resp);
    if (!s.ok()) return GrpcError(s, *ctx);
    LOG(INFO) << "event=rest_submit job=" << resp.job().job_id() << " request=" << req.request_id()
              << " created=" << resp.created();
    return ProtoResponse(resp.created() ? 201 : 200, resp);
  }

  Response SubmitBatch(const Request& http) {
    if (auto bad = CheckJsonBody(http)) return *bad;
    zfarm::v1::SubmitJobsRequest req;
    if (auto s = ParseJsonBody(http.body, "SubmitJobsRequest", &req); !s.ok()) {
      return InvalidBody(s);
    }
    auto ctx = Ctx(http);
    zfarm::v1::SubmitJobsResponse resp;
    grpc::Status s = stub->SubmitJobs(ctx.get(), req, &resp);
    if (!s.ok()) return GrpcError(s, *ctx);
    bool created = false;
    for (const auto& j : resp.jobs()) created = created || j.created();
    LOG(INFO) << "event=rest_submit_batch batch=" << resp.batch_id()
              << " jobs=" << resp.jobs_size() << " created=" << created;
    return ProtoResponse(created ? 201 : 200, resp);
  }

  Response Get(const Request& http) {
    auto ctx = Ctx(http);
    zfarm::v1::GetJobRequest req;
    req.set_job_id(http.PathParam("id"));
    zfarm::v1::Job job;
    grpc::Status s = stub->GetJob(ctx.get(), req, &job);
    if (!s.ok()) return GrpcError(s);
    return ProtoResponse(200, job);
  }

  Response Cancel(const Request& http) {
    auto ctx = Ctx(http);
    zfarm::v1::CancelJobRequest req;
    req.set_job_id(http.PathParam("id"));
    zfarm::v1::CancelJobResponse resp;
    grpc::Status s = stub->CancelJob(ctx.get(), req, &resp);
    if (!s.ok()) return GrpcError(s);
    return ProtoResponse(200, resp);
  }

  Response Image(const Request& http) {
    auto ctx = Ctx(http);
    zfarm::v1::GetJobRequest get;
    get.set_job_id(http.PathParam("id"));
    zfarm::v1::Job job;
    if (grpc::Status s = stub->GetJob(ctx.get(), get, &job); !s.ok()) return GrpcError(s);
    std::string data;
    grpc::Status s = ReadResult(stub.get(), http, options.rpc_timeout, job.job_id(), &data);
    if (!s.ok()) return GrpcError(s);
    const std::string& type = job.result().media_type();
    Response r = Response::Text(200, std::move(data), type.empty() ? "image/png" : type);
    r.headers.emplace("Cache-Control", "no-store");
    return r;
  }

  // Query parameters arrive URL-decoded; unknown ones are refused.
  Response List(const Request& http) {
    zfarm::v1::ListJobsRequest req;
    for (const auto& [key, value] : http.query) {
      if (key == "state") {
        for (absl::string_view one : absl::StrSplit(value, ',', absl::SkipEmpty())) {
          auto st = ParseState(one);
          if (!st.ok()) return InvalidBody(st.status());
          req.add_states(*st);
        }
      } else if (key == "label") {
        req.set_label(value);
      } else if (key == "batch" || key == "batch_id") {
        req.set_batch_id(value);
      } else if (key == "page_token") {
        req.set_page_token(value);
      } else if (key == "page_size") {
        int n = 0;
        if (!absl::SimpleAtoi(value, &n)) {
          return GrpcError(grpc::StatusCode::INVALID_ARGUMENT, "page_size: not an integer");
        }
        req.set_page_size(n);
      } else {
        return GrpcError(grpc::StatusCode::INVALID_ARGUMENT,
                         absl::StrCat("unknown query parameter '", key,
                                      "' (state, label, batch, page_size, page_token)"));
      }
    }
    auto ctx = Ctx(http);
    zfarm::v1::ListJobsResponse resp;
    grpc::Status s = stub->ListJobs(ctx.get(), req, &resp);
    if (!s.ok()) return GrpcError(s);
    return ProtoResponse(200, resp);
  }

  Response Workers(const Request& http) {
    auto ctx = Ctx(http);
    zfarm::v1::ListWorkersResponse resp;
    grpc::Status s = admin->ListWorkers(ctx.get(), {}, &resp);
    if (!s.ok()) return GrpcError(s);
    return ProtoResponse(200, resp);
  }

  Response Drain(const Request& http) {
    auto ctx = Ctx(http);
    zfarm::v1::DrainWorkerRequest req;
    req.set_worker_name(http.PathParam("name"));
    zfarm::v1::DrainWorkerResponse resp;
    grpc::Status s = admin->DrainWorker(ctx.get(), req, &resp);
    if (!s.ok()) return GrpcError(s);
    return ProtoResponse(200, resp);
  }

  Response Undrain(const Request& http) {
    auto ctx = Ctx(http);
    zfarm::v1::ResumeWorkerRequest req;
    req.set_worker_name(http.PathParam("name"));
    zfarm::v1::ResumeWorkerResponse resp;
    grpc::Status s = admin->ResumeWorker(ctx.get(), req, &resp);
    if (!s.ok()) return GrpcError(s);
    return ProtoResponse(200, resp);
  }

  // Event streams have no deadline: they end with the job, the client or the server.
  void JobEvents(const Request& http, Responder r) { Relay(http, std::move(r), false); }
  void BatchEvents(const Request& http, Responder r) { Relay(http, std::move(r), true); }

  void Relay(const Request& http, Responder r, bool batch) {
    auto relay = std::make_shared<EventRelay>(r);
    std::weak_ptr<EventRelay> weak = relay;
    r.OnCancel([weak] {
      if (auto self = weak.lock()) self->ClientGone();
    });
    auto on_event = [relay](const zfarm::v1::JobEvent& e) { return relay->OnEvent(e); };
    auto on_done = [relay](const grpc::Status& s) { relay->OnDone(s); };
    auto ctx = CallContext(http, absl::InfiniteDuration());
    const std::string id = http.PathParam("id");
    relay->Attach(batch ? StartWatchBatch(stub.get(), std::move(ctx), id, on_event, on_done)
                        : StartWatchJob(stub.get(), std::move(ctx), id, on_event, on_done));
  }

  Response OpenApi(const Request&) {
    const EmbeddedAsset* doc = FindAsset("openapi.json");
    if (doc == nullptr) return GrpcError(grpc::StatusCode::INTERNAL, "openapi.json not embedded");
    return Response::Text(200, std::string(doc->data), "application/json");
  }
};

absl::StatusOr<std::unique_ptr<RestGateway>> RestGateway::Start(
    const Options& options, std::shared_ptr<grpc::Channel> channel) {
  std::unique_ptr<RestGateway> gw(new RestGateway);
  gw->impl_ = std::make_unique<Impl>();
  Impl* impl = gw->impl_.get();
  impl->options = options;
  impl->channel = channel;
  impl->stub = zfarm::v1::JobService::NewStub(channel);
  impl->admin = zfarm::v1::AdminService::NewStub(channel);
  zfarm::http::Router router;
  auto bind = [impl](Response (Impl::*fn)(const Request&)) {
    return [impl, fn](const Request& req) { return (impl->*fn)(req); };
  };
  auto bind_async = [impl](void (Impl::*fn)(const Request&, Responder)) {
    return [impl, fn](const Request& req, Responder r) { (impl->*fn)(req, std::move(r)); };
  };
  router.Add("GET", "/healthz", bind(&Impl::Health))
      .Add("GET", "/readyz", bind(&Impl::Ready))
      .Add("GET", "/openapi.json", bind(&Impl::OpenApi))
      .Add("POST", "/v1/jobs", bind(&Impl::Submit))
      .Add("GET", "/v1/jobs", bind(&Impl::List))
      .Add("GET", "/v1/jobs/{id}", bind(&Impl::Get))
      .Add("DELETE", "/v1/jobs/{id}", bind(&Impl::Cancel))
      .Add("GET", "/v1/jobs/{id}/image", bind(&Impl::Image))
      .AddAsync("GET", "/v1/jobs/{id}/events", bind_async(&Impl::JobEvents))
      .Add("POST", "/v1/batches", bind(&Impl::SubmitBatch))
      .AddAsync("GET", "/v1/batches/{id}/events", bind_async(&Impl::BatchEvents))
      .Add("GET", "/v1/workers", bind(&Impl::Workers))
      .Add("POST", "/v1/workers/{name}:drain", bind(&Impl::Drain))
      .Add("POST", "/v1/workers/{name}:undrain", bind(&Impl::Undrain));
  OpenAiApiOptions oai;
  oai.images_timeout = options.images_timeout;
  oai.rpc_timeout = options.rpc_timeout;
  AddOpenAiRoutes(&router, impl->stub.get(), impl->admin.get(), oai);
  Dashboard::Options dash;
  dash.rpc_timeout = options.rpc_timeout;
  dash.thumbnail_dir = options.thumbnail_dir;
  auto dashboard = Dashboard::Create(dash, impl->stub.get(), impl->admin.get());
  if (!dashboard.ok()) return dashboard.status();
  impl->dashboard = *std::move(dashboard);
  impl->dashboard->AddRoutes(&router);
  if (!router.status().ok()) return router.status();
  gw->routes_ = router.Routes();
  auto server = zfarm::http::HttpServer::Start(options.http, std::move(router));
  if (!server.ok()) return server.status();
  impl->server = *std::move(server);
  gw->port_ = impl->server->port();
  return gw;
}

zfarm::http::HttpServer::Stats RestGateway::stats() const { return impl_->server->stats(); }

int64_t RestGateway::thumbnails_made() const { return impl_->dashboard->thumbnails_made(); }

RestGateway::~RestGateway() {
  // Stop serving first (ends event streams and waits for handlers), then the
  // dashboard's feed, then the stubs.
  if (impl_ && impl_->server) impl_->server->Stop(impl_->options.http.stop_grace);
  if (impl_ && impl_->dashboard) impl_->dashboard->Stop();
}

}  // namespace zfarm::scheduler::http
