#ifndef ZFARM_PROTO_SECURITY_PATHS_H_
#define ZFARM_PROTO_SECURITY_PATHS_H_

// File: paths.h
// Output-root confinement: a job's output path is relative to the output root
// and must stay inside it, whatever symlinks the root contains.
//
//   ZFARM_ASSIGN_OR_RETURN(std::string abs, ResolveBeneath(root, "2026-11-28/x.png"));
//
// Thread-safe (reads the file system only).

#include <string>

#include "absl/status/statusor.h"

namespace zfarm::security {

// The canonical absolute path of `root`/`relative` when it exists and, after
// resolving every symlink, lies strictly inside the canonical `root`.
// INVALID_ARGUMENT for an absolute `relative` or one with a ".." component,
// NOT_FOUND when it does not exist, PERMISSION_DENIED when it resolves outside
// the root (e.g. a symlink pointing out of it).
absl::StatusOr<std::string> ResolveBeneath(const std::string& root, const std::string& relative);

}  // namespace zfarm::security

#endif  // ZFARM_PROTO_SECURITY_PATHS_H_
