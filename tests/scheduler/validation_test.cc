#include "scheduler/validation.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::scheduler {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;

v1::JobSpec Good() {
  v1::JobSpec s;
  s.set_prompt("a cat");
  return s;
}

absl::Status Check(v1::JobSpec s) { return ValidateAndNormalizeSpec(Limits{}, "spec", &s); }

TEST(ValidationTest, FillsDefaults) {
  v1::JobSpec s = Good();
  ASSERT_OK(ValidateAndNormalizeSpec(Limits{}, "spec", &s));
  EXPECT_EQ(s.width_px(), 1024);
  EXPECT_EQ(s.height_px(), 1024);
  EXPECT_EQ(s.steps(), 8);
  EXPECT_FALSE(s.has_seed());
}

TEST(ValidationTest, OutputFormatAndQuality) {
  auto with = [](int format, int quality) {
    v1::JobSpec s = Good();
    s.set_output_format(static_cast<v1::OutputFormat>(format));
    s.set_quality(quality);
    return Check(s);
  };
  EXPECT_OK(with(v1::OUTPUT_FORMAT_UNSPECIFIED, 0));
  EXPECT_OK(with(v1::OUTPUT_FORMAT_PNG, 0));
  EXPECT_OK(with(v1::OUTPUT_FORMAT_JPEG, 0));
  EXPECT_OK(with(v1::OUTPUT_FORMAT_JPEG, 1));
  EXPECT_OK(with(v1::OUTPUT_FORMAT_WEBP, 100));
  EXPECT_THAT(with(9, 0), StatusIs(absl::StatusCode::kInvalidArgument,
                                   AllOf(HasSubstr("spec.output_format"), HasSubstr("png, jpeg, webp"))));
  EXPECT_THAT(with(v1::OUTPUT_FORMAT_JPEG, 101),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("spec.quality"), HasSubstr("[1, 100]"))));
  EXPECT_THAT(with(v1::OUTPUT_FORMAT_WEBP, -5),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("spec.quality")));
  EXPECT_THAT(with(v1::OUTPUT_FORMAT_PNG, 80),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("spec.quality"), HasSubstr("lossless"))));
}

TEST(ValidationTest, EveryLimitNamesFieldAndLimit) {
  auto bad = [](auto mutate) {
    v1::JobSpec s = Good();
    mutate(s);
    return Check(s);
  };
  using v1::JobSpec;
  EXPECT_THAT(bad([](JobSpec& s) { s.set_prompt(""); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("spec.prompt")));
  EXPECT_THAT(bad([](JobSpec& s) { s.set_prompt(std::string(4001, 'a')); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("4000")));
  EXPECT_OK(bad([](JobSpec& s) { s.set_prompt(std::string(4000, 'a')); }));
  EXPECT_THAT(bad([](JobSpec& s) { s.set_prompt("bad \xff utf8"); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("UTF-8")));
  EXPECT_THAT(bad([](JobSpec& s) { s.set_prompt("\xc0\xaf"); }),  // overlong
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("UTF-8")));
  EXPECT_THAT(bad([](JobSpec& s) { s.set_width_px(1000); }),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("spec.width_px"), HasSubstr("multiples of 16"))));
  EXPECT_THAT(bad([](JobSpec& s) { s.set_height_px(240); }),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("spec.height_px"), HasSubstr("[256, 2048]"))));
  EXPECT_THAT(bad([](JobSpec& s) { s.set_width_px(2064); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("2048")));
  EXPECT_OK(bad([](JobSpec& s) {
    s.set_width_px(256);
    s.set_height_px(2048);
  }));
  EXPECT_THAT(bad([](JobSpec& s) { s.set_steps(51); }),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("spec.steps"), HasSubstr("[1, 50]"))));
  EXPECT_THAT(bad([](JobSpec& s) { s.set_steps(-1); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("spec.steps")));
  EXPECT_THAT(bad([](JobSpec& s) { s.set_guidance_scale(20.5f); }),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("spec.guidance_scale"), HasSubstr("[0, 20]"))));
  EXPECT_THAT(bad([](JobSpec& s) { s.set_guidance_scale(-0.1f); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("guidance_scale")));
  for (const char* name : {"a/b", "a\\b", "..", "x..y", "tab\there"}) {
    EXPECT_THAT(bad([&](JobSpec& s) { s.set_output_name(name); }),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("spec.output_name")))
        << name;
  }
  EXPECT_THAT(bad([](JobSpec& s) { s.set_output_name(std::string(129, 'n')); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("128")));
  EXPECT_OK(bad([](JobSpec& s) { s.set_output_name(std::string(128, 'n')); }));
  EXPECT_THAT(bad([](JobSpec& s) {
                for (int i = 0; i < 33; ++i) (*s.mutable_labels())["k" + std::to_string(i)] = "v";
              }),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("spec.labels"), HasSubstr("32"))));
  EXPECT_THAT(bad([](JobSpec& s) { s.set_priority(101); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("spec.priority")));
}

TEST(ValidationTest, RequestId) {
  EXPECT_OK(ValidateRequestId(Limits{}, "request_id", ""));
  EXPECT_OK(ValidateRequestId(Limits{}, "request_id", "build-42:line-7"));
  EXPECT_THAT(ValidateRequestId(Limits{}, "request_id", std::string(257, 'r')),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("256")));
  EXPECT_THAT(ValidateRequestId(Limits{}, "request_id", "with space"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("request_id")));
}

TEST(ValidationTest, FingerprintIsCanonical) {
  v1::JobSpec a = Good(), b = Good();
  (*a.mutable_labels())["x"] = "1";
  (*a.mutable_labels())["y"] = "2";
  (*b.mutable_labels())["y"] = "2";
  (*b.mutable_labels())["x"] = "1";
  b.set_width_px(1024);  // explicit default == implicit default after normalization
  ASSERT_OK(ValidateAndNormalizeSpec(Limits{}, "spec", &a));
  ASSERT_OK(ValidateAndNormalizeSpec(Limits{}, "spec", &b));
  EXPECT_EQ(SpecFingerprint(a), SpecFingerprint(b));
  b.set_seed(7);
  EXPECT_NE(SpecFingerprint(a), SpecFingerprint(b));
  b.clear_seed();
  b.set_prompt("a dog");
  EXPECT_NE(SpecFingerprint(a), SpecFingerprint(b));
}

}  // namespace
}  // namespace zfarm::scheduler
