#include "worker/commands/image_quality.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace zfarm::worker {
namespace {

constexpr int kRadius = 5;  // 11 taps: skimage's truncate=3.5 at sigma 1.5
constexpr double kSigma = 1.5;

absl::Status CheckSizes(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, int width,
                        int height) {
  const size_t want = static_cast<size_t>(width) * height * 3;
  if (width <= 0 || height <= 0 || a.size() != want || b.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat("pictures of ", a.size(), " and ", b.size(),
                                                   " bytes for ", width, "x", height, " RGB"));
  }
  return absl::OkStatus();
}

// "Valid" separable Gaussian filter of one plane [h, w] -> [h - 10, w - 10].
std::vector<double> Blur(const std::vector<double>& in, int w, int h) {
  double k[2 * kRadius + 1], sum = 0;
  for (int i = -kRadius; i <= kRadius; ++i) {
    k[i + kRadius] = std::exp(-i * i / (2 * kSigma * kSigma));
    sum += k[i + kRadius];
  }
  for (double& v : k) v /= sum;
  const int ow = w - 2 * kRadius, oh = h - 2 * kRadius;
  std::vector<double> rows(static_cast<size_t>(h) * ow), out(static_cast<size_t>(oh) * ow);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < ow; ++x) {
      double s = 0;
      for (int t = 0; t <= 2 * kRadius; ++t) s += k[t] * in[static_cast<size_t>(y) * w + x + t];
      rows[static_cast<size_t>(y) * ow + x] = s;
    }
  }
  for (int y = 0; y < oh; ++y) {
    for (int x = 0; x < ow; ++x) {
      double s = 0;
      for (int t = 0; t <= 2 * kRadius; ++t) s += k[t] * rows[static_cast<size_t>(y + t) * ow + x];
      out[static_cast<size_t>(y) * ow + x] = s;
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<double> Psnr(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                            int width, int height) {
  if (absl::Status s = CheckSizes(a, b, width, height); !s.ok()) return s;
  double se = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    se += d * d;
  }
  if (se == 0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(255.0 * 255.0 / (se / static_cast<double>(a.size())));
}

absl::StatusOr<double> Ssim(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                            int width, int height) {
  if (absl::Status s = CheckSizes(a, b, width, height); !s.ok()) return s;
  if (width < 2 * kRadius + 1 || height < 2 * kRadius + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("SSIM needs pictures of at least 11x11 pixels, got ", width, "x", height));
  }
  const double c1 = std::pow(0.01 * 255, 2), c2 = std::pow(0.03 * 255, 2);
  const size_t n = static_cast<size_t>(width) * height;
  double total = 0;
  for (int c = 0; c < 3; ++c) {
    std::vector<double> x(n), y(n), xx(n), yy(n), xy(n);
    for (size_t i = 0; i < n; ++i) {
      x[i] = a[i * 3 + c];
      y[i] = b[i * 3 + c];
      xx[i] = x[i] * x[i];
      yy[i] = y[i] * y[i];
      xy[i] = x[i] * y[i];
    }
    const std::vector<double> mx = Blur(x, width, height), my = Blur(y, width, height),
                              sxx = Blur(xx, width, height), syy = Blur(yy, width, height),
                              sxy = Blur(xy, width, height);
    double sum = 0;
    for (size_t i = 0; i < mx.size(); ++i) {
      const double vx = sxx[i] - mx[i] * mx[i], vy = syy[i] - my[i] * my[i],
                   cov = sxy[i] - mx[i] * my[i];
      sum += (2 * mx[i] * my[i] + c1) * (2 * cov + c2) /
             ((mx[i] * mx[i] + my[i] * my[i] + c1) * (vx + vy + c2));
    }
    total += sum / static_cast<double>(mx.size());
  }
  return total / 3;
}

std::vector<uint8_t> SideBySide(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                                int width, int height) {
  std::vector<uint8_t> out(static_cast<size_t>(width) * height * 6);
  const size_t row = static_cast<size_t>(width) * 3;
  for (int y = 0; y < height; ++y) {
    std::copy_n(a.begin() + y * row, row, out.begin() + 2 * y * row);
    std::copy_n(b.begin() + y * row, row, out.begin() + (2 * y + 1) * row);
  }
  return out;
}

}  // namespace zfarm::worker
