#ifndef ZFARM_WORKER_TEXT_TOKENIZER_H_
#define ZFARM_WORKER_TEXT_TOKENIZER_H_

// File: tokenizer.h
//
// The Qwen3 byte-level BPE tokenizer of Z-Image, read
// from a Hugging Face `tokenizer.json`, plus the Z-Image chat template.
//
// Encoding follows Hugging Face `tokenizers` step by step:
//   1. split on added tokens first (tokenizer.json "added_tokens": exact match,
//      leftmost-longest; lstrip / rstrip / single_word honoured; tokens with
//      normalized=true are matched on the normalized text);
//   2. NFC normalization (ICU Normalizer2) of the remaining text;
//   3. the pre-tokenizer regex (Split, behaviour Isolated), implemented as a
//      scanner over ICU character properties (\p{L}, \p{N}, White_Space);
//   4. GPT-2 byte-to-unicode byte-level mapping, BPE merges by rank, vocab lookup.
//
// Example:
//   ZFARM_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok,
//                          Tokenizer::FromFile("model/tokenizer/tokenizer.json"));
//   ZFARM_ASSIGN_OR_RETURN(PromptTokens p, tok->EncodePrompt("a cat"));
//   if (p.truncated) LOG(WARNING) << "event=prompt_truncated tokens=" << p.untruncated_size;
//
// Thread safety: a Tokenizer is immutable after FromFile() except for an
// internal, mutex-protected BPE cache; every const method may be called from
// any number of threads at once without external synchronization.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace zfarm::worker::text {

// The ids of one prompt wrapped in the chat template.
struct PromptTokens {
  std::vector<int32_t> ids;  // at most max_tokens ids
  bool truncated = false;    // true if ids were cut to max_tokens
  int untruncated_size = 0;  // number of ids before truncation
};

// Z-Image's chat template: what the pipeline's
// apply_chat_template(add_generation_prompt=True, enable_thinking=True) produces.
inline constexpr std::string_view kChatTemplatePrefix = "<|im_start|>user\n";
inline constexpr std::string_view kChatTemplateSuffix = "<|im_end|>\n<|im_start|>assistant\n";
// The pipeline's max_length (the template tokens count against it).
inline constexpr int kMaxPromptTokens = 512;

class Tokenizer {
 public:
  // Reads and validates a tokenizer.json. Errors (naming the file and the
  // key): unreadable file, invalid JSON, a normalizer / pre_tokenizer / model /
  // decoder type other than the ones this implementation knows (NFC; Sequence
  // of Split(Isolated, the Qwen2 regex) + ByteLevel(use_regex=false); BPE
  // without dropout, unk or byte fallback), a merge whose parts or result are
  // not in the vocab, duplicate or conflicting ids.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& tokenizer_json);
  // Same, from the JSON text; `name` is used in error messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json,
                                                             const std::string& name);

  virtual ~Tokenizer() = default;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `utf8` (no BOS/EOS are added; added/special token strings in
  // the text become their ids). INVALID_ARGUMENT, naming the byte offset, if
  // `utf8` is not well-formed UTF-8 (overlong forms, surrogates and code
  // points above U+10FFFF are rejected).
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view utf8) const = 0;

  // Wraps `prompt` in the chat template, encodes the whole string (as the
  // pipeline does: template first, then tokenization with truncation), and
  // keeps the first `max_tokens` ids. A long prompt therefore loses its end
  // and the template suffix, exactly like diffusers' ZImagePipeline.
  // INVALID_ARGUMENT for invalid UTF-8 or max_tokens < 1.
  absl::StatusOr<PromptTokens> EncodePrompt(std::string_view prompt,
                                            int max_tokens = kMaxPromptTokens) const;

  // The text of `ids`: the concatenated bytes of their tokens (added tokens
  // give their content). Ids outside the vocabulary are skipped. The result
  // is the NFC form of the encoded text; it can be invalid UTF-8 if `ids`
  // cut a multi-byte character.
  virtual std::string Decode(absl::Span<const int32_t> ids) const = 0;

  // Number of ids (base vocabulary plus added tokens); the largest id + 1.
  virtual int vocab_size() const = 0;
  // The id of a vocabulary entry or added token given as its text (for a
  // base-vocabulary entry: its raw bytes), or -1.
  virtual int32_t TokenId(std::string_view token) const = 0;

 protected:
  Tokenizer() = default;
};

}  // namespace zfarm::worker::text

#endif  // ZFARM_WORKER_TEXT_TOKENIZER_H_
