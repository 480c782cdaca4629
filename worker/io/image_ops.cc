#include "worker/io/image_ops.h"

#include <algorithm>
#include <cmath>

namespace zfarm::worker {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr double kSupport = 3.0;  // Lanczos-3

double Sinc(double x) {
  if (x == 0.0) return 1.0;
  x *= M_PI;
  return std::sin(x) / x;
}
double Lanczos(double x) { return (-3.0 <= x && x < 3.0) ? Sinc(x) * Sinc(x / 3.0) : 0.0; }

// Per output pixel: the first input index, the tap count and `ksize` fixed-point weights.
struct Coeffs {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> k;
};

Coeffs Precompute(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = kSupport * filterscale;
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      w[x] = Lanczos((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      c.k[static_cast<size_t>(xx) * c.ksize + x] =
          static_cast<int32_t>(v < 0 ? -0.5 + v * (1 << kPrecisionBits)
                                     : 0.5 + v * (1 << kPrecisionBits));
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

uint8_t Clip8(int64_t v) {
  if (v >= (int64_t{1} << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecisionBits);
}

}  // namespace

std::vector<uint8_t> ResizeLanczos(const std::vector<uint8_t>& src, int width, int height,
                                   int channels, int out_width, int out_height) {
  if (width == out_width && height == out_height) return src;
  const bool horizontal = out_width != width, vertical = out_height != height;
  const Coeffs ch = Precompute(width, out_width);
  Coeffs cv = Precompute(height, out_height);
  // Rows the vertical pass reads: the horizontal pass computes only those.
  const int ybox_first = cv.first[0];
  const int ybox_last = cv.first[out_height - 1] + cv.count[out_height - 1];
  std::vector<uint8_t> cur = src;
  int cur_w = width, cur_h = height;
  if (horizontal) {
    for (int& f : cv.first) f -= ybox_first;
    const int rows = ybox_last - ybox_first;
    std::vector<uint8_t> tmp(static_cast<size_t>(rows) * out_width * channels);
    for (int y = 0; y < rows; ++y) {
      const uint8_t* in = &src[static_cast<size_t>(y + ybox_first) * width * channels];
      uint8_t* out = &tmp[static_cast<size_t>(y) * out_width * channels];
      for (int xx = 0; xx < out_width; ++xx) {
        const int32_t* k = &ch.k[static_cast<size_t>(xx) * ch.ksize];
        for (int c = 0; c < channels; ++c) {
          int64_t ss = int64_t{1} << (kPrecisionBits - 1);
          for (int x = 0; x < ch.count[xx]; ++x) {
            ss += static_cast<int64_t>(in[(x + ch.first[xx]) * channels + c]) * k[x];
          }
          out[xx * channels + c] = Clip8(ss);
        }
      }
    }
    cur = std::move(tmp);
    cur_w = out_width;
    cur_h = rows;
  }
  if (!vertical) return cur;
  (void)cur_h;
  std::vector<uint8_t> out(static_cast<size_t>(out_height) * cur_w * channels);
  for (int yy = 0; yy < out_height; ++yy) {
    const int32_t* k = &cv.k[static_cast<size_t>(yy) * cv.ksize];
    uint8_t* o = &out[static_cast<size_t>(yy) * cur_w * channels];
    for (int xx = 0; xx < cur_w * channels; ++xx) {
      int64_t ss = int64_t{1} << (kPrecisionBits - 1);
      for (int y = 0; y < cv.count[yy]; ++y) {
        ss += static_cast<int64_t>(cur[static_cast<size_t>(y + cv.first[yy]) * cur_w * channels + xx]) * k[y];
      }
      o[xx] = Clip8(ss);
    }
  }
  return out;
}

std::vector<uint8_t> RgbToGrey(const std::vector<uint8_t>& rgb) {
  std::vector<uint8_t> out(rgb.size() / 3);
  for (size_t i = 0; i < out.size(); ++i) {
    const uint32_t v = rgb[3 * i] * 19595u + rgb[3 * i + 1] * 38470u + rgb[3 * i + 2] * 7471u + 0x8000u;
    out[i] = static_cast<uint8_t>(v >> 16);
  }
  return out;
}

}  // namespace zfarm::worker
