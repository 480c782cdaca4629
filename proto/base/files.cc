#include "proto/base/files.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>  // renameat2 (glibc >= 2.28, _GNU_SOURCE)
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace zfarm::base {
namespace {

std::atomic<bool> force_link_rename{false};

absl::Status ErrnoStatus(int err, absl::string_view what, absl::string_view path) {
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case EEXIST:
      return absl::AlreadyExistsError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    case ELOOP:
      return absl::FailedPreconditionError(msg);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

std::string DirOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

absl::StatusOr<int> CreateExclusive(const std::string& path, mode_t mode) {
  constexpr int kFlags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
  int fd = ::open(path.c_str(), kFlags, mode);
  if (fd < 0 && errno == EEXIST) {
    // A leftover or a planted link: remove the name (never what it points to), retry once.
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus(errno, "cannot remove the existing", path);
    }
    fd = ::open(path.c_str(), kFlags, mode);
  }
  if (fd < 0) return ErrnoStatus(errno, "cannot create", path);
  return fd;
}

absl::Status WriteAll(int fd, absl::string_view data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "cannot write", path);
    if (n == 0) return ErrnoStatus(EIO, "cannot write", path);
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status WriteNewFileSynced(const std::string& path, absl::string_view data) {
  absl::StatusOr<int> fd = CreateExclusive(path);
  if (!fd.ok()) return fd.status();
  absl::Status s = WriteAll(*fd, data, path);
  if (s.ok() && ::fsync(*fd) != 0) s = ErrnoStatus(errno, "cannot fsync", path);
  if (::close(*fd) != 0 && s.ok()) s = ErrnoStatus(errno, "cannot close", path);
  if (!s.ok()) ::unlink(path.c_str());
  return s;
}

absl::Status SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "cannot open the folder", dir);
  absl::Status s;
  if (::fsync(fd) != 0) s = ErrnoStatus(errno, "cannot fsync the folder", dir);
  ::close(fd);
  return s;
}

std::string TempNameFor(const std::string& path) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return absl::StrFormat("%s.tmp.%d.%016x", path, ::getpid(), rng());
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view data) {
  const std::string tmp = TempNameFor(path);
  if (absl::Status s = WriteNewFileSynced(tmp, data); !s.ok()) return s;
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status s = ErrnoStatus(errno, absl::StrCat("cannot rename ", tmp, " to"), path);
    ::unlink(tmp.c_str());
    return s;
  }
  return SyncDir(DirOf(path));
}

absl::Status RenameNoReplace(const std::string& from, const std::string& to) {
  if (!force_link_rename.load()) {
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) {
      return absl::OkStatus();
    }
    const int err = errno;
    if (err != EINVAL && err != ENOSYS && err != EOPNOTSUPP) {
      if (err == EEXIST) return absl::AlreadyExistsError(absl::StrCat(to, " already exists"));
      return ErrnoStatus(err, absl::StrCat("cannot rename ", from, " to"), to);
    }
  }
  // No RENAME_NOREPLACE here: link() also refuses an existing name, atomically.
  if (::link(from.c_str(), to.c_str()) != 0) {
    if (errno == EEXIST) return absl::AlreadyExistsError(absl::StrCat(to, " already exists"));
    return ErrnoStatus(errno, absl::StrCat("cannot link ", from, " to"), to);
  }
  if (::unlink(from.c_str()) != 0) return ErrnoStatus(errno, "cannot remove", from);
  return absl::OkStatus();
}

void TEST_ForceLinkRename(bool force) { force_link_rename.store(force); }

absl::Status CopyFileAtomically(const std::string& from, const std::string& to) {
  int fd = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "cannot open", from);
  std::string data;
  std::string buf(1 << 16, '\0');
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status s = ErrnoStatus(errno, "cannot read", from);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    data.append(buf.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  return WriteFileAtomically(to, data);
}

std::string LowerHex(const unsigned char* bytes, size_t n) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kHex[bytes[i] >> 4]);
    out.push_back(kHex[bytes[i] & 15]);
  }
  return out;
}

std::string Sha256Hex(absl::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
  return LowerHex(md, n);
}

absl::StatusOr<FileDigest> DigestFile(const std::string& path, Links links) {
  const int flags = O_RDONLY | O_CLOEXEC | (links == Links::kRefuse ? O_NOFOLLOW : 0);
  int fd = ::open(path.c_str(), flags);
  if (fd < 0) return ErrnoStatus(errno, "cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::FailedPreconditionError(absl::StrCat(path, " is not a regular file"));
  }
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  FileDigest out;
  std::string buf(1 << 20, '\0');
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status s = ErrnoStatus(errno, "cannot read", path);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
    out.size_bytes += n;
  }
  ::close(fd);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  out.sha256 = LowerHex(md, len);
  return out;
}

absl::StatusOr<std::string> Sha256OfFile(const std::string& path) {
  absl::StatusOr<FileDigest> d = DigestFile(path, Links::kFollow);
  if (!d.ok()) return d.status();
  return std::move(d->sha256);
}

}  // namespace zfarm::base
