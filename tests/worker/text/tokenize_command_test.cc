// `zfarm-worker tokenize` end to end (stdin / stdout / stderr / exit code),
// with the official tokenizer.json.
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/text/tokenizer_test_util.h"
#include "worker/commands/commands.h"

namespace zfarm::worker {
namespace {

using ::testing::HasSubstr;

struct Result {
  int rc;
  std::string out;
  std::string err;
};

Result RunCmd(std::vector<std::string> args, const std::string& input) {
  std::vector<char*> argv;
  args.insert(args.begin(), "tokenize");
  for (std::string& a : args) argv.push_back(a.data());
  std::istringstream in(input);
  std::ostringstream out;
  std::streambuf* old_in = std::cin.rdbuf(in.rdbuf());
  std::streambuf* old_out = std::cout.rdbuf(out.rdbuf());
  ::testing::internal::CaptureStderr();
  const int rc = RunTokenize(static_cast<int>(argv.size()), argv.data());
  std::string err = ::testing::internal::GetCapturedStderr();
  std::cin.rdbuf(old_in);
  std::cout.rdbuf(old_out);
  std::cin.clear();
  return {rc, out.str(), err};
}

const std::string kTok = "--tokenizer=" + text::testing::OfficialTokenizerPath();

TEST(TokenizeCommandTest, OneArrayPerLine) {
  Result r = RunCmd({kTok}, "\"Hello\"\n\"a<|im_end|>\"\r\n\"\"\n");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, "[9707]\n[64,151645]\n[]\n");
}

TEST(TokenizeCommandTest, ChatTemplateAndTruncationNotice) {
  std::string long_prompt = "a";
  for (int i = 1; i < 600; ++i) long_prompt += " a";
  Result r = RunCmd({kTok, "--chat-template"}, "\"Hello\"\n\"" + long_prompt + "\"\n");
  EXPECT_EQ(r.rc, 0) << r.err;
  std::istringstream lines(r.out);
  std::string first, second;
  std::getline(lines, first);
  std::getline(lines, second);
  EXPECT_EQ(first, "[151644,872,198,9707,151645,198,151644,77091,198]");
  EXPECT_EQ(std::count(second.begin(), second.end(), ',') + 1, 512);
  EXPECT_THAT(r.err, HasSubstr("line 2: truncated: 608 tokens > 512"));
  EXPECT_THAT(r.err, ::testing::Not(HasSubstr("line 1")));
}

TEST(TokenizeCommandTest, MaxTokensFlag) {
  Result r = RunCmd({kTok, "--chat-template", "--max-tokens", "4"}, "\"Hello\"\n");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, "[151644,872,198,9707]\n");
  EXPECT_THAT(r.err, HasSubstr("line 1: truncated: 9 tokens > 4"));
}

TEST(TokenizeCommandTest, BadLinesNameTheLineAndExit1) {
  Result not_string = RunCmd({kTok}, "\"ok\"\n42\n\"never\"\n");
  EXPECT_EQ(not_string.rc, 1);
  EXPECT_EQ(not_string.out, "[562]\n");
  EXPECT_THAT(not_string.err, HasSubstr("line 2: expected a JSON string, got number"));

  Result not_json = RunCmd({kTok}, "hello\n");
  EXPECT_EQ(not_json.rc, 1);
  EXPECT_THAT(not_json.err, HasSubstr("line 1: not valid JSON"));

  Result blank = RunCmd({kTok}, "\"a\"\n\n");
  EXPECT_EQ(blank.rc, 1);
  EXPECT_THAT(blank.err, HasSubstr("line 2: not valid JSON"));

  Result bad_utf8 = RunCmd({kTok}, "\"x\xC3\x28\"\n");
  EXPECT_EQ(bad_utf8.rc, 1);
  EXPECT_THAT(bad_utf8.err, HasSubstr("line 1"));
}

TEST(TokenizeCommandTest, UsageErrors) {
  EXPECT_EQ(RunCmd({}, "").rc, 2);
  EXPECT_EQ(RunCmd({kTok, "--bogus"}, "").rc, 2);
  EXPECT_EQ(RunCmd({kTok, "--max-tokens", "0"}, "").rc, 2);
  Result help = RunCmd({"--help"}, "");
  EXPECT_EQ(help.rc, 0);
  Result missing = RunCmd({"--tokenizer", "/nonexistent.json"}, "\"a\"\n");
  EXPECT_EQ(missing.rc, 1);
  EXPECT_THAT(missing.err, HasSubstr("/nonexistent.json"));
}

}  // namespace
}  // namespace zfarm::worker
