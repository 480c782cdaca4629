#ifndef ZFARM_SCHEDULER_HTTP_REST_GATEWAY_H_
#define ZFARM_SCHEDULER_HTTP_REST_GATEWAY_H_

// File: rest_gateway.h
// A REST/JSON door to JobService for tools that cannot speak gRPC. Every
// request becomes one JobService call over `channel` (in the scheduler, an
// in-process channel), so validation and authorization are exactly gRPC's;
// the HTTP Authorization header is forwarded as gRPC metadata (bearer tokens
// are checked by the scheduler's Authorizer). Options::tls serves HTTPS.
//
//   POST   /v1/jobs               body: SubmitJobRequest in protobuf's JSON
//                                 mapping -> SubmitJobResponse (201 created,
//                                 200 when the request_id already existed)
//   GET    /v1/jobs/{id}          -> Job
//   GET    /v1/jobs/{id}/image    -> image/png (GetResult)
//   DELETE /v1/jobs/{id}          -> CancelJobResponse
//   GET    /v1/jobs?state=queued,running&label=k=v&batch=ID&page_size=N
//          &page_token=T          -> ListJobsResponse
//
// Errors: {"code": "INVALID_ARGUMENT", "message": "..."} with the HTTP status
// mapped from the gRPC code (HttpStatusForCode). JSON output keeps the proto
// field names (snake_case).
//
// Example:
//   RestGateway::Options o;
//   o.http.listen = "0.0.0.0:8080";
//   ZFARM_ASSIGN_OR_RETURN(auto gw, RestGateway::Start(o, server->InProcessChannel({})));
//
// Thread-safe. Served by zfarm::http::HttpServer (proto/http/http_server.h):
// event-driven, with its connection limits, total request deadlines, 404/405
// answers and JSON errors; handlers run on its handler pool.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/support/status.h"
#include "proto/http/http_server.h"

namespace zfarm::scheduler::http {

class RestGateway {
 public:
  struct Options {
    // Listen address (port 0 picks a free one, see port()), TLS (HTTPS when
    // http.tls.cert is set; with http.tls.ca, client certificates signed by
    // it are required) and the server's limits. Errors name http.flag.
    zfarm::http::HttpServer::Options http;
    // Deadline of each JobService call.
    absl::Duration rpc_timeout = absl::Seconds(30);
  };

  static absl::StatusOr<std::unique_ptr<RestGateway>> Start(const Options& options,
                                                            std::shared_ptr<grpc::Channel> channel);
  ~RestGateway();  // Stops serving.
  RestGateway(const RestGateway&) = delete;
  RestGateway& operator=(const RestGateway&) = delete;

  int port() const { return port_; }
  // The HTTP server's connection and request counters.
  zfarm::http::HttpServer::Stats stats() const;

  struct Impl;  // implementation detail (handlers, server and its thread)

 private:
  RestGateway() = default;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

// INVALID_ARGUMENT/FAILED_PRECONDITION/OUT_OF_RANGE 400, UNAUTHENTICATED 401,
// PERMISSION_DENIED 403, NOT_FOUND 404, ALREADY_EXISTS/ABORTED 409,
// RESOURCE_EXHAUSTED 429, CANCELLED 499, UNIMPLEMENTED 501, UNAVAILABLE 503,
// DEADLINE_EXCEEDED 504, others 500.
int HttpStatusForCode(grpc::StatusCode code);

}  // namespace zfarm::scheduler::http

#endif  // ZFARM_SCHEDULER_HTTP_REST_GATEWAY_H_
