#include "scheduler/http/rest_common.h"

#include <algorithm>
#include <cstdint>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "proto/contract/error_details.h"
#include "proto/contract/rpc_status.h"

namespace zfarm::scheduler::http {

using ::zfarm::contract::FromGrpcCall;
using ::zfarm::contract::RetryDelay;

std::unique_ptr<grpc::ClientContext> CallContext(const std::string& authorization,
                                                 absl::Duration timeout) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (timeout != absl::InfiniteDuration()) {
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
  if (!authorization.empty()) ctx->AddMetadata("authorization", authorization);
  return ctx;
}

std::string AuthorizationOf(const zfarm::http::Request& req) {
  const std::string* auth = req.Header("Authorization");
  return auth != nullptr ? *auth : std::string();
}

std::unique_ptr<grpc::ClientContext> CallContext(const zfarm::http::Request& req,
                                                 absl::Duration timeout) {
  return CallContext(AuthorizationOf(req), timeout);
}

grpc::Status ReadResult(zfarm::v1::JobService::Stub* stub, const zfarm::http::Request& req,
                        absl::Duration timeout, const std::string& job_id, std::string* data) {
  auto ctx = CallContext(req, timeout);
  zfarm::v1::GetResultRequest r;
  r.set_job_id(job_id);
  auto reader = stub->GetResult(ctx.get(), r);
  data->clear();
  zfarm::v1::ResultChunk chunk;
  while (reader->Read(&chunk)) *data += chunk.data();
  return reader->Finish();
}

const char* GrpcCodeName(grpc::StatusCode code) {
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

zfarm::http::Response GrpcError(grpc::StatusCode code, const std::string& message) {
  return zfarm::http::Response::Error(HttpStatusForCode(code), GrpcCodeName(code), message);
}

zfarm::http::Response GrpcError(const grpc::Status& s) {
  return GrpcError(s.error_code(), s.error_message());
}

zfarm::http::Response GrpcError(const grpc::Status& s, const grpc::ClientContext& ctx) {
  zfarm::http::Response r = GrpcError(s);
  if (std::optional<absl::Duration> delay = RetryDelay(FromGrpcCall(s, ctx))) {
    const int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(*delay));
    r.headers.emplace("Retry-After", absl::StrCat((ms + 999) / 1000));
  }
  return r;
}

std::string ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(m, &out, opts).ok()) return "";
  return out;
}

zfarm::http::Response ProtoResponse(int status, const google::protobuf::Message& m) {
  std::string out = ToJson(m);
  if (out.empty()) return GrpcError(grpc::StatusCode::INTERNAL, "cannot encode response");
  return zfarm::http::Response::Json(status, out + "\n");
}

absl::Status ParseJsonBody(const std::string& body, const std::string& what,
                           google::protobuf::Message* m) {
  auto parsed = google::protobuf::util::JsonStringToMessage(body, m);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("body: not a ", what, " in JSON: ", std::string(parsed.message())));
  }
  return absl::OkStatus();
}

std::optional<zfarm::http::Response> CheckJsonBody(const zfarm::http::Request& req) {
  // No Content-Type, and application/x-www-form-urlencoded (what `curl -d`
  // sends by default), are read as JSON; any other type is refused rather
  // than guessed at.
  const std::string* type = req.Header("Content-Type");
  if (type == nullptr) return std::nullopt;
  const std::string media = absl::AsciiStrToLower(
      absl::StripAsciiWhitespace(absl::string_view(*type).substr(0, type->find(';'))));
  if (media == "application/json" || media == "application/x-www-form-urlencoded") {
    return std::nullopt;
  }
  return zfarm::http::Response::Error(
      415, "INVALID_ARGUMENT",
      absl::StrCat("Content-Type: \"", media, "\" is not accepted; send application/json"));
}

}  // namespace zfarm::scheduler::http
