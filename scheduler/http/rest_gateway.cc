#include "scheduler/http/rest_gateway.h"

#include <civetweb.h>

#include <cstring>
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
#include "nlohmann/json.hpp"
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

void Send(mg_connection* conn, int status, const std::string& content_type,
          const std::string& body) {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            status, mg_get_response_code_text(conn, status), content_type.c_str(), body.size());
  mg_write(conn, body.data(), body.size());
}

void SendError(mg_connection* conn, grpc::StatusCode code, const std::string& message) {
  nlohmann::json j{{"code", CodeName(code)}, {"message", message}};
  Send(conn, HttpStatusForCode(code), "application/json",
       j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

void SendMessage(mg_connection* conn, int status, const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  std::string out;
  auto s = google::protobuf::util::MessageToJsonString(m, &out, opts);
  if (!s.ok()) {
    SendError(conn, grpc::StatusCode::INTERNAL, "cannot encode response");
    return;
  }
  Send(conn, status, "application/json", out + "\n");
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

  void Prepare(mg_connection* conn, grpc::ClientContext* ctx) const {
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + options.rpc_timeout));
    if (const char* auth = mg_get_header(conn, "Authorization")) {
      ctx->AddMetadata("authorization", auth);
    }
  }

  // Reads the body; false (and an error sent) when too large or unreadable.
  bool ReadBody(mg_connection* conn, std::string* body) const {
    const mg_request_info* ri = mg_get_request_info(conn);
    if (ri->content_length > static_cast<long long>(options.max_body_bytes)) {
      SendError(conn, grpc::StatusCode::INVALID_ARGUMENT,
                absl::StrCat("body: over ", options.max_body_bytes, " bytes"));
      return false;
    }
    char buf[8192];
    int n;
    while ((n = mg_read(conn, buf, sizeof(buf))) > 0) {
      body->append(buf, static_cast<size_t>(n));
      if (body->size() > options.max_body_bytes) {
        SendError(conn, grpc::StatusCode::INVALID_ARGUMENT,
                  absl::StrCat("body: over ", options.max_body_bytes, " bytes"));
        return false;
      }
    }
    return true;
  }

  void Handle(mg_connection* conn) {
    const mg_request_info* ri = mg_get_request_info(conn);
    const std::string method = ri->request_method ? ri->request_method : "";
    absl::string_view path = ri->local_uri ? ri->local_uri : "";
    path = absl::StripSuffix(path, "/");
    const std::string query = ri->query_string ? ri->query_string : "";
    if (path == "/v1/jobs") {
      if (method == "POST") return Submit(conn);
      if (method == "GET") return List(conn, query);
      return SendError(conn, grpc::StatusCode::UNIMPLEMENTED,
                       absl::StrCat(method, " /v1/jobs: use POST or GET"));
    }
    absl::string_view rest = path;
    if (!absl::ConsumePrefix(&rest, "/v1/jobs/") || rest.empty()) {
      return SendError(conn, grpc::StatusCode::NOT_FOUND, absl::StrCat("no route for ", path));
    }
    std::vector<std::string> parts = absl::StrSplit(rest, '/');
    if (parts.size() == 1 && method == "GET") return Get(conn, parts[0]);
    if (parts.size() == 1 && method == "DELETE") return Cancel(conn, parts[0]);
    if (parts.size() == 2 && parts[1] == "image" && method == "GET") {
      return Image(conn, parts[0]);
    }
    SendError(conn, grpc::StatusCode::NOT_FOUND, absl::StrCat("no route for ", method, " ", path));
  }

  void Submit(mg_connection* conn) {
    std::string body;
    if (!ReadBody(conn, &body)) return;
    zfarm::v1::SubmitJobRequest req;
    auto parsed = google::protobuf::util::JsonStringToMessage(body, &req);
    if (!parsed.ok()) {
      return SendError(
          conn, grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("body: not a SubmitJobRequest in JSON: ", std::string(parsed.message())));
    }
    grpc::ClientContext ctx;
    Prepare(conn, &ctx);
    zfarm::v1::SubmitJobResponse resp;
    grpc::Status s = stub->SubmitJob(&ctx, req, &resp);
    if (!s.ok()) return SendError(conn, s.error_code(), s.error_message());
    LOG(INFO) << "event=rest_submit job=" << resp.job().job_id() << " request=" << req.request_id()
              << " created=" << resp.created();
    SendMessage(conn, resp.created() ? 201 : 200, resp);
  }

  void Get(mg_connection* conn, const std::string& id) {
    grpc::ClientContext ctx;
    Prepare(conn, &ctx);
    zfarm::v1::GetJobRequest req;
    req.set_job_id(id);
    zfarm::v1::Job job;
    grpc::Status s = stub->GetJob(&ctx, req, &job);
    if (!s.ok()) return SendError(conn, s.error_code(), s.error_message());
    SendMessage(conn, 200, job);
  }

  void Cancel(mg_connection* conn, const std::string& id) {
    grpc::ClientContext ctx;
    Prepare(conn, &ctx);
    zfarm::v1::CancelJobRequest req;
    req.set_job_id(id);
    zfarm::v1::CancelJobResponse resp;
    grpc::Status s = stub->CancelJob(&ctx, req, &resp);
    if (!s.ok()) return SendError(conn, s.error_code(), s.error_message());
    SendMessage(conn, 200, resp);
  }

  void Image(mg_connection* conn, const std::string& id) {
    grpc::ClientContext ctx;
    Prepare(conn, &ctx);
    zfarm::v1::GetResultRequest req;
    req.set_job_id(id);
    auto reader = stub->GetResult(&ctx, req);
    std::string data;
    zfarm::v1::ResultChunk chunk;
    while (reader->Read(&chunk)) data += chunk.data();
    grpc::Status s = reader->Finish();
    if (!s.ok()) return SendError(conn, s.error_code(), s.error_message());
    Send(conn, 200, "image/png", data);
  }

  void List(mg_connection* conn, const std::string& query) {
    zfarm::v1::ListJobsRequest req;
    for (absl::string_view kv : absl::StrSplit(query, '&', absl::SkipEmpty())) {
      std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      std::vector<char> decoded(p.second.size() + 1);
      mg_url_decode(p.second.c_str(), static_cast<int>(p.second.size()), decoded.data(),
                    static_cast<int>(decoded.size()), 1);
      std::string value = decoded.data();
      if (p.first == "state") {
        for (absl::string_view one : absl::StrSplit(value, ',', absl::SkipEmpty())) {
          auto st = ParseState(one);
          if (!st.ok()) {
            return SendError(conn, grpc::StatusCode::INVALID_ARGUMENT,
                             std::string(st.status().message()));
          }
          req.add_states(*st);
        }
      } else if (p.first == "label") {
        req.set_label(value);
      } else if (p.first == "batch" || p.first == "batch_id") {
        req.set_batch_id(value);
      } else if (p.first == "page_token") {
        req.set_page_token(value);
      } else if (p.first == "page_size") {
        int n = 0;
        if (!absl::SimpleAtoi(value, &n)) {
          return SendError(conn, grpc::StatusCode::INVALID_ARGUMENT, "page_size: not an integer");
        }
        req.set_page_size(n);
      } else {
        return SendError(conn, grpc::StatusCode::INVALID_ARGUMENT,
                         absl::StrCat("unknown query parameter '", p.first,
                                      "' (state, label, batch, page_size, "
                                      "page_token)"));
      }
    }
    grpc::ClientContext ctx;
    Prepare(conn, &ctx);
    zfarm::v1::ListJobsResponse resp;
    grpc::Status s = stub->ListJobs(&ctx, req, &resp);
    if (!s.ok()) return SendError(conn, s.error_code(), s.error_message());
    SendMessage(conn, 200, resp);
  }
};

