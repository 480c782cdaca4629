#ifndef ZFARM_WORKER_IO_WEBP_H_
#define ZFARM_WORKER_IO_WEBP_H_

// WebP encoding and decoding (libwebp, lossy VP8) of 8-bit RGB images with their
// metadata in the RIFF container's EXIF and XMP chunks (libwebpmux); see
// worker/io/image_metadata.h for what the chunks hold. Pure functions; thread-safe.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace zfarm::worker {

// Encodes `rgb` (height * width * 3 bytes, row-major) lossily at `quality`
// (1..100) with an EXIF chunk (a TIFF structure) and an XMP chunk; either may
// be empty (left out). INVALID_ARGUMENT for a size mismatch, a size over WebP's
// 16383 px or a quality outside [1, 100]; INTERNAL for a libwebp error.
absl::StatusOr<std::string> EncodeWebp(const std::vector<uint8_t>& rgb, int width, int height,
                                       int quality, const std::string& exif,
                                       const std::string& xmp);

// A decoded WebP (tests and tools): RGB pixels and the EXIF and XMP chunks
// (empty when absent).
struct DecodedWebp {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
  std::string exif;
  std::string xmp;
};
// INVALID_ARGUMENT for bytes that are not a still WebP image.
absl::StatusOr<DecodedWebp> DecodeWebp(const std::string& bytes);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_WEBP_H_
