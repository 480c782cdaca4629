// JPEG and WebP results with their generation parameters: EXIF UserComment and
// XMP blocks on their own, then whole files encoded by zfarm and decoded again by
// libjpeg / libwebp (pixels, EXIF, XMP), ReadImageInfo over all three formats,
// and `zfarm-worker info` on real files.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/base/job_defaults.h"
#include "proto/base/status_macros.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"
#include "worker/io/image_file.h"
#include "worker/io/image_metadata.h"
#include "worker/io/jpeg.h"
#include "worker/io/webp.h"

namespace zfarm::worker {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::zfarm::base::kDefaultQuality;
using ::zfarm::testing::StatusIs;

// A smooth gradient with a little texture: lossy codecs keep it close.
std::vector<uint8_t> Gradient(int w, int h) {
  std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      uint8_t* p = &rgb[(static_cast<size_t>(y) * w + x) * 3];
      p[0] = static_cast<uint8_t>(x * 255 / (w - 1));
      p[1] = static_cast<uint8_t>(y * 255 / (h - 1));
      p[2] = static_cast<uint8_t>(128 + ((x / 8 + y / 8) % 2) * 32);
    }
  }
  return rgb;
}

// Pseudo-random pixels: the size of a lossy encoding depends strongly on quality.
std::vector<uint8_t> Noise(int w, int h) {
  std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
  uint32_t s = 12345;
  for (uint8_t& v : rgb) {
    s = s * 1664525u + 1013904223u;
    v = static_cast<uint8_t>(s >> 24);
  }
  return rgb;
}

double MeanAbsError(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  if (a.size() != b.size() || a.empty()) return 1e9;
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) sum += std::abs(int{a[i]} - int{b[i]});
  return sum / static_cast<double>(a.size());
}

