#ifndef ZFARM_WORKER_IO_CANNY_H_
#define ZFARM_WORKER_IO_CANNY_H_

// The built-in ControlNet preprocessor: a Canny edge map of a picture, as controlnet_aux's
// CannyDetector makes ControlNet inputs (cv2.Canny on the 8-bit RGB picture, thresholds 100 and
// 200 by default, aperture 3, L1 gradient; OpenCV takes the largest gradient over the channels),
// with the one-channel edges copied to three. Debian's OpenCV imgproc
// (libopencv-imgproc-dev); in a build without it CannyAvailable() is false and CannyRgb()
// answers UNIMPLEMENTED. Torch-free; thread-safe.
//
//   ZFARM_ASSIGN_OR_RETURN(std::vector<uint8_t> edges, CannyRgb(rgb, w, h));

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace zfarm::worker {

inline constexpr double kCannyLow = 100, kCannyHigh = 200;

bool CannyAvailable();

// rgb: height * width * 3 bytes. INVALID_ARGUMENT for a size mismatch or thresholds not
// 0 <= low <= high; UNIMPLEMENTED without OpenCV.
absl::StatusOr<std::vector<uint8_t>> CannyRgb(const std::vector<uint8_t>& rgb, int width,
                                              int height, double low = kCannyLow,
                                              double high = kCannyHigh);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_CANNY_H_