namespace {
int HandleRequest(mg_connection* conn, void* cbdata) {
  static_cast<RestGateway::Impl*>(cbdata)->Handle(conn);
  return 200;  // handled
}
}  // namespace

absl::StatusOr<std::unique_ptr<RestGateway>> RestGateway::Start(
    const Options& options, std::shared_ptr<grpc::Channel> channel) {
  std::unique_ptr<RestGateway> gw(new RestGateway);
  gw->impl_ = std::make_unique<Impl>();
  gw->impl_->options = options;
  gw->impl_->stub = zfarm::v1::JobService::NewStub(channel);
  const bool https = options.tls.server_enabled();
  mg_init_library(https ? MG_FEATURES_SSL : 0);
  const std::string threads = std::to_string(options.num_threads);
  // civetweb marks a TLS port with an "s" suffix; the SSL_CTX is set up by
  // security::ConfigureServerSslCtx in the init_ssl callback.
  const std::string listening = https ? options.listen + "s" : options.listen;
  const char* opts[] = {"listening_ports",    listening.c_str(), "num_threads", threads.c_str(),
                        "request_timeout_ms", "60000",           nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  if (https) {
    // Debian 12's civetweb (1.15, OpenSSL 3) crashes the process on the first
    // TLS connection (a null OpenSSL function pointer in its worker thread,
    // seen both with this callback and with its own ssl_certificate option),
    // so HTTPS is refused rather than offered. Terminate TLS in front of a
    // loopback --http-listen instead.
    if (!options.allow_civetweb_tls) {
      return absl::UnimplementedError(
          "--http-listen with --tls-cert: HTTPS on the REST gateway is not available with "
          "this civetweb build; serve --http-listen on 127.0.0.1 behind a TLS proxy, or omit "
          "--http-listen (gRPC TLS is unaffected)");
    }
    // Check the files first so a bad flag gets a clear message.
    if (auto c = security::ServerCredentials(options.tls); !c.ok()) return c.status();
    callbacks.init_ssl = [](void* ssl_ctx, void* user) -> int {
      auto* impl = static_cast<RestGateway::Impl*>(user);
      absl::Status s = security::ConfigureServerSslCtx(ssl_ctx, impl->options.tls);
      if (!s.ok()) {
        LOG(ERROR) << "event=rest_tls_failed error=\"" << s.message() << "\"";
        return -1;
      }
      return 1;  // configured here: civetweb loads no certificate itself
    };
  }
  gw->ctx_ = mg_start(&callbacks, gw->impl_.get(), opts);
  if (gw->ctx_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("--http-listen: cannot listen on '", options.listen,
                                               "'", https ? " with TLS (see the log)" : ""));
  }
  mg_set_request_handler(gw->ctx_, "/v1/jobs", HandleRequest, gw->impl_.get());
  mg_server_port ports[4];
  int n = mg_get_server_ports(gw->ctx_, 4, ports);
  if (n > 0) gw->port_ = ports[0].port;
  LOG(INFO) << "event=rest_gateway_started listen=" << options.listen << " port=" << gw->port_;
  return gw;
}

RestGateway::~RestGateway() {
  if (ctx_ != nullptr) mg_stop(ctx_);
}

}  // namespace zfarm::scheduler::http