ImageParameters Params(int w, int h) {
  ImageParameters p;
  p.prompt = "a fox in snow \xE2\x80\x94 \xC3\xBC \xF0\x9F\xA6\x8A <b>&\"quotes\"</b>\nline two";
  p.negative_prompt = "blurry";
  p.guidance = 1.5f;
  p.steps = 6;
  p.seed = 4242;
  p.width = w;
  p.height = h;
  p.device = "cpu";
  p.loras.push_back({"ink", std::string(64, 'a'), 0.7f});
  return p;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(ExifTest, UserCommentRoundTripsUnicode) {
  const std::string text = Params(64, 48).prompt;
  const std::string exif = ExifWithUserComment(text);
  EXPECT_EQ(exif.substr(0, 4), std::string("MM\0*", 4));
  // The comment is "UNICODE\0" then UTF-16BE: 'a' is 00 61.
  const size_t code = exif.find(std::string("UNICODE\0", 8));
  ASSERT_NE(code, std::string::npos);
  EXPECT_EQ(exif.substr(code + 8, 2), std::string("\0a", 2));
  ASSERT_OK_AND_ASSIGN(std::string back, UserCommentFromExif(exif));
  EXPECT_EQ(back, text);
  // With the JPEG APP1 prefix too.
  ASSERT_OK_AND_ASSIGN(back, UserCommentFromExif(std::string("Exif\0\0", 6) + exif));
  EXPECT_EQ(back, text);
}

TEST(ExifTest, ReadsLittleEndianAsciiComments) {
  // A foreign writer's block: "II", IFD0 -> Exif IFD -> UserComment in ASCII.
  std::string b = std::string("II*\0", 4) + std::string("\x08\0\0\0", 4);
  b += std::string("\x01\0", 2) + std::string("\x69\x87\x04\0\x01\0\0\0\x1a\0\0\0", 12) +
       std::string(4, '\0');
  b += std::string("\x01\0", 2) + std::string("\x86\x92\x07\0\x0d\0\0\0\x2c\0\0\0", 12) +
       std::string(4, '\0');
  b += std::string("ASCII\0\0\0", 8) + "hello";
  ASSERT_OK_AND_ASSIGN(std::string text, UserCommentFromExif(b));
  EXPECT_EQ(text, "hello");
}

TEST(ExifTest, MalformedBlocksAreRefused) {
  const std::string exif = ExifWithUserComment("some text");
  EXPECT_THAT(UserCommentFromExif(exif.substr(0, exif.size() - 4)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("past the end")));
  EXPECT_THAT(UserCommentFromExif("XX\0*garbage"), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
  // IFD0 without an Exif IFD pointer (count 0).
  const std::string empty = std::string("MM\0*\0\0\0\x08\0\0\0\0\0\0", 14);
  EXPECT_THAT(UserCommentFromExif(empty), StatusIs(absl::StatusCode::kNotFound, ::testing::_));
}

TEST(XmpTest, RoundTripEscapesMarkup) {
  const std::string text = "a <script>alert(1)</script> & \"x\"\r\nnext";
  const std::string json = R"({"prompt":"<b>&amp;</b>","seed":1})";
  const std::string xmp = XmpPacket(text, json);
  EXPECT_THAT(xmp, Not(HasSubstr("<script>")));
  ASSERT_OK_AND_ASSIGN(XmpFields f, ParseXmp(xmp));
  EXPECT_EQ(f.parameters, text);
  EXPECT_EQ(f.json, json);
  EXPECT_THAT(ParseXmp("<html/>"), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
}

TEST(ImageFormatTest, NamesExtensionsAndMediaTypes) {
  ASSERT_OK_AND_ASSIGN(ImageFormat f, ParseImageFormat("JPG"));
  EXPECT_EQ(f, ImageFormat::kJpeg);
  ASSERT_OK_AND_ASSIGN(f, ParseImageFormat("webp"));
  EXPECT_EQ(ImageFormatExtension(f), ".webp");
  EXPECT_EQ(ImageMediaType(f), "image/webp");
  EXPECT_EQ(ImageFormatExtension(ImageFormat::kJpeg), ".jpg");
  EXPECT_EQ(ImageMediaType(ImageFormat::kPng), "image/png");
  EXPECT_THAT(ParseImageFormat("gif", "--output-format"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--output-format")));
}

// Decodes with libjpeg or libwebp: pixels plus the EXIF and XMP blocks.
struct Decoded {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
  std::string exif, xmp;
};
absl::StatusOr<Decoded> DecodeLossy(ImageFormat f, const std::string& bytes) {
  if (f == ImageFormat::kJpeg) {
    ZFARM_ASSIGN_OR_RETURN(DecodedJpeg d, DecodeJpeg(bytes));
    return Decoded{d.width, d.height, d.rgb, d.exif, d.xmp};
  }
  ZFARM_ASSIGN_OR_RETURN(DecodedWebp d, DecodeWebp(bytes));
  return Decoded{d.width, d.height, d.rgb, d.exif, d.xmp};
}

TEST(LossyFormatsTest, RoundTripWithExifAndXmp) {
  const int w = 96, h = 64;
  const std::vector<uint8_t> rgb = Gradient(w, h);
  const ImageParameters p = Params(w, h);
  for (ImageFormat f : {ImageFormat::kJpeg, ImageFormat::kWebp}) {
    SCOPED_TRACE(std::string(ImageFormatName(f)));
    ASSERT_OK_AND_ASSIGN(std::string bytes, EncodeImage(rgb, p, f, 95));
    if (f == ImageFormat::kJpeg) {
      // SOI, then the EXIF APP1 segment first (no JFIF).
      EXPECT_EQ(bytes.substr(0, 4), "\xFF\xD8\xFF\xE1");
      EXPECT_EQ(bytes.substr(6, 6), std::string("Exif\0\0", 6));
    } else {
      // RIFF/WEBP, an extended (VP8X) file, so readers look for the metadata chunks.
      EXPECT_EQ(bytes.substr(0, 4), "RIFF");
      EXPECT_EQ(bytes.substr(8, 8), "WEBPVP8X");
    }
    ASSERT_OK_AND_ASSIGN(Decoded d, DecodeLossy(f, bytes));
    EXPECT_EQ(d.width, w);
    EXPECT_EQ(d.height, h);
    EXPECT_LT(MeanAbsError(d.rgb, rgb), f == ImageFormat::kJpeg ? 3.0 : 4.0);
    ASSERT_OK_AND_ASSIGN(std::string comment, UserCommentFromExif(d.exif));
    EXPECT_EQ(comment, A1111Parameters(p));
    EXPECT_THAT(comment, HasSubstr("Seed: 4242"));
    ASSERT_OK_AND_ASSIGN(XmpFields x, ParseXmp(d.xmp));
    EXPECT_EQ(x.parameters, A1111Parameters(p));
    EXPECT_EQ(x.json, ParametersJson(p));
  }
  EXPECT_THAT(DecodeWebp("RIFF\0\0\0\0WEBPjunk"),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
  EXPECT_THAT(DecodeJpeg("\xFF\xD8\xFF\xE0 cut"),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
}

TEST(ImageFormatTest, QualityChangesTheEncoding) {
  const int w = 64, h = 64;
  const std::vector<uint8_t> rgb = Noise(w, h);
  const ImageParameters p = Params(w, h);
  for (ImageFormat f : {ImageFormat::kJpeg, ImageFormat::kWebp}) {
    ASSERT_OK_AND_ASSIGN(std::string low, EncodeImage(rgb, p, f, 10));
    ASSERT_OK_AND_ASSIGN(std::string high, EncodeImage(rgb, p, f, 95));
    ASSERT_OK_AND_ASSIGN(std::string dflt, EncodeImage(rgb, p, f, 0));
    ASSERT_OK_AND_ASSIGN(std::string ninety, EncodeImage(rgb, p, f, kDefaultQuality));
    EXPECT_LT(low.size() * 3 / 2, high.size()) << ImageFormatName(f);
    EXPECT_EQ(dflt, ninety) << ImageFormatName(f);
  }
}

TEST(ImageFormatTest, BadQualityIsRefusedNamingTheField) {
  const std::vector<uint8_t> rgb = Gradient(32, 32);
  const ImageParameters p = Params(32, 32);
  for (int q : {-1, 101}) {
    EXPECT_THAT(EncodeImage(rgb, p, ImageFormat::kJpeg, q),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("quality")));
    EXPECT_THAT(EncodeImage(rgb, p, ImageFormat::kWebp, q),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("[1, 100]")));
  }
  EXPECT_THAT(EncodeImage(rgb, p, ImageFormat::kPng, 50),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("lossless")));
  EXPECT_THAT(EncodeJpeg(std::vector<uint8_t>(10), 2, 2, 90, "", ""),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
}

TEST(ImageFormatTest, WriteImageAndReadInfoForEveryFormat) {
  const int w = 48, h = 32;
  const std::vector<uint8_t> rgb = Gradient(w, h);
  const ImageParameters p = Params(w, h);
  const std::string dir = std::string(::testing::TempDir()) + "/image_formats_write";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  for (ImageFormat f : {ImageFormat::kPng, ImageFormat::kJpeg, ImageFormat::kWebp}) {
    SCOPED_TRACE(std::string(ImageFormatName(f)));
    const std::string path = dir + "/out" + std::string(ImageFormatExtension(f));
    const int q = f == ImageFormat::kPng ? 0 : 80;
    ASSERT_OK(WriteImage(path, rgb, p, f, q));
    const std::string bytes = ReadAll(path);
    // The file is exactly the encoding (its sha256 is the encoding's).
    ASSERT_OK_AND_ASSIGN(std::string encoded, EncodeImage(rgb, p, f, q));
    EXPECT_EQ(bytes, encoded);
    ASSERT_OK_AND_ASSIGN(ImageInfo info, ReadImageInfo(bytes));
    EXPECT_EQ(info.format, f);
    EXPECT_EQ(info.width, w);
    EXPECT_EQ(info.height, h);
    EXPECT_EQ(info.parameters, A1111Parameters(p));
    EXPECT_EQ(info.json, ParametersJson(p));
  }
  // Only the three files: no temporary file is left behind.
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 3);
  EXPECT_THAT(ReadImageInfo("GIF89a...."), StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
  EXPECT_THAT(ReadImageInfo(std::string("\xFF\xD8\xFF\xE0 truncated", 14)),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
}

#ifdef ZFARM_WORKER_BIN
TEST(InfoCommandTest, PrintsTheParametersOfEachFormat) {
  const int w = 48, h = 32;
  const ImageParameters p = Params(w, h);
  const std::string dir = std::string(::testing::TempDir()) + "/image_formats_info";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  for (ImageFormat f : {ImageFormat::kPng, ImageFormat::kJpeg, ImageFormat::kWebp}) {
    SCOPED_TRACE(std::string(ImageFormatName(f)));
    const std::string path = dir + "/out" + std::string(ImageFormatExtension(f));
    ASSERT_OK(WriteImage(path, Gradient(w, h), p, f, 0));
    zfarm::testing::CommandResult r =
        zfarm::testing::RunCommand(std::string(ZFARM_WORKER_BIN) + " info --json " + path);
    ASSERT_EQ(r.exit_code, 0) << r.out;
    nlohmann::json j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
    EXPECT_EQ(j["format"], std::string(ImageFormatName(f)));
    EXPECT_EQ(j["width"], w);
    EXPECT_EQ(j["parameters"], A1111Parameters(p));
    EXPECT_EQ(j["zfarm"]["seed"], 4242);
    EXPECT_EQ(j["zfarm"]["loras"][0]["name"], "ink");
    if (f != ImageFormat::kWebp) continue;  // the text form once (each run loads libtorch)
    r = zfarm::testing::RunCommand(std::string(ZFARM_WORKER_BIN) + " info " + path);
    ASSERT_EQ(r.exit_code, 0) << r.out;
    EXPECT_THAT(r.out, HasSubstr("Seed: 4242"));
    EXPECT_THAT(r.out, HasSubstr("format: webp (image/webp), 48x32"));
  }
  const std::string junk = dir + "/junk.jpg";
  std::ofstream(junk) << "not an image";
  zfarm::testing::CommandResult r =
      zfarm::testing::RunCommand(std::string(ZFARM_WORKER_BIN) + " info " + junk + " 2>&1");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("not a PNG, JPEG or WebP"));
}
#endif

}  // namespace
}  // namespace zfarm::worker
