#ifndef ZFARM_PROTO_BASE_STATUS_MACROS_H_
#define ZFARM_PROTO_BASE_STATUS_MACROS_H_

// Propagation macros for absl::Status / absl::StatusOr (Abseil 20220623 has none).
//
//   absl::Status Load() {
//     ZFARM_RETURN_IF_ERROR(CheckHeader());
//     ZFARM_ASSIGN_OR_RETURN(std::string json, ReadJson(path));
//     ...
//   }

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ZFARM_STATUS_CONCAT_INNER_(a, b) a##b
#define ZFARM_STATUS_CONCAT_(a, b) ZFARM_STATUS_CONCAT_INNER_(a, b)

// Returns the status of `expr` from the enclosing function if it is not OK.
#define ZFARM_RETURN_IF_ERROR(expr)                      \
  do {                                                   \
    const ::absl::Status zfarm_status_ = (expr);         \
    if (!zfarm_status_.ok()) return zfarm_status_;       \
  } while (false)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, else
// moves the value into `lhs` (a declaration or an lvalue).
#define ZFARM_ASSIGN_OR_RETURN(lhs, rexpr) \
  ZFARM_ASSIGN_OR_RETURN_IMPL_(ZFARM_STATUS_CONCAT_(zfarm_statusor_, __LINE__), lhs, rexpr)

#define ZFARM_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // ZFARM_PROTO_BASE_STATUS_MACROS_H_
