#include "worker/io/weights_cache.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "proto/base/status_macros.h"
#include "worker/io/file_util.h"
#include "worker/io/safetensors.h"

namespace zfarm::worker {
namespace {

namespace fs = std::filesystem;
constexpr char kFile[] = "model.safetensors";

// "zfarm-bf16-cache-v1": part of the key and the file's metadata.
std::string Format(std::string_view kind) { return absl::StrCat("zfarm-", Sv(kind), "-cache-v1"); }

// sha256 over the format and, per file (sorted): name, size, mtime (ns), and for
// JSON files their text, for .safetensors files their header.
absl::StatusOr<std::string> CacheKey(const std::string& component_dir, const std::string& format) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(component_dir, ec)) {
    if (e.is_regular_file()) names.push_back(e.path().filename().string());
  }
  if (ec) return absl::NotFoundError(absl::StrCat(component_dir, ": ", ec.message()));
  std::sort(names.begin(), names.end());
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  EVP_DigestInit_ex(md, EVP_sha256(), nullptr);
  auto add = [&](std::string_view s) {
    const uint64_t n = s.size();
    EVP_DigestUpdate(md, &n, sizeof(n));
    EVP_DigestUpdate(md, s.data(), s.size());
  };
  add(format);
  absl::Status status;
  for (const std::string& name : names) {
    const std::string path = component_dir + "/" + name;
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      status = absl::NotFoundError(absl::StrCat(path, ": cannot stat"));
      break;
    }
    add(name);
    add(absl::StrCat(st.st_size, ":", st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec));
    if (absl::EndsWith(name, ".json")) {
      auto text = ReadSmallFile(path, 64 << 20);
      if (!text.ok()) {
        status = text.status();
        break;
      }
      add(*text);
    } else if (absl::EndsWith(name, ".safetensors")) {
      auto f = SafetensorsFile::Open(path);
      if (!f.ok()) {
        status = f.status();
        break;
      }
      for (const TensorInfo& t : (*f)->tensors()) {
        add(absl::StrCat(t.name, "|", Sv(DTypeName(t.dtype)), "|", t.begin, "|", t.end));
      }
    }
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(md, digest, &len);
  EVP_MD_CTX_free(md);
  if (!status.ok()) return status;
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), std::min(len, 8u)));
}

}  // namespace

absl::StatusOr<std::string> WeightsCacheDir(const std::string& cache_root,
                                            const std::string& component_dir,
                                            std::string_view kind) {
  ZFARM_ASSIGN_OR_RETURN(std::string key, CacheKey(component_dir, Format(kind)));
  const std::string component = fs::path(component_dir).lexically_normal().filename().string();
  return absl::StrCat(cache_root, "/", component.empty() ? "weights" : component, "-", Sv(kind),
                      "-", key);
}

bool WeightsCachePresent(const std::string& cache_dir) {
  std::error_code ec;
  return fs::exists(cache_dir + "/" + kFile, ec);  // renamed into place only when complete
}

absl::StatusOr<std::string> Bf16CacheDir(const std::string& cache_root,
                                         const std::string& component_dir) {
  return WeightsCacheDir(cache_root, component_dir, "bf16");
}

bool Bf16CachePresent(const std::string& cache_dir) { return WeightsCachePresent(cache_dir); }

absl::StatusOr<bool> Bf16CacheUseful(const std::string& component_dir) {
  ZFARM_ASSIGN_OR_RETURN(auto ws, WeightSet::Open(component_dir));
  for (const std::string& name : ws->Names()) {
    if (ws->Find(name)->dtype != DType::kBF16) return true;
  }
  return false;
}

absl::StatusOr<std::string> WriteWeightsCache(const std::string& cache_root,
                                              const std::string& component_dir,
                                              std::string_view kind,
                                              const WeightsCacheContent& content) {
  ZFARM_ASSIGN_OR_RETURN(std::string dir, WeightsCacheDir(cache_root, component_dir, kind));
  if (WeightsCachePresent(dir)) return dir;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("--weights-cache: cannot create ", dir, ": ", ec.message()));
  }
  // One writer per copy (e.g. one worker unit per GPU starting together): the
  // others wait here and then find it written.
  const std::string lock_path = dir + "/.lock";
  const int lock = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (lock < 0 || ::flock(lock, LOCK_EX) != 0) {
    if (lock >= 0) ::close(lock);
    return absl::FailedPreconditionError(absl::StrCat("--weights-cache: cannot lock ", lock_path));
  }
  struct Unlock {
    int fd;
    ~Unlock() { ::close(fd); }  // releases the flock
  } unlock{lock};
  if (WeightsCachePresent(dir)) return dir;
  ZFARM_ASSIGN_OR_RETURN(auto ws, WeightSet::Open(component_dir));
  ZFARM_ASSIGN_OR_RETURN(std::vector<TensorSpec> specs, content.plan(*ws));
  ZFARM_ASSIGN_OR_RETURN(
      auto writer,
      SafetensorsStreamWriter::Create(
          dir + "/" + kFile, specs,
          {{"format", "pt"}, {"zfarm_cache", Format(kind)}, {"source", component_dir}}));
  for (const TensorSpec& spec : specs) {
    ZFARM_RETURN_IF_ERROR(content.write(*ws, spec, *writer));
  }
  ZFARM_RETURN_IF_ERROR(writer->Finish());
  return dir;
}

absl::StatusOr<std::string> WriteBf16Cache(const std::string& cache_root,
                                           const std::string& component_dir) {
  WeightsCacheContent bf16;
  bf16.plan = [](const WeightSet& ws) -> absl::StatusOr<std::vector<TensorSpec>> {
    std::vector<TensorSpec> specs;
    for (const std::string& name : ws.Names()) {
      specs.push_back({name, DType::kBF16, ws.Find(name)->shape});
    }
    return specs;
  };
  std::vector<uint16_t> buf;
  bf16.write = [&buf](const WeightSet& ws, const TensorSpec& spec,
                      SafetensorsStreamWriter& out) -> absl::Status {
    ZFARM_ASSIGN_OR_RETURN(TensorView v, ws.Get(spec.name));
    buf.resize(static_cast<size_t>(v.info->numel()));
    ConvertToBF16(v, buf.data());
    return out.Append(std::string_view(reinterpret_cast<const char*>(buf.data()),
                                       buf.size() * sizeof(uint16_t)));
  };
  return WriteWeightsCache(cache_root, component_dir, "bf16", bf16);
}

}  // namespace zfarm::worker
