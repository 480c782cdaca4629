#include "client/batch_plan.h"

#include <fstream>
#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::client {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;
using ::zfarm::testing::StatusIs;

zfarm::v1::JobSpec Defaults() {
  zfarm::v1::JobSpec spec;
  spec.set_width_px(1024);
  spec.set_height_px(1024);
  spec.set_steps(8);
  return spec;
}

TEST(ParsePromptsFileTest, PlainLines) {
  ASSERT_OK_AND_ASSIGN(auto jobs, ParsePromptsFile("a cat\nb dog\n", "p.txt", Defaults(), {}));
  ASSERT_THAT(jobs, SizeIs(2));
  EXPECT_EQ(jobs[0].spec.prompt(), "a cat");
  EXPECT_EQ(jobs[0].line, 1);
  EXPECT_EQ(jobs[1].spec.prompt(), "b dog");
  EXPECT_EQ(jobs[1].line, 2);
  EXPECT_EQ(jobs[1].spec.width_px(), 1024);
  EXPECT_FALSE(jobs[0].spec.has_seed());
}

TEST(ParsePromptsFileTest, CrlfAndNoFinalNewline) {
  ASSERT_OK_AND_ASSIGN(auto jobs, ParsePromptsFile("a\r\nb", "p.txt", Defaults(), {}));
  ASSERT_THAT(jobs, SizeIs(2));
  EXPECT_EQ(jobs[0].spec.prompt(), "a");
  EXPECT_EQ(jobs[1].spec.prompt(), "b");
}

TEST(ParsePromptsFileTest, JsonLinesOverrideDefaults) {
  ASSERT_OK_AND_ASSIGN(
      auto jobs,
      ParsePromptsFile("{\"prompt\": \"x\", \"width\": 768, \"height\": 512, \"steps\": 4, "
                       "\"seed\": 7, \"guidance\": 1.5, \"labels\": {\"team\": \"web\"}, "
                       "\"negative_prompt\": \"blur\", \"output_name\": \"hero\"}\n"
                       "plain\n",
                       "p.jsonl", Defaults(), {}));
  ASSERT_THAT(jobs, SizeIs(2));
  const auto& s = jobs[0].spec;
  EXPECT_EQ(s.prompt(), "x");
  EXPECT_EQ(s.width_px(), 768);
  EXPECT_EQ(s.height_px(), 512);
  EXPECT_EQ(s.steps(), 4);
  EXPECT_EQ(s.seed(), 7u);
  EXPECT_FLOAT_EQ(s.guidance_scale(), 1.5f);
  EXPECT_EQ(s.labels().at("team"), "web");
  EXPECT_EQ(s.negative_prompt(), "blur");
  EXPECT_EQ(s.output_name(), "hero");
  EXPECT_EQ(jobs[1].spec.width_px(), 1024);
}

TEST(ParsePromptsFileTest, EmptyLineNamesTheLine) {
  EXPECT_THAT(ParsePromptsFile("a\n\nb\n", "p.txt", Defaults(), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("p.txt:2: empty line")));
  EXPECT_THAT(ParsePromptsFile("a\n   \n", "p.txt", Defaults(), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("p.txt:2:")));
}

TEST(ParsePromptsFileTest, InvalidJsonNamesTheLine) {
  EXPECT_THAT(ParsePromptsFile("a\nb\n{\"prompt\": \n", "p.jsonl", Defaults(), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("p.jsonl:3: invalid JSON")));
}

TEST(ParsePromptsFileTest, BadKeysAndTypes) {
  EXPECT_THAT(
      ParsePromptsFile("{\"prompt\": \"a\", \"widht\": 5}", "f", Defaults(), {}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("f:1: unknown key \"widht\"")));
  EXPECT_THAT(
      ParsePromptsFile("{\"prompt\": \"a\", \"width\": \"5\"}", "f", Defaults(), {}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"width\" must be an integer")));
  EXPECT_THAT(ParsePromptsFile("{\"width\": 512}", "f", Defaults(), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("f:1: missing \"prompt\"")));
  EXPECT_THAT(ParsePromptsFile("{\"prompt\": \"a\", \"seed\": -1}", "f", Defaults(), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("seed")));
}

