// Tokenizer behaviour on small, hand-made tokenizer.json files: BPE order,
// added-token flags, and the errors for files this implementation refuses.
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"
#include "worker/text/tokenizer.h"

namespace zfarm::worker::text {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;
using json = nlohmann::json;

// GPT-2 byte-level character of byte b, as UTF-8.
std::string ByteChar(int b) {
  const bool direct = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
  int cp = b;
  if (!direct) {
    int n = 0;
    for (int x = 0; x < b; ++x) {
      if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE))) ++n;
    }
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

json AddedToken(const std::string& content, int id) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", true}};
}

// A tiny Qwen-shaped tokenizer: ids 0..255 are the bytes, then merges
// a+b=256, ab+c=257, b+c=258 (rank after ab+c), Ġ+a=259.
json MiniTokenizer() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteChar(b)] = b;
  vocab["ab"] = 256;
  vocab["abc"] = 257;
  vocab["bc"] = 258;
  vocab["Ġa"] = 259;
  json merges = json::array({json::array({"a", "b"}), json::array({"ab", "c"}),
                             json::array({"b", "c"}), json::array({"Ġ", "a"})});
  json added = json::array({AddedToken("<s>", 300), AddedToken("[L]", 301), AddedToken("[R]", 302),
                            AddedToken("[W]", 303), AddedToken("\xC3\xA9", 304)});
  added[1]["lstrip"] = true;
  added[2]["rstrip"] = true;
  added[3]["single_word"] = true;
  added[4]["normalized"] = true;
  added[4]["special"] = false;
  const std::string regex =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  json byte_level = {{"type", "ByteLevel"},
                     {"add_prefix_space", false},
                     {"trim_offsets", false},
                     {"use_regex", false}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", {{"type", "NFC"}}},
          {"pre_tokenizer",
           {{"type", "Sequence"},
            {"pretokenizers", json::array({{{"type", "Split"},
                                            {"pattern", {{"Regex", regex}}},
                                            {"behavior", "Isolated"},
                                            {"invert", false}},
                                           byte_level})}}},
          {"post_processor", byte_level},
          {"decoder", byte_level},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", ""},
            {"end_of_word_suffix", ""},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", merges}}}};
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const json& j) {
  return Tokenizer::FromJson(j.dump(), "mini.json");
}

std::vector<int32_t> Ids(const Tokenizer& t, const std::string& s) {
  auto r = t.Encode(s);
  EXPECT_OK(r.status());
  return r.ok() ? *r : std::vector<int32_t>{};
}

TEST(MiniTokenizerTest, MergesApplyByRankLowestFirst) {
  ASSERT_OK_AND_ASSIGN(auto t, Load(MiniTokenizer()));
  EXPECT_THAT(Ids(*t, "abc"), ElementsAre(257));  // (a,b) before (b,c)
  EXPECT_THAT(Ids(*t, "bc"), ElementsAre(258));
  EXPECT_THAT(Ids(*t, "cab"), ElementsAre('c', 256));
  EXPECT_THAT(Ids(*t, "x a"), ElementsAre('x', 259));
  EXPECT_EQ(t->vocab_size(), 305);
  EXPECT_EQ(t->Decode({257, 259, 300, 9999, -1}), "abc a<s>");
}

TEST(MiniTokenizerTest, LegacyStringMergesWork) {
  json j = MiniTokenizer();
  j["model"]["merges"] = json::array({"a b", "ab c", "b c", "Ġ a"});
  ASSERT_OK_AND_ASSIGN(auto t, Load(j));
  EXPECT_THAT(Ids(*t, "abc"), ElementsAre(257));
}

TEST(MiniTokenizerTest, LongPieceUsesSameMergeOrder) {
  ASSERT_OK_AND_ASSIGN(auto t, Load(MiniTokenizer()));
  std::string s;
  std::vector<int32_t> want;
  for (int i = 0; i < 100; ++i) {
    s += "abcbc";
    want.push_back(257);
    want.push_back(258);
  }
  EXPECT_EQ(Ids(*t, s), want);
}

