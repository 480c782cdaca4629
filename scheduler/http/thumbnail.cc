#include "scheduler/http/thumbnail.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "proto/base/status_macros.h"
#include "worker/io/image_file.h"
#include "worker/io/jpeg.h"
#include "worker/io/png.h"
#include "worker/io/webp.h"

namespace zfarm::scheduler::http {
namespace {

struct Rgb {
  int width = 0, height = 0;
  std::vector<uint8_t> px;
};

absl::StatusOr<Rgb> Decode(const std::string& bytes) {
  using zfarm::worker::ImageFormat;
  ZFARM_ASSIGN_OR_RETURN(ImageFormat format, zfarm::worker::SniffImageFormat(bytes));
  Rgb out;
  if (format == ImageFormat::kPng) {
    ZFARM_ASSIGN_OR_RETURN(auto d, zfarm::worker::DecodePng(bytes));
    out = {d.width, d.height, std::move(d.rgb)};
  } else if (format == ImageFormat::kJpeg) {
    ZFARM_ASSIGN_OR_RETURN(auto d, zfarm::worker::DecodeJpeg(bytes));
    out = {d.width, d.height, std::move(d.rgb)};
  } else {
    ZFARM_ASSIGN_OR_RETURN(auto d, zfarm::worker::DecodeWebp(bytes));
    out = {d.width, d.height, std::move(d.rgb)};
  }
  if (out.width <= 0 || out.height <= 0 ||
      out.px.size() != static_cast<size_t>(out.width) * out.height * 3) {
    return absl::InvalidArgumentError("image: decoded to an unusable size");
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> MakeThumbnail(absl::string_view image, int max_side) {
  if (max_side < 1) return absl::InvalidArgumentError("max_side: must be at least 1");
  ZFARM_ASSIGN_OR_RETURN(Rgb src, Decode(std::string(image)));
  const uint32_t w = src.width, h = src.height;
  const double scale = std::min(1.0, static_cast<double>(max_side) / std::max(w, h));
  const uint32_t tw = std::max<uint32_t>(1, static_cast<uint32_t>(w * scale + 0.5));
  const uint32_t th = std::max<uint32_t>(1, static_cast<uint32_t>(h * scale + 0.5));
  std::vector<uint8_t> small(size_t{tw} * th * 3);
  for (uint32_t y = 0; y < th; ++y) {
    const uint32_t y0 = uint64_t{y} * h / th;
    const uint32_t y1 = std::max(y0 + 1, static_cast<uint32_t>(uint64_t{y + 1} * h / th));
    for (uint32_t x = 0; x < tw; ++x) {
      const uint32_t x0 = uint64_t{x} * w / tw;
      const uint32_t x1 = std::max(x0 + 1, static_cast<uint32_t>(uint64_t{x + 1} * w / tw));
      uint64_t sum[3] = {0, 0, 0};
      for (uint32_t sy = y0; sy < y1; ++sy) {
        const uint8_t* row = src.px.data() + (size_t{sy} * w + x0) * 3;
        for (uint32_t sx = x0; sx < x1; ++sx, row += 3) {
          sum[0] += row[0];
          sum[1] += row[1];
          sum[2] += row[2];
        }
      }
      const uint64_t n = uint64_t{y1 - y0} * (x1 - x0);
      uint8_t* out = small.data() + (size_t{y} * tw + x) * 3;
      for (int c = 0; c < 3; ++c) out[c] = static_cast<uint8_t>((sum[c] + n / 2) / n);
    }
  }
  return zfarm::worker::EncodePng(small, static_cast<int>(tw), static_cast<int>(th), {});
}

}  // namespace zfarm::scheduler::http
