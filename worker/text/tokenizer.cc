#include "worker/text/tokenizer.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <queue>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "proto/base/status_macros.h"
#include "unicode/bytestream.h"
#include "unicode/normalizer2.h"
#include "unicode/uchar.h"
#include "unicode/utf8.h"
#include "worker/text/utf8.h"

namespace zfarm::worker::text {
namespace {

using json = nlohmann::json;

// Debian's Abseil is built without std::string_view aliasing.
absl::string_view A(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// The pre-tokenizer pattern of Qwen2/Qwen3 (tokenizer.json's Split regex); the scanner in
// PreTokenize() implements exactly this expression, so any other is refused.
constexpr std::string_view kQwenPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Character classes used by the scanner (bit set).
enum : uint8_t {
  kLetter = 1,      // \p{L}
  kNumber = 2,      // \p{N}
  kSpace = 4,       // \s (Unicode White_Space, as Oniguruma in HF tokenizers)
  kCrLf = 8,        // \r or \n
  kBlank = 16,      // U+0020
  kApostrophe = 32  // '
};

uint8_t ClassifyWithIcu(UChar32 c) {
  uint8_t cls = 0;
  const uint32_t gc_mask = U_GET_GC_MASK(c);
  if (gc_mask & U_GC_L_MASK) cls |= kLetter;
  if (gc_mask & U_GC_N_MASK) cls |= kNumber;
  if (u_isUWhiteSpace(c)) cls |= kSpace;
  if (c == '\r' || c == '\n') cls |= kCrLf;
  if (c == ' ') cls |= kBlank;
  if (c == '\'') cls |= kApostrophe;
  return cls;
}

// ASCII answers of ClassifyWithIcu, computed once (a cache, not a table of our own).
const std::array<uint8_t, 128>& AsciiClasses() {
  static const std::array<uint8_t, 128> table = [] {
    std::array<uint8_t, 128> t{};
    for (int c = 0; c < 128; ++c) t[c] = ClassifyWithIcu(c);
    return t;
  }();
  return table;
}

// GPT-2 bytes_to_unicode(): printable Latin-1 bytes map to themselves, the
// other 68 bytes to U+0100.. in byte order.
std::array<UChar32, 256> BytesToUnicode() {
  std::array<UChar32, 256> map{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  int n = 0;
  for (int b = 0; b < 256; ++b) map[b] = direct[b] ? b : 256 + n++;
  return map;
}

bool IsWordChar(UChar32 c) { return c == '_' || u_isalnum(c); }

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// A piece of input: either an added token (id >= 0) or text to encode.
struct Segment {
  std::string_view text;
  int32_t id = -1;
};

// Finds added tokens in text: leftmost match first, longest at a position.
class AddedTokenSplitter {
 public:
  void Add(const AddedToken* token) {
    by_first_byte_[static_cast<uint8_t>(token->content[0])].push_back(token);
    first_bytes_[static_cast<uint8_t>(token->content[0])] = true;
    for (auto& [b, list] : by_first_byte_) {
      std::sort(list.begin(), list.end(), [](const AddedToken* a, const AddedToken* b) {
        return a->content.size() > b->content.size();
      });
    }
    empty_ = false;
  }
  bool empty() const { return empty_; }

  // Appends the segments of `text` to `out`.
  void Split(std::string_view text, std::vector<Segment>* out) const {
    if (empty_) {
      if (!text.empty()) out->push_back({text, -1});
      return;
    }
    size_t text_start = 0;  // start of the pending text segment
    size_t pos = 0;
    while (pos < text.size()) {
      if (!first_bytes_[static_cast<uint8_t>(text[pos])]) {
        ++pos;
        continue;
      }
      const AddedToken* hit = nullptr;
      auto it = by_first_byte_.find(static_cast<uint8_t>(text[pos]));
      for (const AddedToken* t : it->second) {
        if (text.compare(pos, t->content.size(), t->content) == 0 &&
            WordBoundaryOk(*t, text, pos, pos + t->content.size())) {
          hit = t;
          break;
        }
      }
      if (hit == nullptr) {
        ++pos;
        continue;
      }
      size_t start = pos;
      size_t stop = pos + hit->content.size();
      if (hit->lstrip) {
        while (start > text_start) {
          int32_t i = static_cast<int32_t>(start);
          UChar32 c;
          U8_PREV(text.data(), static_cast<int32_t>(text_start), i, c);
          if (c < 0 || !u_isUWhiteSpace(c)) break;
          start = static_cast<size_t>(i);
        }
      }
      if (hit->rstrip) {
        while (stop < text.size()) {
          int32_t i = static_cast<int32_t>(stop);
          UChar32 c;
          U8_NEXT(text.data(), i, static_cast<int32_t>(text.size()), c);
          if (c < 0 || !u_isUWhiteSpace(c)) break;
          stop = static_cast<size_t>(i);
        }
      }
      if (start > text_start) out->push_back({text.substr(text_start, start - text_start), -1});
      out->push_back({text.substr(start, stop - start), hit->id});
      pos = text_start = stop;
    }
    if (text_start < text.size()) out->push_back({text.substr(text_start), -1});
  }

 private:
  static bool WordBoundaryOk(const AddedToken& t, std::string_view text, size_t start,
                             size_t stop) {
    if (!t.single_word) return true;
    if (start > 0) {
      int32_t i = static_cast<int32_t>(start);
      UChar32 c;
      U8_PREV(text.data(), 0, i, c);
      if (c >= 0 && IsWordChar(c)) return false;
    }
    if (stop < text.size()) {
      int32_t i = static_cast<int32_t>(stop);
      UChar32 c;
      U8_NEXT(text.data(), i, static_cast<int32_t>(text.size()), c);
      if (c >= 0 && IsWordChar(c)) return false;
    }
    return true;
  }

  absl::flat_hash_map<uint8_t, std::vector<const AddedToken*>> by_first_byte_;
  std::array<bool, 256> first_bytes_{};
  bool empty_ = true;
};

// A bounded, sharded, thread-safe cache: piece bytes -> ids.
class BpeCache {
 public:
  static constexpr size_t kMaxPieceBytes = 256;

  bool Lookup(std::string_view piece, std::vector<int32_t>* out) const {
    Shard& s = shards_[ShardOf(piece)];
    absl::MutexLock lock(&s.mu);
    auto it = s.map.find(A(piece));
    if (it == s.map.end()) return false;
    out->insert(out->end(), it->second.begin(), it->second.end());
    return true;
  }
  void Insert(std::string_view piece, absl::Span<const int32_t> ids) const {
    Shard& s = shards_[ShardOf(piece)];
    absl::MutexLock lock(&s.mu);
    if (s.map.size() >= kEntriesPerShard) s.map.clear();  // crude, bounded
    s.map.try_emplace(A(piece), ids.begin(), ids.end());
  }

 private:
  static constexpr size_t kShards = 32;
  static constexpr size_t kEntriesPerShard = 4096;
  struct Shard {
    absl::Mutex mu;
    absl::flat_hash_map<std::string, std::vector<int32_t>> map ABSL_GUARDED_BY(mu);
  };
  static size_t ShardOf(std::string_view piece) {
    return absl::Hash<absl::string_view>()(A(piece)) % kShards;
  }
  mutable std::array<Shard, kShards> shards_;
};

struct MergeInfo {
  int32_t rank;
  int32_t id;
};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// tokenizer.json as parsed for loading: the DOM of everything except the two
// big tables (model.vocab, model.merges), which are streamed into vectors —
// a full DOM of the 11 MB file costs more than the whole load budget.
struct RawMerge {
  std::string a, b;     // the two parts; for a legacy "a b" string, a holds it
  bool legacy = false;  // b is empty
};
struct ParsedJson {
  json root;
  bool has_vocab = false;
  bool has_merges = false;
  std::vector<std::pair<std::string, int32_t>> vocab;
  std::vector<RawMerge> merges;
};

class LoaderSax final : public nlohmann::json_sax<json> {
 public:
  explicit LoaderSax(ParsedJson* out) : out_(out) {}
  const std::string& error() const { return error_; }

  bool null() override { return Scalar(nullptr, "null"); }
  bool boolean(bool v) override { return Scalar(v, "a boolean"); }
  bool number_integer(number_integer_t v) override {
    if (mode_ == kVocab) return VocabId(v);
    return Scalar(v, "a number");
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (mode_ == kVocab) return VocabId(v > (1u << 30) ? -1 : static_cast<int64_t>(v));
    return Scalar(v, "a number");
  }
  bool number_float(number_float_t v, const string_t&) override { return Scalar(v, "a number"); }
  bool binary(binary_t&) override { return Fail("binary data is not JSON"); }
  bool string(string_t& v) override {
    if (mode_ == kMerges) {
      out_->merges.push_back({std::move(v), std::string(), true});
      return true;
    }
    if (mode_ == kMergePair) {
      if (pair_size_ == 0) pair_.a = std::move(v);
      if (pair_size_ == 1) pair_.b = std::move(v);
      ++pair_size_;
      return true;
    }
    return Scalar(std::move(v), "a string");
  }
  bool key(string_t& k) override {
    key_ = std::move(k);
    return true;
  }
  bool start_object(std::size_t) override {
    if (mode_ != kNone) return BadInTable("an object");
    if (AtModel() && key_ == "vocab") {
      mode_ = kVocab;
      out_->has_vocab = true;
      out_->vocab.reserve(160000);
      return true;
    }
    Push(json::object());
    return true;
  }
  bool end_object() override {
    if (mode_ == kVocab) {
      mode_ = kNone;
      return true;
    }
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    if (mode_ == kMerges) {
      mode_ = kMergePair;
      pair_ = RawMerge();
      pair_size_ = 0;
      return true;
    }
    if (mode_ != kNone) return BadInTable("an array");
    if (AtModel() && key_ == "merges") {
      mode_ = kMerges;
      out_->has_merges = true;
      out_->merges.reserve(160000);
      return true;
    }
    Push(json::array());
    return true;
  }
  bool end_array() override {
    if (mode_ == kMergePair) {
      if (pair_size_ != 2) return BadInTable("an array of other than 2 strings");
      out_->merges.push_back(std::move(pair_));
      mode_ = kMerges;
      return true;
    }
    if (mode_ == kMerges) {
      mode_ = kNone;
      return true;
    }
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& e) override {
    error_ = absl::StrCat("invalid JSON at byte ", position, ": ", e.what());
    return false;
  }

 private:
  enum Mode { kNone, kVocab, kMerges, kMergePair };

  bool AtModel() const {
    return stack_.size() == 2 && keys_[1] == "model" && stack_[1]->is_object();
  }
  bool Fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
    return false;
  }
  bool BadInTable(std::string_view what) {
    if (mode_ == kVocab) {
      return Fail(absl::StrCat("model.vocab['", key_,
                               "'] must be an integer id in [0, 16777216], not ", A(what)));
    }
    return Fail(absl::StrCat("model.merges[", out_->merges.size(),
                             "] must be a [\"a\", \"b\"] pair or an \"a b\" string, not ",
                             A(what)));
  }
  bool VocabId(int64_t v) {
    if (v < 0 || v > (1 << 24)) return BadInTable("out of range");
    out_->vocab.emplace_back(std::move(key_), static_cast<int32_t>(v));
    return true;
  }
  template <typename T>
  bool Scalar(T&& v, std::string_view what) {
    if (mode_ != kNone) return BadInTable(what);
    Insert(json(std::forward<T>(v)));
    return true;
  }
  json* Insert(json v) {
    if (stack_.empty()) {
      out_->root = std::move(v);
      return &out_->root;
    }
    json* parent = stack_.back();
    if (parent->is_array()) {
      parent->push_back(std::move(v));
      return &parent->back();
    }
    json& slot = (*parent)[key_];
    slot = std::move(v);
    return &slot;
  }
  void Push(json container) {
    const bool in_object = !stack_.empty() && stack_.back()->is_object();
    stack_.push_back(Insert(std::move(container)));
    keys_.push_back(in_object ? key_ : std::string());
  }

  ParsedJson* out_;
  std::vector<json*> stack_;
  std::vector<std::string> keys_;  // key of each open container in its parent
  std::string key_;
  Mode mode_ = kNone;
  RawMerge pair_;
  int pair_size_ = 0;
  std::string error_;
};

class BpeTokenizer final : public Tokenizer {
 public:
  absl::Status Load(const ParsedJson& parsed, const std::string& name);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view utf8) const override;
  std::string Decode(absl::Span<const int32_t> ids) const override;
  int vocab_size() const override { return static_cast<int>(id_to_bytes_.size()); }
  int32_t TokenId(std::string_view token) const override {
    auto it = added_by_content_.find(A(token));
    if (it != added_by_content_.end()) return it->second;
    auto v = vocab_.find(A(token));
    return v == vocab_.end() ? -1 : v->second;
  }

 private:
  absl::Status LoadNormalizer(const json& root, const std::string& name);
  absl::Status LoadPreTokenizer(const json& root, const std::string& name);
  absl::Status LoadModel(const ParsedJson& parsed, const std::string& name);
  absl::Status LoadAddedTokens(const json& root, const std::string& name);
  absl::Status CheckDecoderAndPostProcessor(const json& root, const std::string& name);

  // Normalizes `text` into `*out` (or returns a view of text when already normal).
  std::string_view Normalize(std::string_view text, std::string* scratch) const;
  // Encodes one text segment (no added tokens inside), appending to `ids`.
  void EncodeText(std::string_view text, std::vector<int32_t>* ids) const;
  void EncodeNormalized(std::string_view text, std::vector<int32_t>* ids) const;
  void EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const;
  void BpeShort(std::string_view piece, std::vector<int32_t>* ids) const;
  void BpeLong(std::string_view piece, std::vector<int32_t>* ids) const;

  const icu::Normalizer2* nfc_ = nullptr;  // null: no normalizer
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_id_{};
  absl::flat_hash_map<std::string, int32_t> vocab_;  // raw bytes -> id
  absl::flat_hash_map<uint64_t, MergeInfo> merges_;
  std::vector<std::string> id_to_bytes_;
  std::vector<AddedToken> added_;
  absl::flat_hash_map<std::string, int32_t> added_by_content_;
  AddedTokenSplitter raw_splitter_;         // added tokens with normalized=false
  AddedTokenSplitter normalized_splitter_;  // added tokens with normalized=true
  BpeCache cache_;
};

std::string TypeOf(const json& j) {
  if (!j.is_object()) return "";
  auto it = j.find("type");
  if (it == j.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

absl::Status Unsupported(const std::string& name, std::string_view key, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(name, ": ", A(key), ": ", A(what), " is not supported by zfarm's tokenizer"));
}

// Reads j[key] as a bool, accepting a missing key or null as `def`.
absl::StatusOr<bool> OptionalBool(const json& j, const char* key, bool def,
                                  const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".", key, " must be a boolean"));
  }
  return it->get<bool>();
}

