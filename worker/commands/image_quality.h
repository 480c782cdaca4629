#ifndef ZFARM_WORKER_COMMANDS_IMAGE_QUALITY_H_
#define ZFARM_WORKER_COMMANDS_IMAGE_QUALITY_H_

// How far apart two renders of one prompt are (`zfarm-worker compare`): PSNR and SSIM
// of 8-bit RGB pictures of the same size. Pure functions; thread-safe; torch-free.
//
// SSIM is Wang et al. 2004 as scikit-image computes it with gaussian_weights=True,
// sigma=1.5, use_sample_covariance=False, data_range=255: an 11x11 Gaussian window
// (radius 5), K1 = 0.01, K2 = 0.03, the SSIM map averaged over the positions where the
// whole window fits, per channel, then over the three channels. (Debian's OpenCV has it
// only in the contrib "quality" module, libopencv-contrib-dev, whose ~20 -dev
// dependencies would not fit the GPU bundle; the formula is a few lines.)

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace zfarm::worker {

// 10 log10(255^2 / MSE) over all bytes; +infinity for identical pictures.
// INVALID_ARGUMENT when the sizes differ or do not match width x height x 3.
absl::StatusOr<double> Psnr(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                            int width, int height);
// Mean SSIM in [-1, 1] (1 for identical pictures). INVALID_ARGUMENT as Psnr, or for a
// side shorter than the 11-pixel window.
absl::StatusOr<double> Ssim(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                            int width, int height);

// a and b (RGB HWC, width x height each) next to each other: width 2 * width.
std::vector<uint8_t> SideBySide(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                                int width, int height);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_COMMANDS_IMAGE_QUALITY_H_
