#include "scheduler/http/rest_gateway.h"

#include <httplib.h>

#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
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

void Send(httplib::Response& res, int status, const std::string& content_type, std::string body) {
  res.status = status;
  res.set_header("Cache-Control", "no-store");
  res.body = std::move(body);
  res.set_header("Content-Type", content_type);
}

void SendError(httplib::Response& res, grpc::StatusCode code, const std::string& message) {
  Send(res, HttpStatusForCode(code), "application/json",
       zfarm::http::JsonErrorBody(CodeName(code), message));
}

void SendMessage(httplib::Response& res, int status, const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  std::string out;
  auto s = google::protobuf::util::MessageToJsonString(m, &out, opts);
  if (!s.ok()) {
    SendError(res, grpc::StatusCode::INTERNAL, "cannot encode response");
    return;
  }
  Send(res, status, "application/json", out + "\n");
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

  void Prepare(const httplib::Request& req, grpc::ClientContext* ctx) const {
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + options.rpc_timeout));
    if (req.has_header("Authorization")) {
      ctx->AddMetadata("authorization", req.get_header_value("Authorization"));
    }
  }

  void Handle(const httplib::Request& req, httplib::Response& res) {
    const std::string& method = req.method;
    absl::string_view path = absl::StripSuffix(req.path, "/");
    if (path == "/v1/jobs") {
      if (method == "POST") return Submit(req, res);
      if (method == "GET") return List(req, res);
      return SendError(res, grpc::StatusCode::UNIMPLEMENTED,
                       absl::StrCat(method, " /v1/jobs: use POST or GET"));
    }
    absl::string_view rest = path;
    if (!absl::ConsumePrefix(&rest, "/v1/jobs/") || rest.empty()) {
      return SendError(res, grpc::StatusCode::NOT_FOUND, absl::StrCat("no route for ", path));
    }
    std::vector<std::string> parts = absl::StrSplit(rest, '/');
    if (parts.size() == 1 && method == "GET") return Get(req, res, parts[0]);
    if (parts.size() == 1 && method == "DELETE") return Cancel(req, res, parts[0]);
    if (parts.size() == 2 && parts[1] == "image" && method == "GET") {
      return Image(req, res, parts[0]);
    }
    SendError(res, grpc::StatusCode::NOT_FOUND, absl::StrCat("no route for ", method, " ", path));
  }

  void Submit(const httplib::Request& http, httplib::Response& res) {
    zfarm::v1::SubmitJobRequest req;
    auto parsed = google::protobuf::util::JsonStringToMessage(http.body, &req);
    if (!parsed.ok()) {
      return SendError(
          res, grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("body: not a SubmitJobRequest in JSON: ", std::string(parsed.message())));
    }
    grpc::ClientContext ctx;
    Prepare(http, &ctx);
    zfarm::v1::SubmitJobResponse resp;
    grpc::Status s = stub->SubmitJob(&ctx, req, &resp);
    if (!s.ok()) return SendError(res, s.error_code(), s.error_message());
    LOG(INFO) << "event=rest_submit job=" << resp.job().job_id() << " request=" << req.request_id()
              << " created=" << resp.created();
    SendMessage(res, resp.created() ? 201 : 200, resp);
  }

  void Get(const httplib::Request& http, httplib::Response& res, const std::string& id) {
    grpc::ClientContext ctx;
    Prepare(http, &ctx);
    zfarm::v1::GetJobRequest req;
    req.set_job_id(id);
    zfarm::v1::Job job;
    grpc::Status s = stub->GetJob(&ctx, req, &job);
    if (!s.ok()) return SendError(res, s.error_code(), s.error_message());
    SendMessage(res, 200, job);
  }

  void Cancel(const httplib::Request& http, httplib::Response& res, const std::string& id) {
    grpc::ClientContext ctx;
    Prepare(http, &ctx);
    zfarm::v1::CancelJobRequest req;
    req.set_job_id(id);
    zfarm::v1::CancelJobResponse resp;
    grpc::Status s = stub->CancelJob(&ctx, req, &resp);
    if (!s.ok()) return SendError(res, s.error_code(), s.error_message());
    SendMessage(res, 200, resp);
  }

  void Image(const httplib::Request& http, httplib::Response& res, const std::string& id) {
    grpc::ClientContext ctx;
    Prepare(http, &ctx);
    zfarm::v1::GetResultRequest req;
    req.set_job_id(id);
    auto reader = stub->GetResult(&ctx, req);
    std::string data;
    zfarm::v1::ResultChunk chunk;
    while (reader->Read(&chunk)) data += chunk.data();
    grpc::Status s = reader->Finish();
    if (!s.ok()) return SendError(res, s.error_code(), s.error_message());
    Send(res, 200, "image/png", std::move(data));
  }

  // Query parameters arrive URL-decoded (httplib); unknown ones are refused.
  void List(const httplib::Request& http, httplib::Response& res) {
    zfarm::v1::ListJobsRequest req;
    for (const auto& [key, value] : http.params) {
      if (key == "state") {
        for (absl::string_view one : absl::StrSplit(value, ',', absl::SkipEmpty())) {
          auto st = ParseState(one);
          if (!st.ok()) {
            return SendError(res, grpc::StatusCode::INVALID_ARGUMENT,
                             std::string(st.status().message()));
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
          return SendError(res, grpc::StatusCode::INVALID_ARGUMENT, "page_size: not an integer");
        }
        req.set_page_size(n);
      } else {
        return SendError(res, grpc::StatusCode::INVALID_ARGUMENT,
                         absl::StrCat("unknown query parameter '", key,
                                      "' (state, label, batch, page_size, page_token)"));
      }
    }
    grpc::ClientContext ctx;
    Prepare(http, &ctx);
    zfarm::v1::ListJobsResponse resp;
    grpc::Status s = stub->ListJobs(&ctx, req, &resp);
    if (!s.ok()) return SendError(res, s.error_code(), s.error_message());
    SendMessage(res, 200, resp);
  }
};

absl::StatusOr<std::unique_ptr<RestGateway>> RestGateway::Start(
    const Options& options, std::shared_ptr<grpc::Channel> channel) {
  std::unique_ptr<RestGateway> gw(new RestGateway);
  gw->impl_ = std::make_unique<Impl>();
  Impl* impl = gw->impl_.get();
  impl->options = options;
  impl->stub = zfarm::v1::JobService::NewStub(channel);
  zfarm::http::HttpServer::Options ho;
  ho.listen = options.listen;
  ho.flag = "--http-listen";
  ho.tls = options.tls;
  ho.num_threads = options.num_threads;
  ho.max_body_bytes = options.max_body_bytes;
  auto server = zfarm::http::HttpServer::Start(ho, [impl](httplib::Server& svr) {
    auto handler = [impl](const httplib::Request& req, httplib::Response& res) {
      impl->Handle(req, res);
    };
    for (const char* pattern : {"/v1/jobs", "/v1/jobs/.*"}) {
      svr.Get(pattern, handler);
      svr.Post(pattern, handler);
      svr.Put(pattern, handler);
      svr.Patch(pattern, handler);
      svr.Delete(pattern, handler);
    }
  });
  if (!server.ok()) return server.status();
  impl->server = *std::move(server);
  gw->port_ = impl->server->port();
  return gw;
}

RestGateway::~RestGateway() = default;  // impl_->server stops serving first

}  // namespace zfarm::scheduler::http
