#ifndef ZFARM_WORKER_IO_JPEG_H_
#define ZFARM_WORKER_IO_JPEG_H_

// JPEG encoding and decoding (libjpeg-turbo, the libjpeg 6.2 API) of 8-bit RGB
// images with their metadata: an EXIF APP1 segment (worker/io/image_metadata.h,
// where AUTOMATIC1111 looks for the parameters) and an XMP APP1 segment. Baseline
// JPEG, 4:2:0 chroma, optimized Huffman tables, no JFIF segment (EXIF comes first,
// as cameras write it). Pure functions; thread-safe.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace zfarm::worker {

// Encodes `rgb` (height * width * 3 bytes, row-major) at `quality` (1..100)
// with the given EXIF block (a TIFF structure, written after "Exif\0\0") and XMP
// packet; either may be empty (left out). INVALID_ARGUMENT for a size mismatch,
// a quality outside [1, 100] or a metadata block over 65,000 bytes (one APP1
// segment's limit); INTERNAL for a libjpeg error.
absl::StatusOr<std::string> EncodeJpeg(const std::vector<uint8_t>& rgb, int width, int height,
                                       int quality, const std::string& exif,
                                       const std::string& xmp);

// A decoded JPEG (tests and tools): RGB pixels and the metadata segments' payloads
// (the EXIF TIFF structure without its "Exif\0\0" prefix, the XMP packet).
struct DecodedJpeg {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
  std::string exif;
  std::string xmp;
};
// INVALID_ARGUMENT naming libjpeg's complaint for bytes that are not a JPEG.
absl::StatusOr<DecodedJpeg> DecodeJpeg(const std::string& bytes);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_JPEG_H_
