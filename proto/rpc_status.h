#ifndef ZFARM_PROTO_RPC_STATUS_H_
#define ZFARM_PROTO_RPC_STATUS_H_

// absl::Status <-> grpc::Status. The canonical codes are numbered identically, so
// the mapping is 1:1; messages are kept verbatim.

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace zfarm {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace zfarm

#endif  // ZFARM_PROTO_RPC_STATUS_H_
