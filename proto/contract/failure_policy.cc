#include "proto/contract/failure_policy.h"

namespace zfarm::contract {

bool CountsAgainstDevice(v1::FailureReason reason) {
  switch (reason) {
    case v1::FAILURE_REASON_INVALID_REQUEST:
    case v1::FAILURE_REASON_OUTPUT_ERROR:
    case v1::FAILURE_REASON_CANCELLED_BY_CLIENT:
    case v1::FAILURE_REASON_DEADLINE_EXCEEDED:
      return false;
    default:
      return true;
  }
}

bool IsRetryable(v1::FailureReason reason, bool reported) {
  switch (reason) {
    case v1::FAILURE_REASON_INVALID_REQUEST:
    case v1::FAILURE_REASON_MODEL_ERROR:
      return false;
    case v1::FAILURE_REASON_OUT_OF_MEMORY:
      return true;
    default:
      return reported;
  }
}

}  // namespace zfarm::contract
