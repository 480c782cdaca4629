#ifndef ZFARM_WORKER_PIPELINE_PNG_H_
#define ZFARM_WORKER_PIPELINE_PNG_H_

// PNG encoding (libpng) of generated images with their generation parameters
// in tEXt chunks: "parameters" in the AUTOMATIC1111 style, which image viewers
// and web UIs display, and "zfarm" with the same parameters as JSON.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace zfarm::worker {

// A LoRA an image was rendered with.
struct LoraUse {
  std::string name;
  std::string sha256;  // lower-case hex of the file
  float scale = 1.0f;
};

// What produced an image (written into the text chunks).
struct ImageParameters {
  std::string prompt;
  std::string negative_prompt;
  int steps = 8;
  float guidance = 0.0f;
  uint64_t seed = 0;
  int width = 0, height = 0;
  std::string model = "z-image-turbo";
  std::string device;
  bool prompt_truncated = false;
  int prompt_tokens = 0;
  std::vector<LoraUse> loras;  // in the order applied
};

// "prompt\nNegative prompt: ...\nSteps: 8, Sampler: Euler, CFG scale: 0, Seed: 42,
//  Size: 1024x1024, Model: z-image-turbo" (the negative line only when non-empty).
// With LoRAs, as AUTOMATIC1111 writes them: " <lora:NAME:SCALE>" after the prompt and
// `, Lora hashes: "NAME: SHA12, ..."` (the first 12 hex digits of each file's sha256).
std::string A1111Parameters(const ImageParameters& p);
// The JSON object stored in the "zfarm" chunk ("loras": [{name, sha256, scale}] with LoRAs).
std::string ParametersJson(const ImageParameters& p);

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

// EncodePng with the "parameters" and "zfarm" chunks of `p`, written to `path`
// atomically (files::WriteFileAtomically: an exclusive temp file in the same folder,
// fsync, rename).
absl::Status WritePng(const std::string& path, const std::vector<uint8_t>& rgb,
                      const ImageParameters& p);

// Decodes a PNG (for tests and tools): RGB bytes and its text chunks.
struct DecodedPng {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
  std::vector<std::pair<std::string, std::string>> text;
};
absl::StatusOr<DecodedPng> DecodePng(const std::string& bytes);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_PIPELINE_PNG_H_
