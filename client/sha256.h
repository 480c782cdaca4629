#ifndef ZFARM_CLIENT_SHA256_H_
#define ZFARM_CLIENT_SHA256_H_

// File: sha256.h
// SHA-256 helpers (OpenSSL) and atomic file writes used by the CLI.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace zfarm::client {

// Lower-case hex SHA-256 of `data`.
std::string Sha256Hex(absl::string_view data);

// Lower-case hex SHA-256 of the file at `path`; NOT_FOUND / INTERNAL naming
// the path on error.
absl::StatusOr<std::string> Sha256File(const std::string& path);

// Writes `data` to `path` through "<path>.tmp.<pid>" + fsync + rename, so a
// reader never sees a half-written file.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view data);

// Copies `from` to `to` atomically (temp + rename).
absl::Status CopyFileAtomically(const std::string& from, const std::string& to);

}  // namespace zfarm::client

#endif  // ZFARM_CLIENT_SHA256_H_
