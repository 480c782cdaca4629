#ifndef ZFARM_CLIENT_EXIT_CODES_H_
#define ZFARM_CLIENT_EXIT_CODES_H_

// File: exit_codes.h
// The documented exit codes of the `zfarm` CLI, and the mapping from an RPC
// status to one of them.

#include "absl/status/status.h"

namespace zfarm::client {

enum ExitCode : int {
  kExitOk = 0,           // every job succeeded / the command did what it said
  kExitJobFailed = 1,    // at least one job FAILED (or another server error)
  kExitUsage = 2,        // bad flags, missing arguments, bad prompts file
  kExitUnavailable = 3,  // the scheduler could not be reached
  kExitTimeout = 4,      // --timeout or a job deadline passed
  kExitCancelled = 5,    // a job was cancelled (and none failed)
};

// UNAVAILABLE -> 3, DEADLINE_EXCEEDED -> 4, CANCELLED -> 5,
// INVALID_ARGUMENT / NOT_FOUND-free usage errors -> 2, anything else -> 1.
inline int ExitCodeForStatus(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kUnavailable:
      return kExitUnavailable;
    case absl::StatusCode::kDeadlineExceeded:
      return kExitTimeout;
    case absl::StatusCode::kCancelled:
      return kExitCancelled;
    case absl::StatusCode::kInvalidArgument:
      return kExitUsage;
    default:
      return kExitJobFailed;
  }
}

}  // namespace zfarm::client

#endif  // ZFARM_CLIENT_EXIT_CODES_H_
