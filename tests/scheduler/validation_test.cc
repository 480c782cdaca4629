#include "scheduler/validation.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/job_defaults.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::scheduler {
namespace {

using ::testing::HasSubstr;
using ::zfarm::base::kDefaultStrength;
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


// Image inputs and LoRAs: every check that needs no I/O (decoding and paths are
// InputStore's, tests/scheduler/inputs_test.cc).
TEST(ValidationTest, ImageInputsStrengthAndLorasNameFieldAndLimit) {
  auto bad = [](auto mutate) {
    v1::JobSpec s = Good();
    mutate(s);
    return Check(s);
  };
  using v1::JobSpec;
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  // Bytes over --max-input-bytes, with the sizes in MiB.
  EXPECT_THAT(bad([](JobSpec& s) {
                s.mutable_init_image()->set_data(std::string(17 * (1 << 20) + (1 << 18), 'x'));
              }),
              StatusIs(kInvalid, HasSubstr("spec.init_image.data: 17.2 MiB is over "
                                           "--max-input-bytes (16 MiB)")));
  EXPECT_OK(bad([](JobSpec& s) { s.mutable_init_image()->set_data(std::string(16 << 20, 'x')); }));
  EXPECT_THAT(bad([](JobSpec& s) {
                s.mutable_init_image()->set_data("x");
                s.mutable_mask_image()->set_data(std::string((16 << 20) + 1, 'x'));
              }),
              StatusIs(kInvalid, HasSubstr("spec.mask_image.data: 16.0 MiB is over")));
  EXPECT_THAT(bad([](JobSpec& s) { s.mutable_init_image()->set_data(""); }),
              StatusIs(kInvalid, HasSubstr("spec.init_image.data: must not be empty")));
  EXPECT_THAT(bad([](JobSpec& s) { s.mutable_init_image(); }),
              StatusIs(kInvalid, HasSubstr("spec.init_image: set data")));
  EXPECT_THAT(bad([](JobSpec& s) { s.mutable_init_image()->set_path(""); }),
              StatusIs(kInvalid, HasSubstr("spec.init_image.path: must not be empty")));
  EXPECT_THAT(bad([](JobSpec& s) { s.mutable_init_image()->set_path(std::string(1025, 'a')); }),
              StatusIs(kInvalid, HasSubstr("spec.init_image.path: 1025 bytes exceeds the limit of "
                                           "1024")));
  EXPECT_THAT(bad([](JobSpec& s) { s.mutable_init_image()->set_sha256("abc"); }),
              StatusIs(kInvalid, HasSubstr("spec.init_image.sha256: must be 64")));
  EXPECT_OK(bad([](JobSpec& s) { s.mutable_init_image()->set_sha256(std::string(64, 'a')); }));
  // A mask needs an image (diffusers' inpaint pipeline requires `image`).
  EXPECT_THAT(bad([](JobSpec& s) { s.mutable_mask_image()->set_data("x"); }),
              StatusIs(kInvalid, HasSubstr("spec.mask_image: needs init_image")));
  // strength: (0, 1], only with an image.
  EXPECT_THAT(bad([](JobSpec& s) { s.set_strength(0.5f); }),
              StatusIs(kInvalid, HasSubstr("spec.strength: needs init_image")));
  for (float st : {0.0f, -0.1f, 1.01f, std::nanf(""), INFINITY}) {
    EXPECT_THAT(bad([st](JobSpec& s) {
                  s.mutable_init_image()->set_data("x");
                  s.set_strength(st);
                }),
                StatusIs(kInvalid, AllOf(HasSubstr("spec.strength"), HasSubstr("(0, 1]"))))
        << st;
  }
  for (float st : {1.0f, 0.01f}) {
    EXPECT_OK(bad([st](JobSpec& s) {
      s.mutable_init_image()->set_data("x");
      s.set_strength(st);
    }));
  }
  // control: an image like init_image's, scale in [0, 2], 0 <= start < end <= 1, and with
  // init_image a mask (ControlNet inpainting).
  EXPECT_THAT(bad([](JobSpec& s) { s.mutable_control()->set_conditioning_scale(1.0f); }),
              StatusIs(kInvalid, HasSubstr("spec.control.image: is required")));
  EXPECT_THAT(bad([](JobSpec& s) { s.mutable_control()->mutable_image()->set_data(""); }),
              StatusIs(kInvalid, HasSubstr("spec.control.image.data: must not be empty")));
  EXPECT_THAT(bad([](JobSpec& s) {
                s.mutable_control()->mutable_image()->set_data(std::string((16 << 20) + 1, 'x'));
              }),
              StatusIs(kInvalid, HasSubstr("spec.control.image.data: 16.0 MiB is over")));
  for (float sc : {-0.1f, 2.01f, std::nanf("")}) {
    EXPECT_THAT(bad([sc](JobSpec& s) {
                  s.mutable_control()->mutable_image()->set_data("x");
                  s.mutable_control()->set_conditioning_scale(sc);
                }),
                StatusIs(kInvalid, AllOf(HasSubstr("spec.control.conditioning_scale"),
                                         HasSubstr("outside [0, 2]"))))
        << sc;
  }
  for (auto [a, b] : {std::pair{0.5f, 0.5f}, std::pair{-0.1f, 1.0f}, std::pair{0.0f, 1.5f}}) {
    EXPECT_THAT(bad([a = a, b = b](JobSpec& s) {
                  s.mutable_control()->mutable_image()->set_data("x");
                  s.mutable_control()->set_start(a);
                  s.mutable_control()->set_end(b);
                }),
                StatusIs(kInvalid, HasSubstr("0 <= start < end <= 1")))
        << a << " " << b;
  }
  EXPECT_THAT(bad([](JobSpec& s) {
                s.mutable_control()->mutable_image()->set_data("x");
                s.mutable_init_image()->set_data("x");
              }),
              StatusIs(kInvalid, HasSubstr("spec.control: with init_image needs mask_image")));
  EXPECT_OK(bad([](JobSpec& s) {
    s.mutable_control()->mutable_image()->set_data("x");
    s.mutable_control()->set_conditioning_scale(2.0f);
    s.mutable_control()->set_start(0.2f);
    s.mutable_control()->set_end(0.9f);
    s.mutable_init_image()->set_data("x");
    s.mutable_mask_image()->set_data("x");
  }));
  // LoRAs: at most 8, each once, plain names, scale in [-4, 4].
  EXPECT_THAT(bad([](JobSpec& s) {
                for (int i = 0; i < 9; ++i) s.add_loras()->set_name(absl::StrCat("l", i));
              }),
              StatusIs(kInvalid, HasSubstr("spec.loras: 9 LoRAs exceeds the limit of 8")));
  EXPECT_OK(bad([](JobSpec& s) {
    for (int i = 0; i < 8; ++i) s.add_loras()->set_name(absl::StrCat("l", i));
  }));
  EXPECT_THAT(bad([](JobSpec& s) {
                s.add_loras()->set_name("ink");
                s.add_loras()->set_name("ink");
              }),
              StatusIs(kInvalid, HasSubstr("spec.loras[1].name: \"ink\" appears twice")));
  EXPECT_THAT(bad([](JobSpec& s) { s.add_loras(); }),
              StatusIs(kInvalid, HasSubstr("spec.loras[0].name: must not be empty")));
  for (const char* name : {"../ink", "a/b", "a\\b", "..", "tab\there"}) {
    EXPECT_THAT(bad([name](JobSpec& s) { s.add_loras()->set_name(name); }),
                StatusIs(kInvalid, HasSubstr("spec.loras[0].name: must not contain")))
        << name;
  }
  EXPECT_THAT(bad([](JobSpec& s) { s.add_loras()->set_name(std::string(129, 'a')); }),
              StatusIs(kInvalid, HasSubstr("spec.loras[0].name: 129 bytes exceeds the limit of "
                                           "128")));
  EXPECT_THAT(bad([](JobSpec& s) { s.add_loras()->set_name("bad \xff"); }),
              StatusIs(kInvalid, HasSubstr("spec.loras[0].name: is not valid UTF-8")));
  for (float sc : {4.01f, -4.5f, std::nanf(""), -INFINITY}) {
    EXPECT_THAT(bad([sc](JobSpec& s) {
                  s.add_loras()->set_name("a");
                  auto* l = s.add_loras();
                  l->set_name("b");
                  l->set_scale(sc);
                }),
                StatusIs(kInvalid, AllOf(HasSubstr("spec.loras[1].scale"), HasSubstr("[-4, 4]"))))
        << sc;
  }
  for (float sc : {4.0f, -4.0f, 0.0f}) {
    EXPECT_OK(bad([sc](JobSpec& s) {
      auto* l = s.add_loras();
      l->set_name("ink");
      l->set_scale(sc);
    }));
  }
}

TEST(ValidationTest, ImageToImageDefaultsStrengthAndMiBFormat) {
  v1::JobSpec s = Good();
  s.mutable_init_image()->set_data("x");
  ASSERT_OK(ValidateAndNormalizeSpec(Limits{}, "spec", &s));
  ASSERT_TRUE(s.has_strength());
  EXPECT_FLOAT_EQ(s.strength(), kDefaultStrength);
  v1::JobSpec plain = Good();
  ASSERT_OK(ValidateAndNormalizeSpec(Limits{}, "spec", &plain));
  EXPECT_FALSE(plain.has_strength());  // text-to-image specs stay as they were
  EXPECT_EQ(FormatMiB(16 << 20), "16 MiB");
  EXPECT_EQ(FormatMiB((16 << 20) + 1), "16.0 MiB");
  EXPECT_EQ(FormatMiB(1 << 19), "0.5 MiB");
  // A smaller --max-input-bytes is the one named.
  Limits l;
  l.max_input_bytes = 1 << 20;
  v1::JobSpec big = Good();
  big.mutable_init_image()->set_data(std::string((1 << 20) + (1 << 19), 'x'));
  EXPECT_THAT(ValidateAndNormalizeSpec(l, "jobs[2].spec", &big),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("jobs[2].spec.init_image.data: 1.5 MiB is over "
                                 "--max-input-bytes (1 MiB)")));
}

}  // namespace
}  // namespace zfarm::scheduler
