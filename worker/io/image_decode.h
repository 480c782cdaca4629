#ifndef ZFARM_WORKER_IO_IMAGE_DECODE_H_
#define ZFARM_WORKER_IO_IMAGE_DECODE_H_

// File: image_decode.h
//
// Input pictures of image-to-image and inpainting jobs: PNG (libpng) and JPEG
// (libjpeg-turbo) bytes probed for their format and size, and decoded to 8-bit RGB.
// Torch-free and gRPC-free: the scheduler probes requests with it at submit, the worker
// decodes them.
//
// The decoded pixels are the ones PIL's `Image.open(f).convert("RGB")` gives (what
// diffusers' pipelines are fed): alpha is dropped (not composited), palettes and grey
// are expanded, 16-bit samples keep their high byte, no gamma or colour-profile
// conversion is applied, and JPEG uses libjpeg's default (islow DCT, fancy upsampling).
// EXIF orientation is not applied (as PIL does not without ImageOps.exif_transpose).
//
// Every error is INVALID_ARGUMENT and starts with the caller's name for the input
// (`what`, e.g. "init_image"), so a failed job says which of its inputs was bad.
//
// Thread-safety: the functions are reentrant; they keep no state.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace zfarm::worker {

enum class PictureFormat { kPng, kJpeg };

// "PNG" / "JPEG".
const char* PictureFormatName(PictureFormat f);

struct PictureInfo {
  PictureFormat format = PictureFormat::kPng;
  int width = 0;
  int height = 0;
};

// Limits checked before any pixel is decoded. 0 = no limit.
struct PictureLimits {
  int max_side = 8192;                 // largest accepted width or height
  uint64_t max_pixels = 8192ull * 8192;  // largest accepted width * height
};

// The format and size from the header alone (PNG: the IHDR chunk; JPEG: the first
// start-of-frame marker), without decoding pixels. INVALID_ARGUMENT naming `what` for
// bytes that are neither format, a damaged or truncated header, a zero size, or a size
// over `limits` (the message names the limit).
absl::StatusOr<PictureInfo> ProbeImage(std::string_view bytes, std::string_view what,
                                     const PictureLimits& limits = PictureLimits{});

struct DecodedImage {
  PictureFormat format = PictureFormat::kPng;
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // height * width * 3 bytes, row-major, top row first
};

// Probes (as above), then decodes the whole image to RGB8. INVALID_ARGUMENT naming
// `what` for everything ProbeImage refuses, for pixel data that is damaged or ends early
// (a truncated file is an error, never a partly grey picture), and for JPEG colour
// spaces other than grey, RGB and YCbCr (CMYK/YCCK).
absl::StatusOr<DecodedImage> DecodeImage(std::string_view bytes, std::string_view what,
                                         const PictureLimits& limits = PictureLimits{});

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_IMAGE_DECODE_H_
