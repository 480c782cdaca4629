#include "scheduler/http/thumbnail.h"

#include <png.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace zfarm::scheduler::http {
namespace {

constexpr char kSignature[] = "\x89PNG\r\n\x1a\n";

uint32_t BigEndian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

}  // namespace

absl::StatusOr<std::string> MakePngThumbnail(absl::string_view png, int max_side) {
  if (max_side < 1) return absl::InvalidArgumentError("max_side: must be at least 1");
  png_image in;
  std::memset(&in, 0, sizeof(in));
  in.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&in, png.data(), png.size())) {
    std::string why = in.message;
    png_image_free(&in);
    return absl::InvalidArgumentError(absl::StrCat("png: ", why));
  }
  in.format = PNG_FORMAT_RGB;
  const uint32_t w = in.width, h = in.height;
  if (w == 0 || h == 0 || uint64_t{w} * h > (uint64_t{1} << 26)) {
    png_image_free(&in);
    return absl::InvalidArgumentError(absl::StrCat("png: ", w, "x", h, " is not a usable size"));
  }
  std::vector<unsigned char> pixels(PNG_IMAGE_SIZE(in));
  if (!png_image_finish_read(&in, nullptr, pixels.data(), 0, nullptr)) {
    std::string why = in.message;
    png_image_free(&in);
    return absl::InvalidArgumentError(absl::StrCat("png: ", why));
  }
  const double scale = std::min(1.0, static_cast<double>(max_side) / std::max(w, h));
  const uint32_t tw = std::max<uint32_t>(1, static_cast<uint32_t>(w * scale + 0.5));
  const uint32_t th = std::max<uint32_t>(1, static_cast<uint32_t>(h * scale + 0.5));
  std::vector<unsigned char> small(size_t{tw} * th * 3);
  for (uint32_t y = 0; y < th; ++y) {
    const uint32_t y0 = uint64_t{y} * h / th;
    const uint32_t y1 = std::max(y0 + 1, static_cast<uint32_t>(uint64_t{y + 1} * h / th));
    for (uint32_t x = 0; x < tw; ++x) {
      const uint32_t x0 = uint64_t{x} * w / tw;
      const uint32_t x1 = std::max(x0 + 1, static_cast<uint32_t>(uint64_t{x + 1} * w / tw));
      uint64_t sum[3] = {0, 0, 0};
      for (uint32_t sy = y0; sy < y1; ++sy) {
        const unsigned char* row = pixels.data() + (size_t{sy} * w + x0) * 3;
        for (uint32_t sx = x0; sx < x1; ++sx, row += 3) {
          sum[0] += row[0];
          sum[1] += row[1];
          sum[2] += row[2];
        }
      }
      const uint64_t n = uint64_t{y1 - y0} * (x1 - x0);
      unsigned char* out = small.data() + (size_t{y} * tw + x) * 3;
      for (int c = 0; c < 3; ++c) out[c] = static_cast<unsigned char>((sum[c] + n / 2) / n);
    }
  }
  png_image_free(&in);

  png_image outimg;
  std::memset(&outimg, 0, sizeof(outimg));
  outimg.version = PNG_IMAGE_VERSION;
  outimg.width = tw;
  outimg.height = th;
  outimg.format = PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&outimg, nullptr, &size, 0, small.data(), 0, nullptr)) {
    return absl::InternalError(absl::StrCat("png encode: ", outimg.message));
  }
  std::string encoded(size, '\0');
  if (!png_image_write_to_memory(&outimg, encoded.data(), &size, 0, small.data(), 0, nullptr)) {
    return absl::InternalError(absl::StrCat("png encode: ", outimg.message));
  }
  encoded.resize(size);
  return encoded;
}

absl::StatusOr<std::map<std::string, std::string>> PngTextChunks(absl::string_view png) {
  if (png.size() < 8 || png.substr(0, 8) != absl::string_view(kSignature, 8)) {
    return absl::InvalidArgumentError("png: not a PNG file (bad signature)");
  }
  std::map<std::string, std::string> out;
  size_t pos = 8;
  while (pos + 8 <= png.size()) {
    const auto* p = reinterpret_cast<const unsigned char*>(png.data() + pos);
    const uint32_t len = BigEndian32(p);
    const absl::string_view type = png.substr(pos + 4, 4);
    if (len > png.size() || pos + 12 + len > png.size()) {
      return absl::InvalidArgumentError(absl::StrCat("png: chunk at byte ", pos, " is cut off"));
    }
    const absl::string_view data = png.substr(pos + 8, len);
    if (type == "tEXt") {
      const size_t nul = data.find('\0');
      if (nul != absl::string_view::npos) {
        out[std::string(data.substr(0, nul))] = std::string(data.substr(nul + 1));
      }
    } else if (type == "iTXt") {
      // keyword \0 compression-flag compression-method language \0 translated \0 text
      const size_t k = data.find('\0');
      if (k != absl::string_view::npos && k + 2 < data.size() && data[k + 1] == 0) {
        const size_t lang = data.find('\0', k + 3);
        const size_t trans =
            lang == absl::string_view::npos ? lang : data.find('\0', lang + 1);
        if (trans != absl::string_view::npos) {
          out[std::string(data.substr(0, k))] = std::string(data.substr(trans + 1));
        }
      }
    } else if (type == "IEND") {
      break;
    }
    pos += 12 + len;
  }
  return out;
}

}  // namespace zfarm::scheduler::http
