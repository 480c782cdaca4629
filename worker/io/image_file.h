#ifndef ZFARM_WORKER_IO_IMAGE_FILE_H_
#define ZFARM_WORKER_IO_IMAGE_FILE_H_

// Result files in any of zfarm's output formats, with the generation parameters
// where AUTOMATIC1111 and ComfyUI users look for them:
//
//   format  extension  parameters text (A1111)        zfarm JSON
//   png     .png       tEXt/iTXt "parameters"          iTXt "zfarm"
//   jpeg    .jpg       EXIF UserComment (APP1)         XMP zfarm:parameters (APP1)
//   webp    .webp      EXIF UserComment (EXIF chunk)   XMP zfarm:parameters (XMP chunk)
//
// (JPEG and WebP also carry the text as XMP dc:description.) Pure functions
// except WriteImage; all thread-safe.
//
// Example:
//   ZFARM_ASSIGN_OR_RETURN(ImageFormat f, ParseImageFormat("webp"));
//   ZFARM_RETURN_IF_ERROR(WriteImage("out.webp", rgb, params, f, /*quality=*/0));
//   ZFARM_ASSIGN_OR_RETURN(ImageInfo info, ReadImageInfo(bytes));  // info.parameters

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/base/job_defaults.h"
#include "worker/io/image_parameters.h"

namespace zfarm::worker {

enum class ImageFormat { kPng, kJpeg, kWebp };

// "png", "jpeg" (or "jpg"), "webp", case-insensitive. INVALID_ARGUMENT naming
// `field` and the accepted names otherwise.
absl::StatusOr<ImageFormat> ParseImageFormat(absl::string_view name,
                                             absl::string_view field = "output_format");
// "png", "jpeg", "webp".
absl::string_view ImageFormatName(ImageFormat f);
// ".png", ".jpg", ".webp".
absl::string_view ImageFormatExtension(ImageFormat f);
// "image/png", "image/jpeg", "image/webp".
absl::string_view ImageMediaType(ImageFormat f);

// Encodes 8-bit RGB (p.height * p.width * 3 bytes) in `format` with the
// parameters of `p`. `quality`: 1..100 for JPEG and WebP, 0 = kDefaultQuality;
// must be 0 for PNG (lossless). INVALID_ARGUMENT naming "quality" otherwise, or
// the encoder's size errors; INTERNAL for a codec failure.
absl::StatusOr<std::string> EncodeImage(const std::vector<uint8_t>& rgb, const ImageParameters& p,
                                        ImageFormat format, int quality);

// EncodeImage, written to `path` all or nothing (base::WriteFileAtomically:
// an exclusive temp file in the same folder, fsync, rename, folder fsync).
absl::Status WriteImage(const std::string& path, const std::vector<uint8_t>& rgb,
                        const ImageParameters& p, ImageFormat format, int quality);

// The format of encoded bytes from their signature. INVALID_ARGUMENT when they
// are none of PNG, JPEG, WebP.
absl::StatusOr<ImageFormat> SniffImageFormat(absl::string_view bytes);

// What a result file says about itself.
struct ImageInfo {
  ImageFormat format = ImageFormat::kPng;
  int width = 0, height = 0;
  std::string parameters;  // the A1111 text; empty if the file has none
  std::string json;        // zfarm's JSON; empty if the file has none
};
// Decodes `bytes` (any of the three formats) and reads the parameters back.
// INVALID_ARGUMENT for bytes that are no such image or that do not decode.
absl::StatusOr<ImageInfo> ReadImageInfo(const std::string& bytes);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_IMAGE_FILE_H_