TEST(MiniTokenizerTest, AddedTokenFlags) {
  ASSERT_OK_AND_ASSIGN(auto t, Load(MiniTokenizer()));
  EXPECT_THAT(Ids(*t, "x<s>y"), ElementsAre('x', 300, 'y'));
  EXPECT_THAT(Ids(*t, "x  [L]y"), ElementsAre('x', 301, 'y'));    // lstrip eats "  "
  EXPECT_THAT(Ids(*t, "x[R] \t y"), ElementsAre('x', 302, 'y'));  // rstrip eats " \t "
  EXPECT_THAT(Ids(*t, "x [W] y"), ElementsAre('x', ' ', 303, ' ', 'y'));
  EXPECT_THAT(Ids(*t, "x[W]"), ElementsAre('x', '[', 'W', ']'));  // not a single word
  EXPECT_THAT(Ids(*t, "e\xCC\x81"), ElementsAre(304));            // normalized=true: NFC first
  EXPECT_THAT(Ids(*t, "<s"), ElementsAre('<', 's'));
}

TEST(MiniTokenizerTest, MissingFileIsNotFound) {
  EXPECT_THAT(Tokenizer::FromFile("/nonexistent/tokenizer.json"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/tokenizer.json")));
}

TEST(MiniTokenizerTest, InvalidJson) {
  EXPECT_THAT(Tokenizer::FromJson("{\"model\": [", "bad.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad.json: invalid JSON")));
  EXPECT_THAT(Tokenizer::FromJson("[]", "bad.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("object")));
}

struct BadCase {
  const char* name;
  void (*mutate)(json&);
  const char* message;
};

TEST(MiniTokenizerTest, RefusesWhatItDoesNotImplement) {
  const BadCase cases[] = {
      {"nfkc", [](json& j) { j["normalizer"]["type"] = "NFKC"; }, "normalizer.type: 'NFKC'"},
      {"no pre_tokenizer", [](json& j) { j["pre_tokenizer"] = nullptr; }, "pre_tokenizer"},
      {"whitespace pre_tokenizer",
       [](json& j) {
         j["pre_tokenizer"] = {{"type", "Whitespace"}};
       },
       "pre_tokenizer.type: 'Whitespace'"},
      {"other regex",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+"; },
       "pattern.Regex"},
      {"merged behaviour",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; }, "behavior"},
      {"prefix space",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true; },
       "add_prefix_space"},
      {"wordpiece", [](json& j) { j["model"]["type"] = "WordPiece"; }, "model.type: 'WordPiece'"},
      {"dropout", [](json& j) { j["model"]["dropout"] = 0.1; }, "model.dropout"},
      {"byte fallback", [](json& j) { j["model"]["byte_fallback"] = true; }, "model.byte_fallback"},
      {"template post-processor",
       [](json& j) {
         j["post_processor"] = {{"type", "TemplateProcessing"}};
       },
       "post_processor.type: 'TemplateProcessing'"},
      {"decoder",
       [](json& j) {
         j["decoder"] = {{"type", "Metaspace"}};
       },
       "decoder.type"},
      {"merge part missing",
       [](json& j) {
         j["model"]["merges"].push_back({"q", "zz"});
       },
       "model.merges[4]"},
      {"merge result missing",
       [](json& j) {
         j["model"]["merges"].push_back({"x", "y"});
       },
       "model.merges[4]"},
      {"merge not a pair", [](json& j) { j["model"]["merges"].push_back(3); }, "model.merges[4]"},
      {"vocab outside alphabet", [](json& j) { j["model"]["vocab"]["\xE4\xBD\xA0"] = 400; },
       "byte-level alphabet"},
      {"vocab id not int", [](json& j) { j["model"]["vocab"]["ab"] = "x"; }, "model.vocab['ab']"},
      {"duplicate id", [](json& j) { j["model"]["vocab"]["bc"] = 256; }, "id 256"},
      {"byte missing", [](json& j) { j["model"]["vocab"].erase("a"); }, "byte 0x61"},
      {"added id clash", [](json& j) { j["added_tokens"][0]["id"] = 5; }, "added_tokens[0]"},
      {"added no content", [](json& j) { j["added_tokens"][1].erase("content"); },
       "added_tokens[1]"},
      {"added flag type", [](json& j) { j["added_tokens"][2]["lstrip"] = "yes"; },
       "added_tokens[2].lstrip"},
  };
  for (const BadCase& c : cases) {
    json j = MiniTokenizer();
    c.mutate(j);
    EXPECT_THAT(Load(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)))
        << c.name;
  }
}

}  // namespace
}  // namespace zfarm::worker::text
