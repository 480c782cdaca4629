#include "scheduler/http/rest_gateway.h"

#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "glog/logging.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "proto/http/http_server.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler::http {
namespace {

const char* CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  int c = static_cast<int>(code);
  return c >= 0 && c <= 16 ? kNames[c] : "UNKNOWN";
}

using zfarm::http::Request;
using zfarm::http::Response;

Response Error(grpc::StatusCode code, const std::string& message) {
  return Response::Error(HttpStatusForCode(code), CodeName(code), message);
}

Response MessageResponse(int status, const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  std::string out;
  auto s = google::protobuf::util::MessageToJsonString(m, &out, opts);
  if (!s.ok()) return Error(grpc::StatusCode::INTERNAL, "cannot encode response");
  return Response::Json(status, out + "\n");
}

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

}  // namespace

int HttpStatusForCode(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return 200;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE:
      return 400;
    case grpc::StatusCode::UNAUTHENTICATED:
      return 401;
    case grpc::StatusCode::PERMISSION_DENIED:
      return 403;
    case grpc::StatusCode::NOT_FOUND:
      return 404;
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::ABORTED:
      return 409;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return 429;
    case grpc::StatusCode::CANCELLED:
      return 499;
    case grpc::StatusCode::UNIMPLEMENTED:
      return 501;
    case grpc::StatusCode::UNAVAILABLE:
      return 503;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return 504;
    default:
      return 500;
  }
}

struct RestGateway::Impl {
  Options options;
  std::unique_ptr<zfarm::v1::JobService::Stub> stub;
  std::unique_ptr<zfarm::http::HttpServer> server;

  void Prepare(const Request& req, grpc::ClientContext* ctx) const {
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + options.rpc_timeout));
    if (const std::string* auth = req.Header("Authorization")) {
      ctx->AddMetadata("authorization", *auth);
    }
  }

  Response Submit(const Request& http) {
    // The body is JSON. No Content-Type, and application/x-www-form-urlencoded
    // (what `curl -d` sends by default), are read as JSON; any other type is
    // refused rather than guessed at.
    if (const std::string* type = http.Header("Content-Type"); type != nullptr) {
      const std::string media = absl::AsciiStrToLower(
          absl::StripAsciiWhitespace(absl::string_view(*type).substr(0, type->find(';'))));
      if (media != "application/json" && media != "application/x-www-form-urlencoded") {
        return Response::Error(415, "INVALID_ARGUMENT",
                               absl::StrCat("Content-Type: \"", media,
                                            "\" is not accepted; send application/json"));
      }
    }
    zfarm::v1::SubmitJobRequest req;
    auto parsed = google::protobuf::util::JsonStringToMessage(http.body, &req);
    if (!parsed.ok()) {
      return Error(grpc::StatusCode::INVALID_ARGUMENT,
                   absl::StrCat("body: not a SubmitJobRequest in JSON: ",
                                std::string(parsed.message())));
    }
    grpc::ClientContext ctx;
    Prepare(http, &ctx);
    zfarm::v1::SubmitJobResponse resp;
    grpc::Status s = stub->SubmitJob(&ctx, req, &resp);
    if (!s.ok()) return Error(s.error_code(), s.error_message());
    LOG(INFO) << "event=rest_submit job=" << resp.job().job_id() << " request=" << req.request_id()
              << " created=" << resp.created();
    return MessageResponse(resp.created() ? 201 : 200, resp);
  }

  Response Get(const Request& http) {
    grpc::ClientContext ctx;
    Prepare(http, &ctx);
    zfarm::v1::GetJobRequest req;
    req.set_job_id(http.PathParam("id"));
    zfarm::v1::Job job;
    grpc::Status s = stub->GetJob(&ctx, req, &job);
    if (!s.ok()) return Error(s.error_code(), s.error_message());
    return MessageResponse(200, job);
  }

  Response Cancel(const Request& http) {
    grpc::ClientContext ctx;
    Prepare(http, &ctx);
    zfarm::v1::CancelJobRequest req;
    req.set_job_id(http.PathParam("id"));
    zfarm::v1::CancelJobResponse resp;
    grpc::Status s = stub->CancelJob(&ctx, req, &resp);
    if (!s.ok()) return Error(s.error_code(), s.error_message());
    return MessageResponse(200, resp);
  }

  Response Image(const Request& http) {
    grpc::ClientContext ctx;
    Prepare(http, &ctx);
    zfarm::v1::GetResultRequest req;
    req.set_job_id(http.PathParam("id"));
    auto reader = stub->GetResult(&ctx, req);
    std::string data;
    zfarm::v1::ResultChunk chunk;
    while (reader->Read(&chunk)) data += chunk.data();
    grpc::Status s = reader->Finish();
    if (!s.ok()) return Error(s.error_code(), s.error_message());
    Response r = Response::Text(200, std::move(data), "image/png");
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
          if (!st.ok()) {
            return Error(grpc::StatusCode::INVALID_ARGUMENT, std::string(st.status().message()));
          }
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
          return Error(grpc::StatusCode::INVALID_ARGUMENT, "page_size: not an integer");
        }
        req.set_page_size(n);
      } else {
        return Error(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("unknown query parameter '", key,
                                  "' (state, label, batch, page_size, page_token)"));
      }
    }
    grpc::ClientContext ctx;
    Prepare(http, &ctx);
    zfarm::v1::ListJobsResponse resp;
    grpc::Status s = stub->ListJobs(&ctx, req, &resp);
    if (!s.ok()) return Error(s.error_code(), s.error_message());
    return MessageResponse(200, resp);
  }
};

absl::StatusOr<std::unique_ptr<RestGateway>> RestGateway::Start(
    const Options& options, std::shared_ptr<grpc::Channel> channel) {
  std::unique_ptr<RestGateway> gw(new RestGateway);
  gw->impl_ = std::make_unique<Impl>();
  Impl* impl = gw->impl_.get();
  impl->options = options;
  impl->stub = zfarm::v1::JobService::NewStub(channel);
  zfarm::http::Router router;
  auto bind = [impl](Response (Impl::*fn)(const Request&)) {
    return [impl, fn](const Request& req) { return (impl->*fn)(req); };
  };
  router.Add("POST", "/v1/jobs", bind(&Impl::Submit))
      .Add("GET", "/v1/jobs", bind(&Impl::List))
      .Add("GET", "/v1/jobs/{id}", bind(&Impl::Get))
      .Add("DELETE", "/v1/jobs/{id}", bind(&Impl::Cancel))
      .Add("GET", "/v1/jobs/{id}/image", bind(&Impl::Image));
  auto server = zfarm::http::HttpServer::Start(options.http, std::move(router));
  if (!server.ok()) return server.status();
  impl->server = *std::move(server);
  gw->port_ = impl->server->port();
  return gw;
}

zfarm::http::HttpServer::Stats RestGateway::stats() const { return impl_->server->stats(); }

RestGateway::~RestGateway() = default;  // impl_->server stops serving first

}  // namespace zfarm::scheduler::http