absl::Status BpeTokenizer::LoadNormalizer(const json& root, const std::string& name) {
  auto it = root.find("normalizer");
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  const std::string type = TypeOf(*it);
  if (type != "NFC") {
    return Unsupported(name, "normalizer.type", absl::StrCat("'", type, "'"));
  }
  UErrorCode err = U_ZERO_ERROR;
  nfc_ = icu::Normalizer2::getNFCInstance(err);
  if (U_FAILURE(err)) {
    return absl::InternalError(absl::StrCat("ICU NFC normalizer unavailable: ", u_errorName(err)));
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::LoadPreTokenizer(const json& root, const std::string& name) {
  auto it = root.find("pre_tokenizer");
  if (it == root.end() || !it->is_object()) {
    return Unsupported(name, "pre_tokenizer", "a missing pre_tokenizer");
  }
  if (TypeOf(*it) != "Sequence") {
    return Unsupported(name, "pre_tokenizer.type", absl::StrCat("'", TypeOf(*it), "'"));
  }
  auto list = it->find("pretokenizers");
  if (list == it->end() || !list->is_array() || list->size() != 2) {
    return Unsupported(name, "pre_tokenizer.pretokenizers", "anything but [Split, ByteLevel]");
  }
  const json& split = (*list)[0];
  const json& byte_level = (*list)[1];
  if (TypeOf(split) != "Split") {
    return Unsupported(name, "pre_tokenizer.pretokenizers[0].type",
                       absl::StrCat("'", TypeOf(split), "'"));
  }
  const json* pattern = nullptr;
  if (auto p = split.find("pattern"); p != split.end() && p->is_object()) {
    if (auto r = p->find("Regex"); r != p->end() && r->is_string()) pattern = &*r;
  }
  if (pattern == nullptr || pattern->get<std::string>() != kQwenPattern) {
    return Unsupported(name, "pre_tokenizer.pretokenizers[0].pattern.Regex",
                       "a pattern other than the Qwen2 one");
  }
  if (split.value("behavior", "") != "Isolated") {
    return Unsupported(name, "pre_tokenizer.pretokenizers[0].behavior",
                       "a behavior other than 'Isolated'");
  }
  ZFARM_ASSIGN_OR_RETURN(bool invert, OptionalBool(split, "invert", false, "pre_tokenizer"));
  if (invert) return Unsupported(name, "pre_tokenizer.pretokenizers[0].invert", "true");
  if (TypeOf(byte_level) != "ByteLevel") {
    return Unsupported(name, "pre_tokenizer.pretokenizers[1].type",
                       absl::StrCat("'", TypeOf(byte_level), "'"));
  }
  ZFARM_ASSIGN_OR_RETURN(bool prefix,
                         OptionalBool(byte_level, "add_prefix_space", false, "ByteLevel"));
  ZFARM_ASSIGN_OR_RETURN(bool use_regex, OptionalBool(byte_level, "use_regex", true, "ByteLevel"));
  if (prefix) return Unsupported(name, "pre_tokenizer.pretokenizers[1].add_prefix_space", "true");
  if (use_regex) return Unsupported(name, "pre_tokenizer.pretokenizers[1].use_regex", "true");
  return absl::OkStatus();
}

// Long on purpose: tokenizer.json's "model" object (type, options, vocab, merges)
// checked field by field in the file's order, each error naming its JSON path.
absl::Status BpeTokenizer::LoadModel(const ParsedJson& parsed, const std::string& name) {
  const json& root = parsed.root;
  auto mit = root.find("model");
  if (mit == root.end() || !mit->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": missing key 'model'"));
  }
  const json& model = *mit;
  if (TypeOf(model) != "BPE") {
    return Unsupported(name, "model.type", absl::StrCat("'", TypeOf(model), "'"));
  }
  for (const char* key : {"dropout", "unk_token"}) {
    if (auto it = model.find(key); it != model.end() && !it->is_null()) {
      return Unsupported(name, absl::StrCat("model.", key), "a non-null value");
    }
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (auto it = model.find(key); it != model.end() && !it->is_null() &&
                                   !(it->is_string() && it->get<std::string>().empty())) {
      return Unsupported(name, absl::StrCat("model.", key), "a non-empty value");
    }
  }
  ZFARM_ASSIGN_OR_RETURN(bool byte_fallback, OptionalBool(model, "byte_fallback", false, "model"));
  if (byte_fallback) return Unsupported(name, "model.byte_fallback", "true");
  ZFARM_ASSIGN_OR_RETURN(ignore_merges_, OptionalBool(model, "ignore_merges", false, "model"));

  // Byte-level alphabet: code point -> byte.
  const std::array<UChar32, 256> b2u = BytesToUnicode();
  std::array<int16_t, 512> u2b;
  u2b.fill(-1);
  for (int b = 0; b < 256; ++b) u2b[b2u[b]] = static_cast<int16_t>(b);

  if (!parsed.has_vocab) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": model.vocab must be an object"));
  }
  vocab_.reserve(parsed.vocab.size());
  int32_t max_id = -1;
  for (const auto& [key, id] : parsed.vocab) {
    std::string bytes(key.size(), '\0');
    size_t n = 0;
    int32_t i = 0;
    const int32_t len = static_cast<int32_t>(key.size());
    while (i < len) {
      UChar32 c;
      U8_NEXT(key.data(), i, len, c);
      if (c < 0 || c >= 512 || u2b[c] < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, ": model.vocab key '", key, "' has a character outside the byte-level alphabet"));
      }
      bytes[n++] = static_cast<char>(u2b[c]);
    }
    bytes.resize(n);
    if (bytes.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": model.vocab has an empty key"));
    }
    auto [pos, inserted] = vocab_.try_emplace(std::move(bytes), id);
    if (!inserted) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": model.vocab key '", key, "' appears twice"));
    }
    max_id = std::max(max_id, id);
  }
  id_to_bytes_.assign(static_cast<size_t>(max_id + 1), std::string());
  std::vector<bool> seen(id_to_bytes_.size());
  for (const auto& [bytes, id] : vocab_) {
    if (seen[id]) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": model.vocab id ", id, " is used by two keys"));
    }
    seen[id] = true;
    id_to_bytes_[id] = bytes;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(std::string(1, static_cast<char>(b)));
    if (it == vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: model.vocab lacks the byte-level token of byte 0x%02X", name, b));
    }
    byte_id_[b] = it->second;
  }

  if (!parsed.has_merges) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": model.merges must be an array"));
  }
  merges_.reserve(parsed.merges.size());
  auto to_bytes = [&](std::string_view s, std::string* out) {
    out->resize(s.size());
    size_t n = 0;
    int32_t i = 0;
    const int32_t len = static_cast<int32_t>(s.size());
    while (i < len) {
      UChar32 c;
      U8_NEXT(s.data(), i, len, c);
      if (c < 0 || c >= 512 || u2b[c] < 0) return false;
      (*out)[n++] = static_cast<char>(u2b[c]);
    }
    out->resize(n);
    return n > 0;
  };
  std::string left, right, joined;
  int32_t rank = 0;
  for (const RawMerge& m : parsed.merges) {
    std::string_view a = m.a, b = m.b;
    if (m.legacy) {
      const size_t sp = m.a.find(' ');
      if (sp == std::string::npos || m.a.find(' ', sp + 1) != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(name, ": model.merges[", rank, "] '", m.a,
                                                       "' is not two tokens separated by a space"));
      }
      a = std::string_view(m.a).substr(0, sp);
      b = std::string_view(m.a).substr(sp + 1);
    }
    if (!to_bytes(a, &left) || !to_bytes(b, &right)) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": model.merges[", rank, "] has a character outside the byte-level alphabet"));
    }
    auto ia = vocab_.find(left);
    auto ib = vocab_.find(right);
    joined.assign(left).append(right);
    // GPT-2 style files give the result of merge r the id 256 + r; check
    // that slot first and fall back to a lookup (a third of the load time).
    int32_t merged_id = -1;
    if (const size_t guess = 256 + static_cast<size_t>(rank);
        guess < id_to_bytes_.size() && id_to_bytes_[guess] == joined) {
      merged_id = static_cast<int32_t>(guess);
    } else if (auto ic = vocab_.find(joined); ic != vocab_.end()) {
      merged_id = ic->second;
    }
    if (ia == vocab_.end() || ib == vocab_.end() || merged_id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": model.merges[", rank, "] ('", A(a), "', '", A(b),
                       "'): a part or the merged token is not in model.vocab"));
    }
    // The first (lowest-rank) occurrence of a pair wins, as in HF tokenizers.
    merges_.try_emplace(PairKey(ia->second, ib->second), MergeInfo{rank, merged_id});
    ++rank;
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::LoadAddedTokens(const json& root, const std::string& name) {
  auto it = root.find("added_tokens");
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": added_tokens must be an array"));
  }
  added_.reserve(it->size());
  for (size_t i = 0; i < it->size(); ++i) {
    const json& t = (*it)[i];
    const std::string where = absl::StrCat("added_tokens[", i, "]");
    if (!t.is_object() || !t.contains("content") || !t["content"].is_string() ||
        t["content"].get_ref<const std::string&>().empty() || !t.contains("id") ||
        !t["id"].is_number_integer() || t["id"].get<int64_t>() < 0 ||
        t["id"].get<int64_t>() > (1 << 24)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": ", where,
                       " must have a non-empty string 'content' and an integer 'id' in [0, "
                       "16777216]"));
    }
    AddedToken token;
    token.content = t["content"].get<std::string>();
    if (Utf8ErrorOffset(token.content) >= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": ", where, ".content is not valid UTF-8"));
    }
    token.id = t["id"].get<int32_t>();
    ZFARM_ASSIGN_OR_RETURN(token.single_word, OptionalBool(t, "single_word", false, where));
    ZFARM_ASSIGN_OR_RETURN(token.lstrip, OptionalBool(t, "lstrip", false, where));
    ZFARM_ASSIGN_OR_RETURN(token.rstrip, OptionalBool(t, "rstrip", false, where));
    ZFARM_ASSIGN_OR_RETURN(token.normalized, OptionalBool(t, "normalized", false, where));
    ZFARM_ASSIGN_OR_RETURN(token.special, OptionalBool(t, "special", false, where));
    if (static_cast<size_t>(token.id) >= id_to_bytes_.size()) {
      id_to_bytes_.resize(static_cast<size_t>(token.id) + 1);
    }
    // An added token may repeat a vocab entry with the same id (HF allows it).
    auto in_vocab = vocab_.find(token.content);
    if (!id_to_bytes_[token.id].empty() &&
        !(in_vocab != vocab_.end() && in_vocab->second == token.id)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": ", where, " id ", token.id, " is already used by another token"));
    }
    id_to_bytes_[token.id] = token.content;
    if (!added_by_content_.try_emplace(token.content, token.id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": ", where, " content '", token.content, "' appears twice"));
    }
    added_.push_back(std::move(token));
  }
  for (const AddedToken& t : added_) {
    (t.normalized && nfc_ != nullptr ? normalized_splitter_ : raw_splitter_).Add(&t);
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::CheckDecoderAndPostProcessor(const json& root, const std::string& name) {
  for (const char* key : {"decoder", "post_processor"}) {
    auto it = root.find(key);
    if (it == root.end() || it->is_null()) continue;
    // ByteLevel post-processing only adjusts offsets; anything else (e.g.
    // TemplateProcessing) would add ids this implementation does not add.
    if (TypeOf(*it) != "ByteLevel") {
      return Unsupported(name, absl::StrCat(key, ".type"), absl::StrCat("'", TypeOf(*it), "'"));
    }
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::Load(const ParsedJson& parsed, const std::string& name) {
  const json& root = parsed.root;
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": top level must be a JSON object"));
  }
  (void)AsciiClasses();
  ZFARM_RETURN_IF_ERROR(LoadNormalizer(root, name));
  ZFARM_RETURN_IF_ERROR(LoadPreTokenizer(root, name));
  ZFARM_RETURN_IF_ERROR(CheckDecoderAndPostProcessor(root, name));
  ZFARM_RETURN_IF_ERROR(LoadModel(parsed, name));
  ZFARM_RETURN_IF_ERROR(LoadAddedTokens(root, name));
  return absl::OkStatus();
}

