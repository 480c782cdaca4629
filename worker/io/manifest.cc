#include "worker/io/manifest.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "proto/base/files.h"
#include "proto/base/status_macros.h"
#include "proto/security/paths.h"
#include "worker/io/file_util.h"
#include "worker/io/safetensors.h"

namespace zfarm::worker {
namespace {

struct EvpDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

bool IsMd5(absl::string_view s) {
  if (s.size() != 32) return false;
  for (char c : s) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace

const std::vector<ManifestEntry>& OfficialManifest() {
  static const auto* m = new std::vector<ManifestEntry>{
      {"model_index.json", "5e3226ed72a9a4a080f2a4ca78b98ddc", 467},
      {"scheduler/scheduler_config.json", "ca682fcc6c5a94cf726b7187e64b9411", -1},
      {"text_encoder/config.json", "1e97eb35d9d0b6aa60c58a8df8d7d99a", -1},
      {"text_encoder/model-00001-of-00003.safetensors", "30b85686b9a9b002e012494fadc027cb", -1},
      {"text_encoder/model-00002-of-00003.safetensors", "e6a24ea164404a01ad2800dbae4e1a13", -1},
      {"text_encoder/model-00003-of-00003.safetensors", "09e190ed15ff14795b6277e023cfcb2d", -1},
      {"text_encoder/model.safetensors.index.json", "589f5395156900f49d617aee8a8d8708", -1},
      {"tokenizer/tokenizer.json", "6423133b9cc1a2077b57822c30c211aa", -1},
      {"tokenizer/tokenizer_config.json", "b06e103ac555ec4b51266078b518c0f0", -1},
      {"transformer/config.json", "baed87136fe5f848e24b072f99856cc3", -1},
      {"transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
       "54889d0dd179b4fa2fd7bd0e487d856e", -1},
      {"transformer/diffusion_pytorch_model-00002-of-00003.safetensors",
       "fe81e804658d345323512c63224b0604", -1},
      {"transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
       "4e074e09129f98ad840414951f122feb", -1},
      {"transformer/diffusion_pytorch_model.safetensors.index.json",
       "76d788eb0d42c59cc8f8ec007db639aa", -1},
      {"vae/config.json", "ba9e2980c8630b4abccc643bc9f4a542", -1},
      {"vae/diffusion_pytorch_model.safetensors", "6f83de55cb720c7fae051b14528577bf", -1},
  };
  return *m;
}

absl::StatusOr<std::vector<ManifestEntry>> ReadMd5Manifest(const std::string& path) {
  ZFARM_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, 16 << 20));
  return ParseMd5Manifest(text, path);
}

absl::StatusOr<std::vector<ManifestEntry>> ParseMd5Manifest(std::string_view text_in,
                                                            std::string_view source_in) {
  const absl::string_view text = Sv(text_in), source = Sv(source_in);
  std::vector<ManifestEntry> out;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripTrailingAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    size_t sp = line.find(' ');
    if (sp == absl::string_view::npos || !IsMd5(line.substr(0, sp)) || sp + 2 > line.size() ||
        (line[sp + 1] != ' ' && line[sp + 1] != '*')) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": line ", line_no, ": expected '<32 hex md5>  <path>'"));
    }
    ManifestEntry e;
    e.md5 = absl::AsciiStrToLower(line.substr(0, sp));
    // `md5sum ./x` writes "./x": the same file as "x". Otherwise the path is confined to
    // the model folder by the rule every root-relative path follows.
    absl::string_view rel = line.substr(sp + 2);
    absl::ConsumePrefix(&rel, "./");
    ZFARM_RETURN_IF_ERROR(zfarm::security::CheckRelativePath(
        absl::StrCat(source, ": line ", line_no, ": relative path"), rel));
    e.path = std::string(rel);
    out.push_back(std::move(e));
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": no entries"));
  return out;
}

std::string FormatMd5Manifest(const std::vector<ManifestEntry>& entries) {
  std::string s;
  for (const ManifestEntry& e : entries) absl::StrAppend(&s, e.md5, "  ", e.path, "\n");
  return s;
}

std::string Md5Hex(std::string_view bytes) {
  std::unique_ptr<EVP_MD_CTX, EvpDeleter> ctx(EVP_MD_CTX_new());
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  EVP_DigestInit_ex(ctx.get(), EVP_md5(), nullptr);
  EVP_DigestUpdate(ctx.get(), bytes.data(), bytes.size());
  EVP_DigestFinal_ex(ctx.get(), d, &n);
  return base::LowerHex(d, n);
}

