#include "worker/io/model_fingerprint.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "proto/base/files.h"
#include "worker/io/file_util.h"

namespace zfarm::worker {

absl::StatusOr<std::string> ModelFingerprint(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model folder ", dir, ": not a directory"));
  }
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->is_regular_file(ec)) files.push_back(it->path());
  }
  if (ec) return absl::InternalError(absl::StrCat("listing ", dir, ": ", ec.message()));
  std::sort(files.begin(), files.end());
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  for (const fs::path& p : files) {
    const std::string rel = fs::relative(p, dir, ec).string();
    const uintmax_t size = fs::file_size(p, ec);
    const std::string line = absl::StrCat(rel, "\t", size, "\n");
    EVP_DigestUpdate(ctx.get(), line.data(), line.size());
    std::ifstream in(p, std::ios::binary);
    std::string bytes;
    if (absl::EndsWith(rel, ".json") && size <= (64u << 20)) {
      bytes.assign(std::istreambuf_iterator<char>(in), {});
    } else if (absl::EndsWith(rel, ".safetensors") && size >= 8) {
      uint64_t n = 0;
      char len[8];
      if (in.read(len, 8)) std::memcpy(&n, len, 8);  // little-endian hosts only
      n = std::min<uint64_t>(n, std::min<uint64_t>(size - 8, 100u << 20));
      bytes.resize(n);
      in.read(bytes.data(), static_cast<std::streamsize>(n));
    }
    EVP_DigestUpdate(ctx.get(), bytes.data(), bytes.size());
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &n);
  return "sha256:" + base::LowerHex(md, 8);
}

}  // namespace zfarm::worker
