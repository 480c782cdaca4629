#ifndef ZFARM_SCHEDULER_HTTP_REST_GATEWAY_H_
#define ZFARM_SCHEDULER_HTTP_REST_GATEWAY_H_

// File: rest_gateway.h
// The scheduler's HTTP port: a REST/JSON door to JobService and AdminService
// for tools that cannot speak gRPC, the OpenAI images API (openai_api.h) and
// the farm dashboard (dashboard.h). Every request becomes JobService or
// AdminService calls over `channel` (in the scheduler, an in-process channel),
// so validation, authorization and idempotency are exactly gRPC's; the HTTP
// Authorization header is forwarded as gRPC metadata (bearer tokens are
// checked by the scheduler's Authorizer). Options::http.tls serves HTTPS.
//
//   GET    /healthz               -> {"status": "ok"} while the process serves
//   GET    /readyz                -> 200 {"status": "ready"} when the gRPC server
//                                 reports SERVING, else 503
//   POST   /v1/jobs               body: SubmitJobRequest -> SubmitJobResponse (201
//                                 created, 200 when the request_id already existed)
//   POST   /v1/batches            body: SubmitJobsRequest -> SubmitJobsResponse (201
//                                 when any job was created, else 200)
//   GET    /v1/jobs/{id}          -> Job
//   GET    /v1/jobs/{id}/image    -> the result file (GetResult), its media type
//   GET    /v1/jobs/{id}/events   -> text/event-stream of WatchJob
//   GET    /v1/batches/{id}/events -> text/event-stream of WatchJobs(batch_id)
//   DELETE /v1/jobs/{id}          -> CancelJobResponse
//   GET    /v1/jobs?state=queued,running&label=k=v&batch=ID&page_size=N
//          &page_token=T          -> ListJobsResponse
//   GET    /v1/workers            -> ListWorkersResponse
//   POST   /v1/workers/{name}:drain   -> DrainWorkerResponse
//   POST   /v1/workers/{name}:undrain -> ResumeWorkerResponse
//   GET    /openapi.json          -> the OpenAPI 3.1 description of every route
//
// Bodies use protobuf's JSON mapping with the proto field names (snake_case);
// unknown fields are refused (400). An event stream sends one SSE event per
// JobEvent: "event: snapshot | state_changed | progress", "data: <JobEvent
// JSON>"; it ends after the job (every job of the batch) is final. A watch
// that fails before its first event is an ordinary error answer; later
// failures end the stream with "event: error", data {"code", "message"}.
//
// Errors: {"code": "INVALID_ARGUMENT", "message": "..."} with the HTTP status
// mapped from the gRPC code (HttpStatusForCode); 404 JSON for unknown routes,
// 405 with Allow for a known path with another method (the HTTP server's).
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
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/support/status.h"
#include "proto/http/http_server.h"
#include "scheduler/http/rest_common.h"

namespace zfarm::scheduler::http {

class RestGateway {
 public:
  struct Options {
    // Listen address (port 0 picks a free one, see port()), TLS (HTTPS when
    // http.tls.cert is set; with http.tls.ca, client certificates signed by
    // it are required) and the server's limits. Errors name http.flag.
    zfarm::http::HttpServer::Options http;
    // Deadline of each unary JobService/AdminService call.
    absl::Duration rpc_timeout = absl::Seconds(30);
    // How long POST /v1/images/generations waits for its images.
    absl::Duration images_timeout = absl::Minutes(10);
    // Where the dashboard keeps its thumbnails (created if missing); empty =
    // in memory only.
    std::string thumbnail_dir;
  };

  static absl::StatusOr<std::unique_ptr<RestGateway>> Start(const Options& options,
                                                            std::shared_ptr<grpc::Channel> channel);
  ~RestGateway();  // Stops serving.
  RestGateway(const RestGateway&) = delete;
  RestGateway& operator=(const RestGateway&) = delete;

  int port() const { return port_; }
  // The HTTP server's connection and request counters.
  zfarm::http::HttpServer::Stats stats() const;
  // Every route served, {method, pattern} (for the OpenAPI document's test).
  const std::vector<std::pair<std::string, std::string>>& routes() const { return routes_; }
  // Thumbnails made since start (each result's is made once, then cached).
  int64_t thumbnails_made() const;

  struct Impl;  // implementation detail (handlers, server and its thread)

 private:
  RestGateway() = default;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
  std::vector<std::pair<std::string, std::string>> routes_;
};

}  // namespace zfarm::scheduler::http

#endif  // ZFARM_SCHEDULER_HTTP_REST_GATEWAY_H_
