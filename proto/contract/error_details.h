#ifndef ZFARM_PROTO_CONTRACT_ERROR_DETAILS_H_
#define ZFARM_PROTO_CONTRACT_ERROR_DETAILS_H_

// File: error_details.h
// Typed details of a failed call, carried as absl::Status payloads inside a
// process and as the "zfarm-error-details-bin" trailer (zfarm.v1.ErrorDetails,
// see proto/zfarm/v1/error_details.proto) on the wire. Code that decides reads
// these, never the message text:
//
//   return RetryLater(absl::StrCat("queue is full (--max-queued-jobs=", n, ")"), delay);
//   ...
//   if (std::optional<absl::Duration> d = RetryDelay(status)) Wait(*d);
//
// The header names no generated type: the scheduler's core and the clients use it
// without the contract's headers. rpc_status.h moves the details across gRPC.
// Thread-compatible (pure functions).

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace zfarm::contract {

// RESOURCE_EXHAUSTED "<what>; retry after <N> ms" carrying `delay` (rounded
// down to ms) as its retry delay.
absl::Status RetryLater(absl::string_view what, absl::Duration delay);

// `status` with `delay` attached as its retry delay (rounded down to ms).
absl::Status WithRetryDelay(absl::Status status, absl::Duration delay);

// The retry delay `status` carries, if any.
std::optional<absl::Duration> RetryDelay(const absl::Status& status);

// A request id already used for `job_id` with a different spec.
struct RequestIdConflict {
  std::string request_id;
  std::string job_id;
};

// INVALID_ARGUMENT "<field>request_id: "<id>" was already used for job <job>
// with a different spec", carrying the conflict. `field` prefixes the field name
// ("" or e.g. "jobs[3].").
absl::Status RequestIdConflictError(absl::string_view field, const RequestIdConflict& conflict);

// The request-id conflict `status` carries, if any.
std::optional<RequestIdConflict> FindRequestIdConflict(const absl::Status& status);

// `to` (any code and message) with every detail `from` carries copied over:
// for callers that reword a status.
absl::Status CopyErrorDetails(const absl::Status& from, absl::Status to);

// The wire form: the binary trailing metadata key and its value (a serialized
// zfarm.v1.ErrorDetails; "" when `status` carries no detail).
inline constexpr char kErrorDetailsTrailer[] = "zfarm-error-details-bin";
std::string SerializeErrorDetails(const absl::Status& status);

// `status` with the details of a received trailer value attached (unchanged for
// an OK status or a value that does not parse).
absl::Status WithSerializedErrorDetails(absl::Status status, absl::string_view serialized);

}  // namespace zfarm::contract

#endif  // ZFARM_PROTO_CONTRACT_ERROR_DETAILS_H_
