#ifndef ZFARM_WORKER_IO_FILE_UTIL_H_
#define ZFARM_WORKER_IO_FILE_UTIL_H_

// Small file helpers for worker/io: bounded whole-file reads and a streaming all-or-nothing
// writer (temporary file + fsync + rename). Whole-buffer atomic writes, hex and SHA-256 are
// proto/base/files.h's (base::WriteFileAtomically, base::Sha256Hex, base::Sha256OfFile).

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace zfarm::worker {

// Debian's Abseil has its own string_view type: convert for absl::StrCat and friends.
inline absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Reads a whole file of at most `max_bytes`; NOT_FOUND / INVALID_ARGUMENT name the path.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t max_bytes);

// A file written under a temporary name and renamed into place by Commit(); the temporary
// file (base::TempNameFor, created exclusively: a planted symlink is never followed) is
// removed if the object is destroyed without Commit().
class AtomicFile {
 public:
  static absl::StatusOr<std::unique_ptr<AtomicFile>> Create(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  absl::Status Write(std::string_view bytes);
  absl::Status Truncate(uint64_t size);  // flushes, then ftruncate()
  absl::Status Commit();                 // flush, fsync, close, rename, fsync the folder

 private:
  AtomicFile() = default;
  absl::Status Flush();
  std::string path_, tmp_;
  int fd_ = -1;
  std::string buf_;
};

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_FILE_UTIL_H_
