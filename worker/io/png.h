#ifndef ZFARM_WORKER_IO_PNG_H_
#define ZFARM_WORKER_IO_PNG_H_

// PNG encoding (libpng) of generated images with their generation parameters
// in text chunks: "parameters" in the AUTOMATIC1111 style, which image viewers
// and web UIs display, and "zfarm" with the same parameters as JSON
// (worker/io/image_parameters.h). Torch-free.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/io/image_parameters.h"

namespace zfarm::worker {

// How EncodePng compresses. The defaults (zlib level 1, Z_RLE, libpng's adaptive
// row filter) were chosen on the H200 host at 1024x1024 (tests/bench/RESULTS.md,
// "PNG encoding"): 2.2x faster than libpng's defaults (level 6, Z_FILTERED) on a
// rendered image at the same size, 14x faster and 5 % smaller on a smooth one.
struct PngOptions {
  // zlib level 0..9 (0 = stored, 1 = fastest, 9 = smallest); -1 = zlib's default (6).
  int zlib_level = 1;
  // Row filter: kAdaptive lets libpng pick one of the five per row; the others
  // force one filter for every row.
  enum class Filter { kAdaptive, kNone, kSub, kUp, kAverage, kPaeth };
  Filter filter = Filter::kAdaptive;
  // zlib strategy: true = Z_RLE (run-length matches only: fast, and on filtered
  // image rows about as small as the default), false = Z_FILTERED (libpng's default).
  bool rle = true;
};

// Encodes 8-bit RGB (height * width * 3 bytes, row-major) as PNG bytes with
// the given text chunks (key, value; values are stored as UTF-8 iTXt).
// INVALID_ARGUMENT for a size mismatch or an option out of range; INTERNAL
// for a libpng error.
absl::StatusOr<std::string> EncodePng(const std::vector<uint8_t>& rgb, int width, int height,
                                      const std::vector<std::pair<std::string, std::string>>& text,
                                      const PngOptions& options);
// EncodePng with PngOptions{}.
absl::StatusOr<std::string> EncodePng(const std::vector<uint8_t>& rgb, int width, int height,
                                      const std::vector<std::pair<std::string, std::string>>& text);

// Decodes a PNG (for tests and tools): RGB bytes and its text chunks.
struct DecodedPng {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
  std::vector<std::pair<std::string, std::string>> text;
};
absl::StatusOr<DecodedPng> DecodePng(const std::string& bytes);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_PNG_H_