std::string_view BpeTokenizer::Normalize(std::string_view text, std::string* scratch) const {
  if (nfc_ == nullptr) return text;
  // Fast path: ASCII text is always NFC.
  bool ascii = true;
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return text;
  UErrorCode err = U_ZERO_ERROR;
  const icu::StringPiece piece(text.data(), static_cast<int32_t>(text.size()));
  if (nfc_->isNormalizedUTF8(piece, err) && U_SUCCESS(err)) return text;
  err = U_ZERO_ERROR;
  scratch->clear();
  icu::StringByteSink<std::string> sink(scratch, static_cast<int32_t>(text.size()));
  nfc_->normalizeUTF8(0, piece, sink, nullptr, err);
  if (U_FAILURE(err)) return text;  // unreachable for valid UTF-8
  return *scratch;
}

void BpeTokenizer::EncodeText(std::string_view text, std::vector<int32_t>* ids) const {
  std::string scratch;
  std::string_view normalized = Normalize(text, &scratch);
  if (normalized_splitter_.empty()) {
    EncodeNormalized(normalized, ids);
    return;
  }
  std::vector<Segment> segments;
  normalized_splitter_.Split(normalized, &segments);
  for (const Segment& s : segments) {
    if (s.id >= 0) {
      ids->push_back(s.id);
    } else {
      EncodeNormalized(s.text, ids);
    }
  }
}

