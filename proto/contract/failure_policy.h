#ifndef ZFARM_PROTO_CONTRACT_FAILURE_POLICY_H_
#define ZFARM_PROTO_CONTRACT_FAILURE_POLICY_H_

// File: failure_policy.h
// How the farm treats a failed render, one rule each for both sides of the wire:
// whether the job may run again, and whether the failure counts against the
// worker's device. The worker applies them to what it reports, the scheduler to
// what it is told (so an older or misbehaving worker cannot bend them).
// Thread-compatible (pure functions).

#include "zfarm/v1/job.pb.h"

namespace zfarm::contract {

// Failures in a row that count against a device (CountsAgainstDevice) after which
// its worker is UNHEALTHY: the scheduler marks it so, the worker reports itself so.
inline constexpr int kUnhealthyAfterFailures = 3;

// False for failures that say nothing about the device: a bad request, an output
// disk that is full or refuses the file, a cancel or a deadline.
bool CountsAgainstDevice(v1::FailureReason reason);

// Whether a job that failed with `reason` may run again: never after a bad request
// or a model error (it would fail the same everywhere), always after running out
// of memory (a worker with more may fit it), else as the worker said (`reported`).
bool IsRetryable(v1::FailureReason reason, bool reported);

}  // namespace zfarm::contract

#endif  // ZFARM_PROTO_CONTRACT_FAILURE_POLICY_H_