TEST(ParsePromptsFileTest, OutputFormatAndQualityKeys) {
  ASSERT_OK_AND_ASSIGN(
      auto jobs, ParsePromptsFile("{\"prompt\": \"a\", \"output_format\": \"JPG\", \"quality\": 70}\n"
                                  "{\"prompt\": \"b\", \"output_format\": \"webp\"}\nc\n",
                                  "p.txt", Defaults(), {}));
  ASSERT_THAT(jobs, SizeIs(3));
  EXPECT_EQ(jobs[0].spec.output_format(), zfarm::v1::OUTPUT_FORMAT_JPEG);
  EXPECT_EQ(jobs[0].spec.quality(), 70);
  EXPECT_EQ(jobs[1].spec.output_format(), zfarm::v1::OUTPUT_FORMAT_WEBP);
  EXPECT_EQ(jobs[2].spec.output_format(), zfarm::v1::OUTPUT_FORMAT_UNSPECIFIED);
  // The format is part of the spec, so of the derived request id.
  zfarm::v1::JobSpec png = jobs[1].spec;
  png.set_output_format(zfarm::v1::OUTPUT_FORMAT_PNG);
  EXPECT_NE(CanonicalSpecHash(png), CanonicalSpecHash(jobs[1].spec));
  EXPECT_THAT(ParsePromptsFile("{\"prompt\": \"a\", \"output_format\": \"gif\"}\n", "p.txt",
                               Defaults(), {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("p.txt:1"), HasSubstr("output_format"), HasSubstr("webp"))));
  EXPECT_THAT(ParsePromptsFile("{\"prompt\": \"a\", \"quality\": \"high\"}\n", "p.txt",
                               Defaults(), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("quality")));
}

