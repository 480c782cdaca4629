#ifndef ZFARM_TESTS_WORKER_IO_IO_TEST_UTIL_H_
#define ZFARM_TESTS_WORKER_IO_IO_TEST_UTIL_H_

// Shared helpers for the worker/io tests: temp folders, running the binaries, hashes.

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace zfarm::worker::testing {

inline std::string TokenizerJson() {
  if (const char* env = std::getenv("ZFARM_TOKENIZER_JSON")) return env;
  return ZFARM_TOKENIZER_JSON_DEFAULT;
}

// A fresh empty folder under the gtest temp dir.
inline std::string FreshDir(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path p =
      fs::path(::testing::TempDir()) / ("zfarm_io_" + std::to_string(getpid()) + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

using ::zfarm::testing::CommandResult;
using ::zfarm::testing::RunCommand;

// Generates a tiny model folder at `dir` (replacing it); returns the generator's exit code.
inline int MakeTinyModel(const std::string& dir, const std::string& extra = "") {
  return RunCommand(std::string(ZFARM_MAKE_TINY_MODEL) + " --force --out '" + dir +
                    "' --tokenizer '" + TokenizerJson() + "' " + extra + " 2>&1")
      .exit_code;
}

inline std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

inline void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}


}  // namespace zfarm::worker::testing

#endif  // ZFARM_TESTS_WORKER_IO_IO_TEST_UTIL_H_
