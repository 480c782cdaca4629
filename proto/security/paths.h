#ifndef ZFARM_PROTO_SECURITY_PATHS_H_
#define ZFARM_PROTO_SECURITY_PATHS_H_

// File: paths.h
// Root confinement, one rule for the scheduler (output and input roots), the
// worker (the lease's output path) and model folders (the paths of an md5
// manifest): a path is relative to its root and must stay inside it, whatever
// symlinks the root contains.
//
//   ZFARM_RETURN_IF_ERROR(CheckRelativePath("lease.output_path", rel));   // no I/O
//   ZFARM_ASSIGN_OR_RETURN(std::string abs, ResolveBeneath(root, "2026-11-28/x.png"));
//
// Thread-safe (reads the file system only). No gRPC: zfarm_paths links absl only.

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace zfarm::security {

// The lexical half, without touching the file system: `relative` is not empty,
// not absolute, and has no empty, "." or ".." component. INVALID_ARGUMENT
// "<what> '<relative>': ..." otherwise.
absl::Status CheckRelativePath(absl::string_view what, absl::string_view relative);

// The canonical absolute path of `root`/`relative` when `relative` passes
// CheckRelativePath("output path", ...), exists and, after resolving every
// symlink, lies strictly inside the canonical `root`. INVALID_ARGUMENT for a path
// CheckRelativePath refuses, NOT_FOUND when it does not exist, PERMISSION_DENIED
// when it resolves outside the root (e.g. a symlink pointing out of it).
absl::StatusOr<std::string> ResolveBeneath(const std::string& root, const std::string& relative);

}  // namespace zfarm::security

#endif  // ZFARM_PROTO_SECURITY_PATHS_H_
