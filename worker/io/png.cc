#include "worker/io/png.h"

#include <fcntl.h>
#include <png.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

// setjmp/longjmp error handling of libpng: every object touched after setjmp is
// created before it and not modified between setjmp and a possible longjmp.
#pragma GCC diagnostic ignored "-Wclobbered"

namespace zfarm::worker {
namespace {

void ErrorFn(png_structp png, png_const_charp msg) {
  auto* err = static_cast<std::string*>(png_get_error_ptr(png));
  if (err != nullptr) *err = msg;
  png_longjmp(png, 1);
}
void WarnFn(png_structp, png_const_charp) {}

void WriteFn(png_structp png, png_bytep data, png_size_t n) {
  auto* out = static_cast<std::string*>(png_get_io_ptr(png));
  out->append(reinterpret_cast<const char*>(data), n);
}
void FlushFn(png_structp) {}

struct ReadState {
  const std::string* in;
  size_t pos = 0;
};
void ReadFn(png_structp png, png_bytep data, png_size_t n) {
  auto* s = static_cast<ReadState*>(png_get_io_ptr(png));
  if (s->pos + n > s->in->size()) png_error(png, "truncated PNG data");
  std::memcpy(data, s->in->data() + s->pos, n);
  s->pos += n;
}

}  // namespace

absl::StatusOr<std::string> EncodePng(
    const std::vector<uint8_t>& rgb, int width, int height,
    const std::vector<std::pair<std::string, std::string>>& text) {
  return EncodePng(rgb, width, height, text, PngOptions{});
}

// One straight story: libpng's write sequence (options, header, text chunks, rows,
// end) between its setjmp error handler and the cleanup, which must stay in one frame.
absl::StatusOr<std::string> EncodePng(const std::vector<uint8_t>& rgb, int width, int height,
                                      const std::vector<std::pair<std::string, std::string>>& text,
                                      const PngOptions& options) {
  if (options.zlib_level < -1 || options.zlib_level > 9) {
    return absl::InvalidArgumentError(
        absl::StrCat("png: zlib_level must be within -1..9, got ", options.zlib_level));
  }
  int filters = PNG_ALL_FILTERS;
  switch (options.filter) {
    case PngOptions::Filter::kAdaptive:
      filters = PNG_ALL_FILTERS;
      break;
    case PngOptions::Filter::kNone:
      filters = PNG_FILTER_NONE;
      break;
    case PngOptions::Filter::kSub:
      filters = PNG_FILTER_SUB;
      break;
    case PngOptions::Filter::kUp:
      filters = PNG_FILTER_UP;
      break;
    case PngOptions::Filter::kAverage:
      filters = PNG_FILTER_AVG;
      break;
    case PngOptions::Filter::kPaeth:
      filters = PNG_FILTER_PAETH;
      break;
  }
  if (width <= 0 || height <= 0 ||
      rgb.size() != static_cast<size_t>(width) * static_cast<size_t>(height) * 3) {
    return absl::InvalidArgumentError(absl::StrCat("png: ", rgb.size(), " bytes do not hold ",
                                                   width, "x", height, " RGB pixels"));
  }
  std::string out, err;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, ErrorFn, WarnFn);
  if (png == nullptr) return absl::InternalError("png: png_create_write_struct failed");
  png_infop info = png_create_info_struct(png);
  std::vector<png_text> chunks(text.size());
  if (info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return absl::InternalError(absl::StrCat("png: libpng error: ", err));
  }
  png_set_write_fn(png, &out, WriteFn, FlushFn);
  png_set_compression_level(png, options.zlib_level < 0 ? Z_DEFAULT_COMPRESSION : options.zlib_level);
  png_set_filter(png, PNG_FILTER_TYPE_BASE, filters);
  if (options.rle) png_set_compression_strategy(png, Z_RLE);
  png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  for (size_t i = 0; i < text.size(); ++i) {
    std::memset(&chunks[i], 0, sizeof(png_text));
    chunks[i].compression = PNG_ITXT_COMPRESSION_NONE;
    chunks[i].key = const_cast<char*>(text[i].first.c_str());
    chunks[i].text = const_cast<char*>(text[i].second.c_str());
    chunks[i].itxt_length = text[i].second.size();
  }
  if (!chunks.empty()) png_set_text(png, info, chunks.data(), static_cast<int>(chunks.size()));
  png_write_info(png, info);
  for (int y = 0; y < height; ++y) {
    png_write_row(png, const_cast<png_bytep>(rgb.data() + static_cast<size_t>(y) * width * 3));
  }
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return out;
}

absl::StatusOr<DecodedPng> DecodePng(const std::string& bytes) {
  DecodedPng out;
  std::string err;
  ReadState state{&bytes, 0};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, ErrorFn, WarnFn);
  if (png == nullptr) return absl::InternalError("png: png_create_read_struct failed");
  png_infop info = png_create_info_struct(png);
  if (info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return absl::InvalidArgumentError(absl::StrCat("png: ", err));
  }
  png_set_read_fn(png, &state, ReadFn);
  png_read_info(png, info);
  out.width = static_cast<int>(png_get_image_width(png, info));
  out.height = static_cast<int>(png_get_image_height(png, info));
  if (png_get_color_type(png, info) != PNG_COLOR_TYPE_RGB || png_get_bit_depth(png, info) != 8) {
    png_destroy_read_struct(&png, &info, nullptr);
    return absl::InvalidArgumentError("png: only 8-bit RGB is supported");
  }
  out.rgb.resize(static_cast<size_t>(out.width) * out.height * 3);
  for (int y = 0; y < out.height; ++y) {
    png_read_row(png, out.rgb.data() + static_cast<size_t>(y) * out.width * 3, nullptr);
  }
  png_read_end(png, info);
  png_textp texts = nullptr;
  int n = png_get_text(png, info, &texts, nullptr);
  for (int i = 0; i < n; ++i) {
    out.text.emplace_back(texts[i].key,
                          std::string(texts[i].text, texts[i].itxt_length ? texts[i].itxt_length
                                                                          : texts[i].text_length));
  }
  png_destroy_read_struct(&png, &info, nullptr);
  return out;
}

}  // namespace zfarm::worker
