#include "worker/io/image_file.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "proto/base/files.h"
#include "proto/base/job_defaults.h"
#include "worker/io/image_metadata.h"
#include "worker/io/jpeg.h"
#include "worker/io/png.h"
#include "worker/io/webp.h"

namespace zfarm::worker {
namespace {

using ::zfarm::base::kDefaultQuality;

// Fills info->parameters / json from EXIF and XMP blocks: the EXIF UserComment
// wins for the text (that is what A1111 reads), XMP supplies the JSON.
void FromExifAndXmp(const std::string& exif, const std::string& xmp, ImageInfo* info) {
  if (!exif.empty()) {
    if (absl::StatusOr<std::string> text = UserCommentFromExif(exif); text.ok()) {
      info->parameters = *text;
    }
  }
  if (!xmp.empty()) {
    if (absl::StatusOr<XmpFields> f = ParseXmp(xmp); f.ok()) {
      if (info->parameters.empty()) info->parameters = f->parameters;
      info->json = f->json;
    }
  }
}

}  // namespace

absl::StatusOr<ImageFormat> ParseImageFormat(absl::string_view name, absl::string_view field) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "png") return ImageFormat::kPng;
  if (n == "jpeg" || n == "jpg") return ImageFormat::kJpeg;
  if (n == "webp") return ImageFormat::kWebp;
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": unknown format \"", name, "\" (png, jpeg or webp)"));
}

namespace {

struct FormatNames {
  ImageFormat format;
  absl::string_view name, extension, media_type;
};
constexpr FormatNames kFormats[] = {{ImageFormat::kPng, "png", ".png", "image/png"},
                                    {ImageFormat::kJpeg, "jpeg", ".jpg", "image/jpeg"},
                                    {ImageFormat::kWebp, "webp", ".webp", "image/webp"}};

const FormatNames& NamesOf(ImageFormat f) {
  for (const FormatNames& n : kFormats) {
    if (n.format == f) return n;
  }
  return kFormats[0];
}

}  // namespace

absl::string_view ImageFormatName(ImageFormat f) { return NamesOf(f).name; }
absl::string_view ImageFormatExtension(ImageFormat f) { return NamesOf(f).extension; }
absl::string_view ImageMediaType(ImageFormat f) { return NamesOf(f).media_type; }

absl::StatusOr<std::string> EncodeImage(const std::vector<uint8_t>& rgb, const ImageParameters& p,
                                        ImageFormat format, int quality) {
  const std::string text = A1111Parameters(p);
  const std::string json = ParametersJson(p);
  if (format == ImageFormat::kPng) {
    if (quality != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("quality: ", quality, " given for png, which is lossless (leave it 0)"));
    }
    return EncodePng(rgb, p.width, p.height, {{"parameters", text}, {"zfarm", json}});
  }
  if (quality == 0) quality = kDefaultQuality;
  if (quality < 1 || quality > 100) {
    return absl::InvalidArgumentError(absl::StrCat("quality: ", quality, " is outside [1, 100]"));
  }
  const std::string exif = ExifWithUserComment(text);
  const std::string xmp = XmpPacket(text, json);
  if (format == ImageFormat::kJpeg) return EncodeJpeg(rgb, p.width, p.height, quality, exif, xmp);
  return EncodeWebp(rgb, p.width, p.height, quality, exif, xmp);
}

absl::Status WriteImage(const std::string& path, const std::vector<uint8_t>& rgb,
                        const ImageParameters& p, ImageFormat format, int quality) {
  absl::StatusOr<std::string> bytes = EncodeImage(rgb, p, format, quality);
  if (!bytes.ok()) return bytes.status();
  return base::WriteFileAtomically(path, *bytes);
}

absl::StatusOr<ImageFormat> SniffImageFormat(absl::string_view bytes) {
  if (absl::StartsWith(bytes, "\x89PNG\r\n\x1a\n")) return ImageFormat::kPng;
  if (absl::StartsWith(bytes, "\xFF\xD8\xFF")) return ImageFormat::kJpeg;
  if (bytes.size() >= 12 && absl::StartsWith(bytes, "RIFF") && bytes.substr(8, 4) == "WEBP") {
    return ImageFormat::kWebp;
  }
  return absl::InvalidArgumentError("not a PNG, JPEG or WebP file");
}

absl::StatusOr<ImageInfo> ReadImageInfo(const std::string& bytes) {
  absl::StatusOr<ImageFormat> format = SniffImageFormat(bytes);
  if (!format.ok()) return format.status();
  ImageInfo info;
  info.format = *format;
  switch (*format) {
    case ImageFormat::kPng: {
      absl::StatusOr<DecodedPng> d = DecodePng(bytes);
      if (!d.ok()) return d.status();
      info.width = d->width;
      info.height = d->height;
      for (const auto& [key, value] : d->text) {
        if (key == "parameters") info.parameters = value;
        if (key == "zfarm") info.json = value;
      }
      break;
    }
    case ImageFormat::kJpeg: {
      absl::StatusOr<DecodedJpeg> d = DecodeJpeg(bytes);
      if (!d.ok()) return d.status();
      info.width = d->width;
      info.height = d->height;
      FromExifAndXmp(d->exif, d->xmp, &info);
      break;
    }
    case ImageFormat::kWebp: {
      absl::StatusOr<DecodedWebp> d = DecodeWebp(bytes);
      if (!d.ok()) return d.status();
      info.width = d->width;
      info.height = d->height;
      FromExifAndXmp(d->exif, d->xmp, &info);
      break;
    }
  }
  return info;
}

}  // namespace zfarm::worker
