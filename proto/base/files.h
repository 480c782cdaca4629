#ifndef ZFARM_PROTO_BASE_FILES_H_
#define ZFARM_PROTO_BASE_FILES_H_

// Files written safely in folders other users or processes can also write to (the
// shared output root, a state dir, a cache): every temporary file is created with
// O_CREAT | O_EXCL | O_NOFOLLOW, so a symlink or file planted at its name is never
// followed, truncated or written through; all-or-nothing writes (temporary file +
// fsync + rename + directory fsync); a rename that never replaces an existing file;
// and SHA-256 digests in lower-case hex. The one implementation of each, used by
// zfarm-scheduler, zfarm-worker and the zfarm CLI.

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace zfarm::base {

// Creates `path` for writing with O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC and
// returns the descriptor. Whatever already occupies the name (a temporary file
// left by a crash, a planted symlink) is unlinked first: unlink() removes the link
// itself, never its target; if the name is taken again before the create, the
// create fails (ALREADY_EXISTS) rather than follow it. Errors name the path.
absl::StatusOr<int> CreateExclusive(const std::string& path, mode_t mode = 0644);

// Writes all of `data` to `fd` (retrying short writes and EINTR); errors name `path`.
absl::Status WriteAll(int fd, absl::string_view data, const std::string& path);

// CreateExclusive(path), writes `data`, fsyncs and closes it; on any error the
// file is removed. The name is final: use it for temporary files whose name
// matters (a worker's "<job>.<attempt>.tmp").
absl::Status WriteNewFileSynced(const std::string& path, absl::string_view data);

// fsyncs the directory `dir`, making a create or rename in it durable.
absl::Status SyncDir(const std::string& dir);

// A fresh temporary name beside `path`: "<path>.tmp.<pid>.<random hex>".
std::string TempNameFor(const std::string& path);

// Replaces `path` with `data` all or nothing: WriteNewFileSynced(TempNameFor(path)),
// rename() over `path`, SyncDir(its folder). A reader sees the old or the new file.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view data);

// Renames `from` to `to` only if `to` does not exist, atomically even against a
// concurrent creator: renameat2(RENAME_NOREPLACE), or, where the filesystem lacks
// it (EINVAL, ENOSYS, EOPNOTSUPP), link(from, to) + unlink(from). ALREADY_EXISTS
// naming `to` when it exists (`from` is then left in place); other errors name both.
absl::Status RenameNoReplace(const std::string& from, const std::string& to);

// Tests only: makes RenameNoReplace() take the link() + unlink() path.
void TEST_ForceLinkRename(bool force);

// Copies the file `from` to `to` all or nothing (WriteFileAtomically); for files that fit
// in memory (a rendered image). NOT_FOUND naming `from` when it cannot be opened.
absl::Status CopyFileAtomically(const std::string& from, const std::string& to);

// Lower-case hex of `n` bytes.
std::string LowerHex(const unsigned char* bytes, size_t n);

// Lower-case hex SHA-256 of `data`.
std::string Sha256Hex(absl::string_view data);

struct FileDigest {
  int64_t size_bytes = 0;
  std::string sha256;  // lower-case hex
};
enum class Links { kRefuse, kFollow };
// Size and SHA-256 of the regular file at `path`. With Links::kRefuse (O_NOFOLLOW) a
// symlink is refused: for files in folders others can write to (the output root).
// NOT_FOUND / FAILED_PRECONDITION / INTERNAL naming the path.
absl::StatusOr<FileDigest> DigestFile(const std::string& path, Links links = Links::kRefuse);

// DigestFile(path, Links::kFollow).sha256: a file the caller chose (a LoRA, a picture).
absl::StatusOr<std::string> Sha256OfFile(const std::string& path);

}  // namespace zfarm::base

#endif  // ZFARM_PROTO_BASE_FILES_H_
