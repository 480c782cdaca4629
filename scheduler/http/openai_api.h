#ifndef ZFARM_SCHEDULER_HTTP_OPENAI_API_H_
#define ZFARM_SCHEDULER_HTTP_OPENAI_API_H_

// File: openai_api.h
// The OpenAI images API on the REST gateway's port, so any OpenAI SDK can
// render on the farm unchanged:
//
//   POST /v1/images/generations   {"prompt", "n" (1..10, one batch), "size" ("WxH"
//                                 or "auto"), "response_format" ("b64_json" |
//                                 "url"), "output_format" ("png" | "jpeg" |
//                                 "webp"), "output_compression" (1..100, jpeg and
//                                 webp), "model", "user", "quality" (accepted,
//                                 ignored) and the extensions "seed" (job i gets
//                                 seed + i), "steps", "negative_prompt",
//                                 "guidance"} -> {"created", "data": [{"b64_json"
//                                 | "url", "seed", "job_id"}], "output_format",
//                                 "size"}
//   GET  /v1/models               -> {"object": "list", "data": [{"id", "object":
//                                 "model", "created", "owned_by"}]}: the models
//                                 the farm's connected workers hold
//
// A generation is one SubmitJobs call over the gateway's in-process channel
// (validation, bearer-token auth and quotas are gRPC's); the Idempotency-Key
// header becomes the request ids "<key>/<i>" (i = 0..n-1), so a retry with the
// same key and body returns the same images and queues nothing new. The
// answer waits until every job is final, at most Options::images_timeout: then
// 504 (the jobs go on; a retry with the same key waits for them again). A
// "url" is the job's result route, <scheme>://<Host>/v1/jobs/<id>/image.
//
// Errors are OpenAI's: {"error": {"message", "type", "param", "code"}} with
// the HTTP status of the gRPC code (rest_common.h); `param` names the request
// field ("n", "size", "output_format", "output_compression", ...) and the
// message its limit. Unknown fields are refused (param = the field,
// code "unknown_parameter"), like the native routes.
//
// Thread-safe.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/http/message.h"
#include "proto/http/router.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::scheduler::http {

// A parsed POST /v1/images/generations body.
struct ImagesRequest {
  zfarm::v1::SubmitJobsRequest batch;  // n jobs, request ids from the key
  bool want_url = false;               // response_format "url"
  std::string output_format = "png";
  std::string size;  // as asked ("auto" or "WxH")
};

// Parses and checks `body` (the JSON object). `idempotency_key` may be null.
// INVALID_ARGUMENT "<param>: <what is wrong and the limit>".
absl::StatusOr<ImagesRequest> ParseImagesRequest(const std::string& body,
                                                 const std::string* idempotency_key);

// An OpenAI error answer for a failed call: the param is the field the
// message starts with ("size: ...", or a gRPC field such as
// "jobs[0].spec.width_px: ..." mapped back to "size").
zfarm::http::Response OpenAiError(int http_status, const std::string& message,
                                  const std::string& type, const std::string& code);
zfarm::http::Response OpenAiErrorFromGrpc(grpc::StatusCode code, const std::string& message);

struct OpenAiApiOptions {
  absl::Duration images_timeout = absl::Minutes(10);  // how long a generation may wait
  absl::Duration rpc_timeout = absl::Seconds(30);     // each unary call
  size_t max_image_bytes = 64 << 20;                  // a result read for b64_json
};

// Adds the routes above to `router`. The stubs must outlive the server.
void AddOpenAiRoutes(zfarm::http::Router* router, zfarm::v1::JobService::Stub* jobs,
                     zfarm::v1::AdminService::Stub* admin, const OpenAiApiOptions& options);

}  // namespace zfarm::scheduler::http

#endif  // ZFARM_SCHEDULER_HTTP_OPENAI_API_H_