absl::StatusOr<std::string> Md5File(const std::string& path,
                                    const std::function<void(uint64_t)>& progress) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string msg = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::PermissionDeniedError(msg);
  }
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  std::unique_ptr<EVP_MD_CTX, EvpDeleter> ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_md5(), nullptr) != 1) {
    ::close(fd);
    return absl::InternalError("OpenSSL EVP md5 unavailable");
  }
  std::vector<char> buf(8 << 20);
  uint64_t done = 0;
  for (;;) {
    ssize_t r = ::read(fd, buf.data(), buf.size());
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      int err = errno;
      ::close(fd);
      return absl::DataLossError(
          absl::StrCat(path, ": read error at byte ", done, ": ", std::strerror(err)));
    }
    if (r == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(r));
    done += static_cast<uint64_t>(r);
    if (progress) progress(done);
  }
  ::close(fd);
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  EVP_DigestFinal_ex(ctx.get(), d, &n);
  return base::LowerHex(d, n);
}

std::string_view FileCheckName(FileCheck c) {
  switch (c) {
    case FileCheck::kOk:
      return "ok";
    case FileCheck::kMissing:
      return "missing";
    case FileCheck::kWrongSize:
      return "wrong_size";
    case FileCheck::kWrongMd5:
      return "wrong_md5";
    case FileCheck::kBadHeader:
      return "bad_header";
    case FileCheck::kUnreadable:
      return "unreadable";
  }
  return "?";
}

bool VerifyReport::ok() const {
  for (const FileReport& f : files) {
    if (f.check != FileCheck::kOk) return false;
  }
  return !files.empty();
}

// One straight story: the folder, every manifest file's size (for the progress total),
// then per file presence, size, safetensors header and md5 (unless fast), in order.
absl::StatusOr<VerifyReport> VerifyModelFolder(const std::string& dir,
                                               const std::vector<ManifestEntry>& manifest,
                                               const VerifyOptions& options) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a directory"));
  }
  const auto start = std::chrono::steady_clock::now();
  VerifyReport report;
  uint64_t total = 0;
  std::vector<int64_t> sizes(manifest.size(), -1);
  for (size_t i = 0; i < manifest.size(); ++i) {
    struct stat fs;
    if (::stat((dir + "/" + manifest[i].path).c_str(), &fs) == 0 && S_ISREG(fs.st_mode)) {
      sizes[i] = fs.st_size;
      total += static_cast<uint64_t>(fs.st_size);
    }
  }
  uint64_t done_before = 0;
  auto last = std::chrono::steady_clock::time_point{};
  for (size_t i = 0; i < manifest.size(); ++i) {
    const ManifestEntry& e = manifest[i];
    const std::string path = dir + "/" + e.path;
    FileReport r;
    r.path = e.path;
    r.size = sizes[i];
    if (sizes[i] < 0) {
      r.check = FileCheck::kMissing;
      r.detail = "file is missing (or not a regular file)";
      report.files.push_back(std::move(r));
      continue;
    }
    if (e.size >= 0 && e.size != sizes[i]) {
      r.check = FileCheck::kWrongSize;
      r.detail = absl::StrCat("size ", sizes[i], " bytes, expected ", e.size);
      report.files.push_back(std::move(r));
      done_before += static_cast<uint64_t>(sizes[i]);
      continue;
    }
    if (absl::EndsWith(e.path, ".safetensors")) {
      auto f = SafetensorsFile::Open(path);
      if (!f.ok()) {
        r.check = FileCheck::kBadHeader;
        r.detail = std::string(f.status().message());
        report.files.push_back(std::move(r));
        done_before += static_cast<uint64_t>(sizes[i]);
        continue;
      }
    }
    if (!options.fast) {
      auto md5 = Md5File(path, [&](uint64_t done) {
        if (!options.progress) return;
        auto now = std::chrono::steady_clock::now();
        if (now - last < std::chrono::milliseconds(250)) return;
        last = now;
        options.progress(done_before + done, total, e.path);
      });
      report.bytes_hashed += static_cast<uint64_t>(sizes[i]);
      if (!md5.ok()) {
        r.check = FileCheck::kUnreadable;
        r.detail = std::string(md5.status().message());
      } else if (*md5 != e.md5) {
        r.check = FileCheck::kWrongMd5;
        r.detail = absl::StrCat("md5 ", *md5, ", expected ", e.md5);
      }
    }
    done_before += static_cast<uint64_t>(sizes[i]);
    report.files.push_back(std::move(r));
  }
  if (options.progress && !options.fast) options.progress(done_before, total, "");
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace zfarm::worker
