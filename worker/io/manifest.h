#ifndef ZFARM_WORKER_IO_MANIFEST_H_
#define ZFARM_WORKER_IO_MANIFEST_H_

// Integrity check of a model folder against an md5 manifest (the official Z-Image-Turbo
// manifest is embedded; other folders bring an md5sum-format file).
//
//   ZFARM_ASSIGN_OR_RETURN(VerifyReport r, VerifyModelFolder(dir, OfficialManifest(), {}));
//   if (!r.ok()) ...  // r.files names each missing / wrong file

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace zfarm::worker {

struct ManifestEntry {
  std::string path;   // relative to the model folder, '/'-separated
  std::string md5;    // 32 lowercase hex digits
  int64_t size = -1;  // bytes, -1 when unknown
};

// The 16-entry official manifest of Tongyi-MAI/Z-Image-Turbo (md5 of every file as published).
const std::vector<ManifestEntry>& OfficialManifest();

// Parses md5sum output ("<md5>  <path>" per line; '*' binary marker accepted). Optional
// extension: "<md5>  <path>  # size=<bytes>" is not used; sizes stay unknown.
absl::StatusOr<std::vector<ManifestEntry>> ParseMd5Manifest(std::string_view text,
                                                            std::string_view source);
std::string FormatMd5Manifest(const std::vector<ManifestEntry>& entries);
// Reads (at most 16 MiB) and parses an md5sum-format manifest file; errors name the path.
absl::StatusOr<std::vector<ManifestEntry>> ReadMd5Manifest(const std::string& path);

// Streams a file through MD5 (OpenSSL EVP). `progress` (optional) is called with the
// number of bytes hashed so far in this file.
absl::StatusOr<std::string> Md5File(const std::string& path,
                                    const std::function<void(uint64_t)>& progress = nullptr);
std::string Md5Hex(std::string_view bytes);

enum class FileCheck { kOk, kMissing, kWrongSize, kWrongMd5, kBadHeader, kUnreadable };
std::string_view FileCheckName(FileCheck c);  // "ok", "missing", "wrong_size", ...

struct FileReport {
  std::string path;
  FileCheck check = FileCheck::kOk;
  std::string detail;  // human readable, e.g. "md5 ab.. expected cd.."
  int64_t size = -1;
};

struct VerifyReport {
  std::vector<FileReport> files;  // manifest order
  uint64_t bytes_hashed = 0;
  double seconds = 0;
  bool ok() const;
};

struct VerifyOptions {
  bool fast = false;  // presence + sizes where known + safetensors headers, no md5
  // Called with (bytes done, bytes total, current file) during hashing, at most ~4x/s.
  std::function<void(uint64_t, uint64_t, const std::string&)> progress;
};

// Checks every entry; a problem with one file never stops the others. The status is
// non-OK only when the folder itself cannot be examined.
absl::StatusOr<VerifyReport> VerifyModelFolder(const std::string& dir,
                                               const std::vector<ManifestEntry>& manifest,
                                               const VerifyOptions& options);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_MANIFEST_H_