// The pre-tokenizer: splits `text` like kQwenPattern with "Isolated"
// behaviour and encodes each piece. Alternatives are tried in the pattern's
// order at each position (leftmost-first, backtracking semantics).
// Long on purpose: one hand-written scanner for kQwenPattern, its alternatives in the
// pattern's order; splitting them would hide the leftmost-first order that makes it
// equal to the regex.
void BpeTokenizer::EncodeNormalized(std::string_view text, std::vector<int32_t>* ids) const {
  const auto& ascii = AsciiClasses();
  // Decode once: byte offsets and classes of every character.
  std::vector<uint32_t> off;
  std::vector<uint8_t> cls;
  off.reserve(text.size() + 1);
  cls.reserve(text.size());
  const int32_t len = static_cast<int32_t>(text.size());
  const char* s = text.data();
  for (int32_t i = 0; i < len;) {
    off.push_back(static_cast<uint32_t>(i));
    const unsigned char b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      cls.push_back(ascii[b]);
      ++i;
    } else {
      UChar32 c;
      U8_NEXT(s, i, len, c);
      cls.push_back(c < 0 ? 0 : ClassifyWithIcu(c));
    }
  }
  off.push_back(static_cast<uint32_t>(len));
  const size_t n = cls.size();
  auto lower = [&](size_t k) {
    return static_cast<char>(s[off[k]] | 0x20);  // ASCII case fold; caller checks ASCII
  };
  auto is_ascii_letter = [&](size_t k, char want) {
    return k < n && off[k + 1] - off[k] == 1 && lower(k) == want;
  };

  size_t i = 0;
  while (i < n) {
    const uint8_t c = cls[i];
    size_t j = 0;  // end of the piece (exclusive), 0 = no match yet
    // 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)   (ASCII case-insensitive)
    if ((c & kApostrophe) && i + 1 < n) {
      if (is_ascii_letter(i + 1, 's') || is_ascii_letter(i + 1, 't') ||
          is_ascii_letter(i + 1, 'm') || is_ascii_letter(i + 1, 'd')) {
        j = i + 2;
      } else if ((is_ascii_letter(i + 1, 'r') && is_ascii_letter(i + 2, 'e')) ||
                 (is_ascii_letter(i + 1, 'v') && is_ascii_letter(i + 2, 'e')) ||
                 (is_ascii_letter(i + 1, 'l') && is_ascii_letter(i + 2, 'l'))) {
        j = i + 3;
      }
    }
    // 2. [^\r\n\p{L}\p{N}]?\p{L}+
    if (j == 0) {
      size_t k = 0;
      if (c & kLetter) {
        k = i + 1;
      } else if (!(c & (kCrLf | kLetter | kNumber)) && i + 1 < n && (cls[i + 1] & kLetter)) {
        k = i + 2;
      }
      if (k != 0) {
        while (k < n && (cls[k] & kLetter)) ++k;
        j = k;
      }
    }
    // 3. \p{N}
    if (j == 0 && (c & kNumber)) j = i + 1;
    // 4. ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    if (j == 0) {
      size_t k = 0;
      constexpr uint8_t kNotIn = kSpace | kLetter | kNumber;
      if (!(c & kNotIn)) {
        k = i + 1;
      } else if ((c & kBlank) && i + 1 < n && !(cls[i + 1] & kNotIn)) {
        k = i + 2;
      }
      if (k != 0) {
        while (k < n && !(cls[k] & kNotIn)) ++k;
        while (k < n && (cls[k] & kCrLf)) ++k;
        j = k;
      }
    }
    if (j == 0) {
      // Only white space is left: alternatives 5-7 over the run [i, e).
      size_t e = i;
      size_t last_crlf = n;
      while (e < n && (cls[e] & kSpace)) {
        if (cls[e] & kCrLf) last_crlf = e;
        ++e;
      }
      if (e == i) {
        j = i + 1;  // unreachable: every character matches one alternative
      } else if (last_crlf != n) {
        j = last_crlf + 1;  // 5. \s*[\r\n]+
      } else if (e == n || e - i == 1) {
        j = e;  // 6. \s+(?!\S) at the end, or 7. \s+
      } else {
        j = e - 1;  // 6. \s+(?!\S): leave the last blank for the next word
      }
    }
    EncodePiece(text.substr(off[i], off[j] - off[i]), ids);
    i = j;
  }
}

void BpeTokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.size() == 1) {
    ids->push_back(byte_id_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (ignore_merges_) {
    auto it = vocab_.find(A(piece));
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = piece.size() <= BpeCache::kMaxPieceBytes;
  if (cacheable && cache_.Lookup(piece, ids)) return;
  const size_t before = ids->size();
  if (piece.size() <= 48) {
    BpeShort(piece, ids);
  } else {
    BpeLong(piece, ids);
  }
  if (cacheable) {
    cache_.Insert(piece, absl::MakeConstSpan(ids->data() + before, ids->size() - before));
  }
}

// O(n^2) merging for short pieces: repeatedly merge the lowest-rank pair,
// leftmost first (the order HF tokenizers' priority queue uses).
void BpeTokenizer::BpeShort(std::string_view piece, std::vector<int32_t>* ids) const {
  int32_t sym[64];
  int n = static_cast<int>(piece.size());
  for (int i = 0; i < n; ++i) sym[i] = byte_id_[static_cast<uint8_t>(piece[i])];
  while (n > 1) {
    int best = -1;
    MergeInfo best_info{INT32_MAX, -1};
    for (int i = 0; i + 1 < n; ++i) {
      auto it = merges_.find(PairKey(sym[i], sym[i + 1]));
      if (it != merges_.end() && it->second.rank < best_info.rank) {
        best_info = it->second;
        best = i;
      }
    }
    if (best < 0) break;
    sym[best] = best_info.id;
    std::memmove(&sym[best + 1], &sym[best + 2], sizeof(int32_t) * (n - best - 2));
    --n;
  }
  ids->insert(ids->end(), sym, sym + n);
}

// O(n log n) merging with a priority queue for long pieces (e.g. a long run
// of CJK letters), same order as BpeShort.
void BpeTokenizer::BpeLong(std::string_view piece, std::vector<int32_t>* ids) const {
  const int n = static_cast<int>(piece.size());
  std::vector<int32_t> id(n), prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    id[i] = byte_id_[static_cast<uint8_t>(piece[i])];
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    int32_t rank, pos, left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> queue;
  auto push = [&](int pos) {
    if (pos < 0 || next[pos] < 0) return;
    auto it = merges_.find(PairKey(id[pos], id[next[pos]]));
    if (it != merges_.end()) queue.push({it->second.rank, pos, id[pos], id[next[pos]]});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!queue.empty()) {
    const Cand c = queue.top();
    queue.pop();
    const int r = next[c.pos];
    if (id[c.pos] != c.left || r < 0 || id[r] != c.right) continue;  // stale
    id[c.pos] = merges_.find(PairKey(c.left, c.right))->second.id;
    next[c.pos] = next[r];
    if (next[r] >= 0) prev[next[r]] = c.pos;
    id[r] = -1;
    push(prev[c.pos]);
    push(c.pos);
  }
  for (int i = 0; i >= 0; i = next[i]) ids->push_back(id[i]);
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(std::string_view utf8) const {
  const int64_t bad = Utf8ErrorOffset(utf8);
  if (bad >= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("text is not valid UTF-8: bad byte 0x%02X at byte offset %d",
                        static_cast<unsigned char>(utf8[bad]), bad));
  }
  std::vector<int32_t> ids;
  ids.reserve(utf8.size() / 3 + 4);
  std::vector<Segment> segments;
  raw_splitter_.Split(utf8, &segments);
  for (const Segment& s : segments) {
    if (s.id >= 0) {
      ids.push_back(s.id);
    } else {
      EncodeText(s.text, &ids);
    }
  }
  return ids;
}

std::string BpeTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id >= 0 && static_cast<size_t>(id) < id_to_bytes_.size()) out += id_to_bytes_[id];
  }
  return out;
}

}  // namespace

