#ifndef ZFARM_WORKER_RUNTIME_LORA_CATALOG_H_
#define ZFARM_WORKER_RUNTIME_LORA_CATALOG_H_

// The LoRAs a worker can load: the files NAME.safetensors directly in its --lora-dir,
// NAME following the output-name rules (proto/base/plain_name.h) and valid UTF-8 (other files
// are skipped with a warning), each with the sha256 of its contents. Torch-free.
//
//   ZFARM_ASSIGN_OR_RETURN(auto catalog, LoraCatalog::Open("/srv/loras"));
//   catalog->Refresh();                      // rescan; true when the set changed
//   ZFARM_ASSIGN_OR_RETURN(LoraRequest r, catalog->Resolve("ink", 0.8f));
//
// A rescan hashes only files that are new or whose size, modification time or inode
// changed. Thread-safe.

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "worker/pipeline/request.h"

namespace zfarm::worker {

class LoraCatalog {
 public:
  struct Item {
    std::string name, sha256;
  };

  // INVALID_ARGUMENT when `dir` is not a readable directory. Scans it once.
  static absl::StatusOr<std::unique_ptr<LoraCatalog>> Open(const std::string& dir);

  // Rescans the directory; true when names or contents changed since the last Refresh()
  // (changes seen by Resolve's rescans included), so each change is reported once.
  bool Refresh() ABSL_LOCKS_EXCLUDED(mu_);
  // The catalogue as of the last scan, sorted by name.
  std::vector<Item> List() ABSL_LOCKS_EXCLUDED(mu_);
  // The file and sha256 of `name` (rescanning once when it is unknown); INVALID_ARGUMENT
  // naming the LoRA and the directory when there is no such file.
  absl::StatusOr<LoraRequest> Resolve(const std::string& name, float scale) ABSL_LOCKS_EXCLUDED(mu_);
  const std::string& dir() const { return dir_; }

 private:
  struct File {
    std::string path, sha256;
    int64_t size = 0, mtime_ns = 0;
    uint64_t inode = 0;
  };
  explicit LoraCatalog(std::string dir) : dir_(std::move(dir)) {}
  bool ScanLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string dir_;
  absl::Mutex mu_;
  std::map<std::string, File> files_ ABSL_GUARDED_BY(mu_);
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // +1 per scan that changed the set
  int64_t reported_ ABSL_GUARDED_BY(mu_) = -1;   // generation_ at the last Refresh()
  std::set<std::string> warned_ ABSL_GUARDED_BY(mu_);  // logged once, not at every rescan
};

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_RUNTIME_LORA_CATALOG_H_
