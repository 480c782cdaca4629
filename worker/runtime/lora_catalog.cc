#include "worker/runtime/lora_catalog.h"

#include <dirent.h>
#include <sys/stat.h>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "proto/base/files.h"
#include "proto/base/plain_name.h"
#include "worker/io/file_util.h"
#include "worker/text/utf8.h"

namespace zfarm::worker {

namespace {

using ::zfarm::base::PlainNameProblem;

constexpr char kSuffix[] = ".safetensors";
}  // namespace

absl::StatusOr<std::unique_ptr<LoraCatalog>> LoraCatalog::Open(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("--lora-dir ", dir, ": not a directory"));
  }
  std::unique_ptr<LoraCatalog> c(new LoraCatalog(dir));
  c->Refresh();
  return c;
}

bool LoraCatalog::ScanLocked() {
  std::map<std::string, File> found;
  DIR* d = ::opendir(dir_.c_str());
  if (d == nullptr) {
    if (warned_.insert(dir_).second) LOG(WARNING) << "event=lora_dir_unreadable dir=" << dir_;
  } else {
    warned_.erase(dir_);
    while (dirent* e = ::readdir(d)) {
      const std::string fname = e->d_name;
      if (!absl::EndsWith(fname, kSuffix) || fname[0] == '.') continue;
      const std::string name = fname.substr(0, fname.size() - (sizeof(kSuffix) - 1));
      std::string why = PlainNameProblem(name);
      if (why.empty() && text::Utf8ErrorOffset(name) >= 0) why = "is not valid UTF-8";
      if (!why.empty() || name.empty()) {
        if (warned_.insert(fname).second) {
          LOG(WARNING) << "event=lora_name_skipped file=" << fname << " why=\"" << why << "\"";
        }
        continue;
      }
      File f;
      f.path = absl::StrCat(dir_, "/", fname);
      struct stat st {};
      if (::stat(f.path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      f.size = st.st_size;
      f.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
      f.inode = st.st_ino;
      auto old = files_.find(name);
      if (old != files_.end() && old->second.size == f.size && old->second.mtime_ns == f.mtime_ns &&
          old->second.inode == f.inode) {
        f.sha256 = old->second.sha256;
      } else {
        absl::StatusOr<std::string> sha = base::Sha256OfFile(f.path);
        if (!sha.ok()) {
          if (warned_.insert(f.path).second) {
            LOG(WARNING) << "event=lora_unreadable file=" << f.path << " error=\""
                         << sha.status().message() << "\"";
          }
          continue;
        }
        f.sha256 = *sha;
      }
      found.emplace(name, std::move(f));
    }
    ::closedir(d);
  }
  bool changed = found.size() != files_.size();
  for (const auto& [name, f] : found) {
    auto it = files_.find(name);
    changed = changed || it == files_.end() || it->second.sha256 != f.sha256;
  }
  files_ = std::move(found);
  if (changed) ++generation_;
  return changed;
}

bool LoraCatalog::Refresh() {
  absl::MutexLock lock(&mu_);
  ScanLocked();
  const bool changed = generation_ != reported_;
  reported_ = generation_;
  return changed;
}

std::vector<LoraCatalog::Item> LoraCatalog::List() {
  absl::MutexLock lock(&mu_);
  std::vector<Item> out;
  for (const auto& [name, f] : files_) out.push_back({name, f.sha256});
  return out;
}

absl::StatusOr<LoraRequest> LoraCatalog::Resolve(const std::string& name, float scale) {
  absl::MutexLock lock(&mu_);
  auto it = files_.find(name);
  if (it == files_.end()) {
    ScanLocked();
    it = files_.find(name);
  }
  if (it == files_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("LoRA '", name, "': no ", name, kSuffix,
                                                   " in --lora-dir ", dir_));
  }
  LoraRequest r;
  r.name = name;
  r.path = it->second.path;
  r.sha256 = it->second.sha256;
  r.scale = scale;
  return r;
}

}  // namespace zfarm::worker
