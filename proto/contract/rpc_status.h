#ifndef ZFARM_PROTO_CONTRACT_RPC_STATUS_H_
#define ZFARM_PROTO_CONTRACT_RPC_STATUS_H_

// absl::Status <-> grpc::Status. The canonical codes are numbered identically, so
// the mapping is 1:1; messages are kept verbatim. A status's typed details
// (error_details.h) travel as trailing metadata: the server adds them with
// AddErrorTrailers before it finishes a call, the client reads them back with
// FromGrpcCall.

#include "absl/status/status.h"
#include "grpcpp/client_context.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace zfarm::contract {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// Adds the details `status` carries to the call's trailing metadata:
// "zfarm-error-details-bin" (zfarm.v1.ErrorDetails) and, with a retry delay, the
// plain "retry-after-ms" trailer (for tools that only show text metadata).
void AddErrorTrailers(grpc::ServerContextBase* ctx, const absl::Status& status);

// FromGrpcStatus plus the details of the call's "zfarm-error-details-bin" trailer.
absl::Status FromGrpcCall(const grpc::Status& status, const grpc::ClientContext& ctx);

}  // namespace zfarm::contract

#endif  // ZFARM_PROTO_CONTRACT_RPC_STATUS_H_
