// The flag parser of the three binaries (proto/flags/flags.h).
#include "proto/flags/flags.h"

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::flags {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::zfarm::testing::StatusIs;

TEST(FlagSetTest, ParsesAllForms) {
  FlagSet flags("t");
  std::string s;
  int64_t n = 0;
  bool b = false;
  double d = 0;
  absl::Duration dur;
  std::vector<std::string> rep;
  flags.String("name", &s, "");
  flags.Int("n", &n, "");
  flags.Bool("b", &b, "");
  flags.Double("d", &d, "");
  flags.Duration("t", &dur, "");
  flags.Repeated("l", &rep, "");
  bool help = false;
  ASSERT_OK_AND_ASSIGN(
      auto pos, flags.Parse({"pos1", "--name=x y", "--n", "-5", "--b", "--d=2.5", "--t", "1m30s",
                             "--l", "a=1", "--l=b=2", "--", "--not-a-flag"},
                            &help));
  EXPECT_FALSE(help);
  EXPECT_THAT(pos, ElementsAre("pos1", "--not-a-flag"));
  EXPECT_EQ(s, "x y");
  EXPECT_EQ(n, -5);
  EXPECT_TRUE(b);
  EXPECT_EQ(d, 2.5);
  EXPECT_EQ(dur, absl::Seconds(90));
  EXPECT_THAT(rep, ElementsAre("a=1", "b=2"));
  ASSERT_OK(flags.Parse({"--b=false", "--help"}, &help).status());
  EXPECT_FALSE(b);
  EXPECT_TRUE(help);
}

TEST(FlagSetTest, Errors) {
  FlagSet flags("t");
  int64_t n = 0;
  std::string s;
  flags.Int("n", &n, "");
  flags.String("s", &s, "");
  bool help = false;
  EXPECT_THAT(flags.Parse({"--bogus"}, &help),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--bogus")));
  EXPECT_THAT(flags.Parse({"-x"}, &help),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("-x")));
  EXPECT_THAT(
      flags.Parse({"--n", "abc"}, &help),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--n: 'abc' is not an integer")));
  EXPECT_THAT(flags.Parse({"--s"}, &help),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'--s' needs a value")));
  EXPECT_THAT(flags.Help(), HasSubstr("--n N"));
}

TEST(FlagSetTest, Durations) {
  EXPECT_EQ(*ParseDurationFlag("30"), absl::Seconds(30));
  EXPECT_EQ(*ParseDurationFlag("250ms"), absl::Milliseconds(250));
  EXPECT_THAT(ParseDurationFlag("soon"),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
  EXPECT_THAT(ParseDurationFlag("-5s"), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
}

TEST(FlagSetTest, NarrowIntegersAndFloats) {
  FlagSet flags("t");
  int32_t n = 0;
  float f = 0;
  flags.Int("n", &n, "");
  flags.Float("f", &f, "");
  bool help = false;
  ASSERT_OK(flags.Parse({"--n=-2147483648", "--f", "0.25"}, &help).status());
  EXPECT_EQ(n, INT32_MIN);
  EXPECT_EQ(f, 0.25f);
  EXPECT_THAT(flags.Parse({"--n=2147483648"}, &help),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("--n: 2147483648 is outside [-2147483648, 2147483647]")));
  EXPECT_THAT(flags.Parse({"--f=half"}, &help), StatusIs(absl::StatusCode::kInvalidArgument,
                                                         HasSubstr("--f: 'half' is not a number")));
  EXPECT_THAT(flags.Parse({"--n=1.5"}, &help),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is not an integer")));
}

TEST(FlagSetTest, GivenTellsAbsentFromDefault) {
  FlagSet flags("t");
  int64_t seed = 0;
  std::string out;
  std::vector<std::string> loras;
  flags.Int("seed", &seed, "");
  flags.String("out", &out, "");
  flags.Repeated("lora", &loras, "");
  bool help = false;
  ASSERT_OK(flags.Parse({"--seed=0", "--out="}, &help).status());
  EXPECT_TRUE(flags.Given("seed"));  // given, though equal to the default
  EXPECT_TRUE(flags.Given("out"));   // given, though empty
  EXPECT_FALSE(flags.Given("lora"));
  EXPECT_FALSE(flags.Given("nosuch"));
  // Each Parse() starts afresh.
  ASSERT_OK(flags.Parse({"--lora", "a"}, &help).status());
  EXPECT_FALSE(flags.Given("seed"));
  EXPECT_TRUE(flags.Given("lora"));
  // A value that does not parse does not count as given.
  EXPECT_FALSE(flags.Parse({"--seed=x"}, &help).ok());
  EXPECT_FALSE(flags.Given("seed"));
}

TEST(FlagSetTest, UnderscoresStandForDashesOnlyWhenAsked) {
  absl::Duration interval;
  FlagSet strict("t");
  strict.Duration("heartbeat-interval", &interval, "");
  bool help = false;
  EXPECT_THAT(strict.Parse({"--heartbeat_interval=2s"}, &help),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("unknown flag '--heartbeat_interval'")));
  FlagSet lenient("t");
  lenient.set_underscores_as_dashes(true);
  lenient.Duration("heartbeat-interval", &interval, "");
  ASSERT_OK(lenient.Parse({"--heartbeat_interval=2s"}, &help).status());
  EXPECT_EQ(interval, absl::Seconds(2));
  EXPECT_TRUE(lenient.Given("heartbeat-interval"));
  ASSERT_OK(lenient.Parse({"--heartbeat-interval", "3s"}, &help).status());
  EXPECT_EQ(interval, absl::Seconds(3));
}

TEST(FlagSetTest, HelpHasTheDescriptionTheFooterAndWrapsLongTexts) {
  FlagSet flags("zfarm-worker demo --model DIR");
  flags.set_description("Renders a demo.");
  flags.set_footer("Exit status: 0 ok, 2 usage.\n");
  std::string model;
  const std::string long_help =
      "a long explanation of what this flag does, which goes on and on until it no longer fits "
      "on one line of the help text";
  flags.String("model", &model, long_help, "DIR");
  const std::string help = flags.Help();
  EXPECT_EQ(help.rfind("usage: zfarm-worker demo --model DIR\n\nRenders a demo.\n\nflags:\n", 0),
            0u)
      << help;
  EXPECT_THAT(help, HasSubstr("show this help\n\nExit status: 0 ok, 2 usage.\n"));
  // The entry takes two lines of at most 100 columns, the second indented under the text.
  const size_t at = help.find("  --model DIR ");
  ASSERT_NE(at, std::string::npos) << help;
  std::istringstream lines(help.substr(at));
  std::string first, second;
  std::getline(lines, first);
  std::getline(lines, second);
  EXPECT_LE(first.size(), 100u);
  EXPECT_LE(second.size(), 100u);
  EXPECT_EQ(second.find_first_not_of(' '), 31u) << help;
  // Undoing the wrap gives the text back.
  std::istringstream words(first.substr(first.find("a long")) + " " + second);
  std::string flat;
  for (std::string w; words >> w;) flat += (flat.empty() ? "" : " ") + w;
  EXPECT_EQ(flat, long_help);
}

TEST(FlagSetTest, HelpShowsNonZeroDefaultsWhenAsked) {
  std::string listen = "127.0.0.1:50051", empty;
  int32_t attempts = 3, off = 0;
  double aging = 1.5;
  absl::Duration lease = absl::Seconds(6);
  bool plaintext = false, on = true;
  auto define = [&](FlagSet& f) {
    f.String("listen", &listen, "gRPC address", "HOST:PORT");
    f.String("state-dir", &empty, "the journal's folder", "DIR");
    f.Int("max-attempts", &attempts, "attempts before FAILED");
    f.Int("cap", &off, "0 = off");
    f.Double("aging", &aging, "points per minute");
    f.Duration("lease", &lease, "lease length");
    f.Bool("plaintext", &plaintext, "no TLS");
    f.Bool("on", &on, "enabled");
  };
  FlagSet shown("t");
  shown.set_show_defaults(true);
  define(shown);
  const std::string help = shown.Help();
  EXPECT_THAT(help, HasSubstr("gRPC address (default: 127.0.0.1:50051)\n"));
  EXPECT_THAT(help, HasSubstr("attempts before FAILED (default: 3)\n"));
  EXPECT_THAT(help, HasSubstr("points per minute (default: 1.5)\n"));
  EXPECT_THAT(help, HasSubstr("lease length (default: 6s)\n"));
  EXPECT_THAT(help, HasSubstr("enabled (default: true)\n"));
  EXPECT_THAT(help, HasSubstr("the journal's folder\n"));
  EXPECT_THAT(help, HasSubstr("0 = off\n"));
  EXPECT_THAT(help, HasSubstr("no TLS\n"));
  // The default is the value when the flag was defined, not after Parse().
  bool asked = false;
  ASSERT_OK(shown.Parse({"--max-attempts=7"}, &asked).status());
  EXPECT_THAT(shown.Help(), HasSubstr("attempts before FAILED (default: 3)\n"));
  FlagSet hidden("t");
  define(hidden);
  EXPECT_THAT(hidden.Help(), Not(HasSubstr("default:")));
}

}  // namespace
}  // namespace zfarm::flags
