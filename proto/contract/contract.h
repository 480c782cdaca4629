#ifndef ZFARM_PROTO_CONTRACT_CONTRACT_H_
#define ZFARM_PROTO_CONTRACT_CONTRACT_H_

// File: contract.h
// Small facts about the contract's types, each defined once for the scheduler,
// the clients and the tests: which job states are final, and absl::Time <->
// google.protobuf.Timestamp (microsecond precision, as the journal keeps them).
// Thread-compatible (pure functions).

#include "absl/time/time.h"
#include "google/protobuf/timestamp.pb.h"
#include "zfarm/v1/job.pb.h"

namespace zfarm::contract {

// SUCCEEDED, FAILED or CANCELLED: the job will not change again.
bool IsFinal(v1::JobState state);

google::protobuf::Timestamp ToProto(absl::Time t);
absl::Time FromProto(const google::protobuf::Timestamp& t);

}  // namespace zfarm::contract

#endif  // ZFARM_PROTO_CONTRACT_CONTRACT_H_
