#ifndef ZFARM_WORKER_IO_IMAGE_OPS_H_
#define ZFARM_WORKER_IO_IMAGE_OPS_H_

// File: image_ops.h
//
// 8-bit pixel operations of the image-to-image preprocessing, each the exact integer
// arithmetic of the Pillow call diffusers' VaeImageProcessor makes, so that an input
// picture becomes the same tensor here as in the reference:
//   - ResizeLanczos: Image.resize((w, h), Image.LANCZOS) (Pillow's two-pass separable
//     convolution: horizontal pass first, 8-bit intermediate, 22-bit fixed-point weights);
//   - RgbToGrey: Image.convert("L") (ITU-R 601-2 luma, 16-bit fixed point).
// Torch-free. Thread-safety: pure functions.

#include <cstdint>
#include <vector>

namespace zfarm::worker {

// Resizes `src` (height * width * channels bytes, interleaved, row-major) to
// out_width x out_height with Pillow's Lanczos (a = 3) filter. The same size returns a
// copy (as Pillow does). Sizes must be >= 1.
std::vector<uint8_t> ResizeLanczos(const std::vector<uint8_t>& src, int width, int height,
                                   int channels, int out_width, int out_height);

// RGB8 -> one grey byte per pixel: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16.
std::vector<uint8_t> RgbToGrey(const std::vector<uint8_t>& rgb);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_IMAGE_OPS_H_