TEST(ParsePromptsFileTest, EmptyFile) {
  EXPECT_THAT(ParsePromptsFile("", "f", Defaults(), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
}

TEST(ParsePromptsFileTest, UnreadableFileNamesIt) {
  EXPECT_THAT(LoadPromptsFile("/nonexistent/prompts.txt", Defaults(), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("/nonexistent/prompts.txt")));
}

TEST(SeedSweepTest, SeedsFlagMultipliesLines) {
  SweepOptions sweep;
  ASSERT_OK_AND_ASSIGN(sweep.seeds, ParseSeedList("1, 2,3"));
  ASSERT_OK_AND_ASSIGN(auto jobs, ParsePromptsFile("a\nb\n", "f", Defaults(), sweep));
  ASSERT_THAT(jobs, SizeIs(6));
  EXPECT_EQ(jobs[0].spec.seed(), 1u);
  EXPECT_EQ(jobs[2].spec.seed(), 3u);
  EXPECT_EQ(jobs[3].spec.prompt(), "b");
  EXPECT_EQ(jobs[3].spec.seed(), 1u);
  EXPECT_EQ(jobs[5].variant, 2);
}

TEST(SeedSweepTest, LineSeedsWinOverFlag) {
  SweepOptions sweep;
  sweep.seeds = {1, 2};
  ASSERT_OK_AND_ASSIGN(auto jobs, ParsePromptsFile("{\"prompt\": \"a\", \"seeds\": [9, 10, 11]}",
                                                   "f", Defaults(), sweep));
  ASSERT_THAT(jobs, SizeIs(3));
  EXPECT_EQ(jobs[2].spec.seed(), 11u);
}

TEST(SeedSweepTest, VariantsFromBaseSeed) {
  SweepOptions sweep;
  sweep.variants = 3;
  zfarm::v1::JobSpec d = Defaults();
  d.set_seed(100);
  ASSERT_OK_AND_ASSIGN(auto jobs, ParsePromptsFile("a\n", "f", d, sweep));
  ASSERT_THAT(jobs, SizeIs(3));
  EXPECT_EQ(jobs[0].spec.seed(), 100u);
  EXPECT_EQ(jobs[2].spec.seed(), 102u);
}

TEST(SeedSweepTest, VariantsWithoutSeedGetDistinctIds) {
  SweepOptions sweep;
  sweep.variants = 3;
  ASSERT_OK_AND_ASSIGN(auto jobs, ParsePromptsFile("a\n", "f", Defaults(), sweep));
  ASSERT_THAT(jobs, SizeIs(3));
  AssignRequestIds("p", &jobs);
  EXPECT_NE(jobs[0].request_id, jobs[1].request_id);
  EXPECT_NE(jobs[1].request_id, jobs[2].request_id);
}

TEST(SeedSweepTest, BadSeedList) {
  EXPECT_THAT(ParseSeedList("1,,2"), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
  EXPECT_THAT(ParseSeedList("1,x"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'x'")));
  EXPECT_THAT(ParseSeedList("-3"), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
}

TEST(RequestIdTest, DeterministicAndSpecSensitive) {
  ASSERT_OK_AND_ASSIGN(auto a, ParsePromptsFile("x\ny\n", "f", Defaults(), {}));
  ASSERT_OK_AND_ASSIGN(auto b, ParsePromptsFile("x\ny\n", "f", Defaults(), {}));
  AssignRequestIds("jenkins-7", &a);
  AssignRequestIds("jenkins-7", &b);
  EXPECT_EQ(a[0].request_id, b[0].request_id);
  EXPECT_EQ(a[1].request_id, b[1].request_id);
  EXPECT_NE(a[0].request_id, a[1].request_id);
  EXPECT_THAT(a[0].request_id, ::testing::StartsWith("jenkins-7-1-"));
  EXPECT_THAT(a[1].request_id, ::testing::StartsWith("jenkins-7-2-"));
  // A different spec (steps) gives a different id; a different prefix too.
  b[0].spec.set_steps(4);
  AssignRequestIds("jenkins-7", &b);
  EXPECT_NE(a[0].request_id, b[0].request_id);
  AssignRequestIds("jenkins-8", &b);
  EXPECT_NE(a[1].request_id, b[1].request_id);
  EXPECT_EQ(DeriveBatchId("p", a), DeriveBatchId("p", a));
}

TEST(RequestIdTest, DeadlineAndLabelOrderDoNotChangeTheHash) {
  zfarm::v1::JobSpec s1 = Defaults(), s2 = Defaults();
  s1.set_prompt("a");
  s2.set_prompt("a");
  (*s1.mutable_labels())["a"] = "1";
  (*s1.mutable_labels())["b"] = "2";
  (*s2.mutable_labels())["b"] = "2";
  (*s2.mutable_labels())["a"] = "1";
  s2.mutable_deadline()->set_seconds(12345);
  EXPECT_EQ(CanonicalSpecHash(s1), CanonicalSpecHash(s2));
  EXPECT_EQ(CanonicalSpecHash(s1).size(), 64u);
  s2.set_seed(3);
  EXPECT_NE(CanonicalSpecHash(s1), CanonicalSpecHash(s2));
}

TEST(RequestIdTest, DefaultPrefix) {
  EXPECT_EQ(DefaultRequestIdPrefix("jenkins-site-42", "rnd"), "jenkins-site-42");
  EXPECT_EQ(DefaultRequestIdPrefix("", "rnd"), "rnd");
  EXPECT_EQ(DefaultRequestIdPrefix(nullptr, "rnd"), "rnd");
}

// Image-to-image / inpainting keys. Local pictures come from the reader (bytes),
// *_path keys name --input-root paths; "loras" are "NAME[:SCALE]" strings.
TEST(ParsePromptsFileTest, ImageKeysAndLoras) {
  std::map<std::string, std::string> files = {{"in.png", "PNG-A"}, {"m.png", "MASK"}};
  int reads = 0;
  FileReader read = [&](const std::string& p) -> absl::StatusOr<std::string> {
    ++reads;
    auto it = files.find(p);
    if (it == files.end()) return absl::InvalidArgumentError("cannot read '" + p + "'");
    return it->second;
  };
  zfarm::v1::JobSpec defaults;  // sizes not given: 1024, or the picture's
  defaults.set_steps(8);
  ASSERT_OK_AND_ASSIGN(
      auto jobs,
      ParsePromptsFile(
          "{\"prompt\": \"a\", \"init_image\": \"in.png\", \"mask\": \"m.png\", "
          "\"strength\": 0.6, \"loras\": [\"ink:0.8\", \"detail\", \"v:2:-1.5\"]}\n"
          "{\"prompt\": \"b\", \"init_image_path\": \"shots/x.jpg\", \"mask_path\": \"m/x.png\"}\n"
          "plain\n",
          "p.jsonl", defaults, {}, read));
  ASSERT_THAT(jobs, SizeIs(3));
  const zfarm::v1::JobSpec& a = jobs[0].spec;
  EXPECT_EQ(a.init_image().data(), "PNG-A");
  EXPECT_EQ(a.mask_image().data(), "MASK");
  EXPECT_FLOAT_EQ(a.strength(), 0.6f);
  EXPECT_EQ(a.width_px(), 0);  // the scheduler takes the picture's size
  ASSERT_EQ(a.loras_size(), 3);
  EXPECT_EQ(a.loras(0).name(), "ink");
  EXPECT_FLOAT_EQ(a.loras(0).scale(), 0.8f);
  EXPECT_EQ(a.loras(1).name(), "detail");
  EXPECT_FALSE(a.loras(1).has_scale());
  EXPECT_EQ(a.loras(2).name(), "v:2");
  EXPECT_FLOAT_EQ(a.loras(2).scale(), -1.5f);
  EXPECT_EQ(jobs[1].spec.init_image().path(), "shots/x.jpg");
  EXPECT_EQ(jobs[1].spec.mask_image().path(), "m/x.png");
  EXPECT_EQ(jobs[2].spec.width_px(), 1024);  // text-to-image keeps 1024
  EXPECT_EQ(reads, 2);

  // Object LoRAs are refused with the accepted form; other errors name the line.
  EXPECT_THAT(ParsePromptsFile("{\"prompt\": \"a\", \"loras\": [{\"name\": \"ink\", \"scale\": 1}]}",
                               "f", defaults, {}, read),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("f:1: \"loras\"[0]: write each LoRA as a "
                                       "\"NAME[:SCALE]\" string"),
                             HasSubstr("objects are not accepted"))));
  EXPECT_THAT(ParsePromptsFile("{\"prompt\": \"a\", \"loras\": \"ink\"}", "f", defaults, {}, read),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must be an array")));
  EXPECT_THAT(ParsePromptsFile("{\"prompt\": \"a\", \"loras\": [\":1\"]}", "f", defaults, {}, read),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty LoRA name")));
  EXPECT_THAT(
      ParsePromptsFile("a\n{\"prompt\": \"a\", \"init_image\": \"nope.png\"}", "f", defaults, {},
                       read),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("f:2: \"init_image\": cannot read 'nope.png'")));
  EXPECT_THAT(ParsePromptsFile("{\"prompt\": \"a\", \"strength\": \"high\"}", "f", defaults, {},
                               read),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"strength\" must be a")));
  EXPECT_THAT(ParsePromptsFile("{\"prompt\": \"a\", \"init_image\": \"in.png\"}", "f", defaults,
                               {}),  // no reader
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("local files")));
}

TEST(PromptsFileTest, ControlNetKeys) {
  FileReader read = [](const std::string& p) -> absl::StatusOr<std::string> {
    if (p == "pose.png") return std::string("POSE");
    return absl::InvalidArgumentError("cannot read '" + p + "'");
  };
  zfarm::v1::JobSpec defaults;
  ASSERT_OK_AND_ASSIGN(
      auto jobs,
      ParsePromptsFile("{\"prompt\": \"a\", \"control_image\": \"pose.png\", "
                       "\"control_scale\": 0.8, \"control_start\": 0.1, \"control_end\": 0.9}\n"
                       "{\"prompt\": \"b\", \"control_image_path\": \"poses/b.png\"}\n",
                       "p.jsonl", defaults, {}, read));
  ASSERT_THAT(jobs, SizeIs(2));
  const zfarm::v1::ControlInput& a = jobs[0].spec.control();
  EXPECT_EQ(a.image().data(), "POSE");
  EXPECT_FLOAT_EQ(a.conditioning_scale(), 0.8f);
  EXPECT_FLOAT_EQ(a.start(), 0.1f);
  EXPECT_FLOAT_EQ(a.end(), 0.9f);
  EXPECT_EQ(jobs[0].spec.width_px(), 1024);  // no init picture: 1024, as diffusers
  EXPECT_EQ(jobs[1].spec.control().image().path(), "poses/b.png");
  EXPECT_FALSE(jobs[1].spec.control().has_conditioning_scale());
  EXPECT_THAT(ParsePromptsFile("{\"prompt\": \"a\", \"control_scale\": \"high\"}", "f", defaults,
                               {}, read),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("\"control_scale\" must be a number")));
  EXPECT_THAT(ParsePromptsFile("{\"prompt\": \"a\", \"control_image\": \"nope.png\"}", "f",
                               defaults, {}, read),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("f:1: \"control_image\": cannot read 'nope.png'")));
}

