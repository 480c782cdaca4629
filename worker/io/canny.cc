#include "worker/io/canny.h"

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#ifdef ZFARM_HAVE_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#endif

namespace zfarm::worker {

bool CannyAvailable() {
#ifdef ZFARM_HAVE_OPENCV
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::vector<uint8_t>> CannyRgb(const std::vector<uint8_t>& rgb, int width,
                                              int height, double low, double high) {
  if (width < 1 || height < 1 || rgb.size() != static_cast<size_t>(width) * height * 3) {
    return absl::InvalidArgumentError(absl::StrCat("canny: ", width, "x", height, " with ",
                                                   rgb.size(), " bytes; need width*height*3"));
  }
  if (!(low >= 0 && low <= high)) {
    return absl::InvalidArgumentError(
        absl::StrCat("canny: thresholds must satisfy 0 <= low <= high, got ", low, " and ", high));
  }
#ifdef ZFARM_HAVE_OPENCV
  try {
    const cv::Mat in(height, width, CV_8UC3, const_cast<uint8_t*>(rgb.data()));
    cv::Mat edges;
    cv::Canny(in, edges, low, high, 3, false);
    std::vector<uint8_t> out(rgb.size());
    for (int y = 0; y < height; ++y) {
      const uint8_t* row = edges.ptr<uint8_t>(y);
      for (int x = 0; x < width; ++x) {
        uint8_t* p = &out[(static_cast<size_t>(y) * width + x) * 3];
        p[0] = p[1] = p[2] = row[x];
      }
    }
    return out;
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat("canny: ", e.what()));
  }
#else
  return absl::UnimplementedError(
      "canny: this build has no OpenCV (install libopencv-imgproc-dev and rebuild)");
#endif
}

}  // namespace zfarm::worker
