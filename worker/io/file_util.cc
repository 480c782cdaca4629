#include "worker/io/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "proto/base/files.h"
#include "proto/base/status_macros.h"

namespace zfarm::worker {
namespace {

absl::Status ErrnoError(const std::string& what, const std::string& path, int err) {
  std::string msg = absl::StrCat(path, ": ", what, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

}  // namespace

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path, errno);
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", st.st_size, " bytes exceeds the limit of ", max_bytes));
  }
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < out.size()) {
    ssize_t r = ::read(fd, out.data() + done, out.size() - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      int err = errno;
      ::close(fd);
      return r == 0 ? absl::DataLossError(absl::StrCat(path, ": file shrank while reading"))
                    : ErrnoError("read failed", path, err);
    }
    done += static_cast<size_t>(r);
  }
  ::close(fd);
  return out;
}

absl::StatusOr<std::unique_ptr<AtomicFile>> AtomicFile::Create(const std::string& path) {
  std::unique_ptr<AtomicFile> f(new AtomicFile());
  f->path_ = path;
  f->tmp_ = base::TempNameFor(path);
  ZFARM_ASSIGN_OR_RETURN(f->fd_, base::CreateExclusive(f->tmp_));
  return f;
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

absl::Status AtomicFile::Write(std::string_view bytes) {
  buf_.append(bytes);
  if (buf_.size() >= (4 << 20)) return Flush();
  return absl::OkStatus();
}

absl::Status AtomicFile::Flush() {
  size_t done = 0;
  while (done < buf_.size()) {
    ssize_t r = ::write(fd_, buf_.data() + done, buf_.size() - done);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoError("write failed", tmp_, errno);
    done += static_cast<size_t>(r);
  }
  buf_.clear();
  return absl::OkStatus();
}

absl::Status AtomicFile::Truncate(uint64_t size) {
  ZFARM_RETURN_IF_ERROR(Flush());
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) return ErrnoError("ftruncate", tmp_, errno);
  return absl::OkStatus();
}

absl::Status AtomicFile::Commit() {
  ZFARM_RETURN_IF_ERROR(Flush());
  if (::fsync(fd_) != 0) return ErrnoError("fsync", tmp_, errno);
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    ::unlink(tmp_.c_str());
    return ErrnoError("close", tmp_, errno);
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp_.c_str());
    return ErrnoError("rename", path_, err);
  }
  return base::SyncDir(std::filesystem::path(path_).parent_path().empty()
                           ? std::string(".")
                           : std::filesystem::path(path_).parent_path().string());
}

}  // namespace zfarm::worker
