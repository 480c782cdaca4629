#ifndef ZFARM_SCHEDULER_HTTP_REST_COMMON_H_
#define ZFARM_SCHEDULER_HTTP_REST_COMMON_H_

// File: rest_common.h
// What the scheduler's HTTP doors (rest_gateway, openai_api, dashboard) share:
// forwarding a request's credentials to the in-process gRPC call, proto <->
// JSON in protobuf's JSON mapping (snake_case names), and gRPC codes as HTTP.
// Stateless functions; thread-safe.

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"
#include "proto/http/message.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler::http {

// A context for one gRPC call on behalf of `req`: deadline now + timeout
// (none when timeout is infinite) and the Authorization header as metadata,
// so bearer tokens are checked by the scheduler's Authorizer.
std::unique_ptr<grpc::ClientContext> CallContext(const zfarm::http::Request& req,
                                                 absl::Duration timeout);
// The same for a saved Authorization header value ("" = none).
std::unique_ptr<grpc::ClientContext> CallContext(const std::string& authorization,
                                                 absl::Duration timeout);
// The request's Authorization header, or "".
std::string AuthorizationOf(const zfarm::http::Request& req);

// GetResult(job_id) on behalf of `req`, the whole file into *data.
grpc::Status ReadResult(zfarm::v1::JobService::Stub* stub, const zfarm::http::Request& req,
                        absl::Duration timeout, const std::string& job_id, std::string* data);

// "INVALID_ARGUMENT" for INVALID_ARGUMENT, ...
const char* GrpcCodeName(grpc::StatusCode code);

// INVALID_ARGUMENT/FAILED_PRECONDITION/OUT_OF_RANGE 400, UNAUTHENTICATED 401,
// PERMISSION_DENIED 403, NOT_FOUND 404, ALREADY_EXISTS/ABORTED 409,
// RESOURCE_EXHAUSTED 429, CANCELLED 499, UNIMPLEMENTED 501, UNAVAILABLE 503,
// DEADLINE_EXCEEDED 504, others 500.
int HttpStatusForCode(grpc::StatusCode code);

// {"code": "<name>", "message": "..."} with the mapped HTTP status.
zfarm::http::Response GrpcError(const grpc::Status& s);
zfarm::http::Response GrpcError(grpc::StatusCode code, const std::string& message);
// The same plus what the call's typed details (error_details.h) say over HTTP: a
// retry delay becomes Retry-After (whole seconds, rounded up).
zfarm::http::Response GrpcError(const grpc::Status& s, const grpc::ClientContext& ctx);

// `m` in protobuf's JSON mapping with proto field names; "" when it cannot be
// encoded (never for zfarm's messages).
std::string ToJson(const google::protobuf::Message& m);
// A JSON answer of `m` (500 INTERNAL if it cannot be encoded).
zfarm::http::Response ProtoResponse(int status, const google::protobuf::Message& m);

// Parses a JSON request body into `m`. Unknown fields are refused: the
// error (INVALID_ARGUMENT) names `what` and the parser's complaint. A
// Content-Type other than application/json (or none, or curl -d's
// application/x-www-form-urlencoded) is refused with 415 by CheckJsonBody.
absl::Status ParseJsonBody(const std::string& body, const std::string& what,
                           google::protobuf::Message* m);
// Empty when the request's Content-Type is acceptable, else the 415 answer.
std::optional<zfarm::http::Response> CheckJsonBody(const zfarm::http::Request& req);

}  // namespace zfarm::scheduler::http

#endif  // ZFARM_SCHEDULER_HTTP_REST_COMMON_H_