TEST(RequestIdTest, ChangesWhenAPictureChanges) {
  auto id_for = [](const std::string& bytes) {
    PlannedJob j;
    j.line = 1;
    j.spec.set_prompt("a");
    j.spec.mutable_init_image()->set_data(bytes);
    return DeriveRequestId("p", j);
  };
  EXPECT_EQ(id_for("PNG-A"), id_for("PNG-A"));
  EXPECT_NE(id_for("PNG-A"), id_for("PNG-B"));
}

TEST(ParseLoraRefTest, NameAndScale) {
  ASSERT_OK_AND_ASSIGN(auto a, ParseLoraRef("ink:0.8"));
  EXPECT_EQ(a.name(), "ink");
  EXPECT_FLOAT_EQ(a.scale(), 0.8f);
  ASSERT_OK_AND_ASSIGN(auto b, ParseLoraRef("ink"));
  EXPECT_FALSE(b.has_scale());
  ASSERT_OK_AND_ASSIGN(auto c, ParseLoraRef("ink:v2"));  // not a number: part of the name
  EXPECT_EQ(c.name(), "ink:v2");
  EXPECT_FALSE(c.has_scale());
  EXPECT_THAT(ParseLoraRef("ink:"), StatusIs(absl::StatusCode::kInvalidArgument,
                                             HasSubstr("empty scale")));
  EXPECT_THAT(ParseLoraRef(""), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("empty LoRA name")));
}

}  // namespace
}  // namespace zfarm::client