absl::StatusOr<PromptTokens> Tokenizer::EncodePrompt(std::string_view prompt,
                                                     int max_tokens) const {
  if (max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be at least 1, got ", max_tokens));
  }
  if (const int64_t bad = Utf8ErrorOffset(prompt); bad >= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("prompt is not valid UTF-8: bad byte 0x%02X at byte offset %d",
                        static_cast<unsigned char>(prompt[bad]), bad));
  }
  // As diffusers: template applied to the text, then tokenized with
  // truncation=True, max_length=max_tokens (right side).
  const std::string text = absl::StrCat(A(kChatTemplatePrefix), A(prompt), A(kChatTemplateSuffix));
  ZFARM_ASSIGN_OR_RETURN(std::vector<int32_t> ids, Encode(text));
  PromptTokens out;
  out.untruncated_size = static_cast<int>(ids.size());
  if (ids.size() > static_cast<size_t>(max_tokens)) {
    ids.resize(static_cast<size_t>(max_tokens));
    out.truncated = true;
  }
  out.ids = std::move(ids);
  return out;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view text,
                                                               const std::string& name) {
  ParsedJson parsed;
  auto tokenizer = std::make_unique<BpeTokenizer>();
  try {
    LoaderSax sax(&parsed);
    if (!json::sax_parse(text.begin(), text.end(), &sax)) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": ", sax.error()));
    }
    ZFARM_RETURN_IF_ERROR(tokenizer->Load(parsed, name));
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": unexpected JSON: ", e.what()));
  }
  return std::unique_ptr<Tokenizer>(std::move(tokenizer));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("cannot open tokenizer file ", path, ": ", std::strerror(errno)));
  }
  std::string text;
  char buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, got);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return absl::DataLossError(absl::StrCat("cannot read tokenizer file ", path));
  return FromJson(text, path);
}

}  // namespace zfarm::worker::text
