#include "worker/io/image_decode.h"

#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>

// jpeglib.h needs FILE and size_t declared first.
#include <jerror.h>
#include <jpeglib.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/io/file_util.h"

// setjmp/longjmp error handling of libpng and libjpeg: every object touched after setjmp
// is created before it, and the locals of the setjmp frames are not read after a longjmp
// except through pointers to memory that outlives the frame.
#pragma GCC diagnostic ignored "-Wclobbered"

namespace zfarm::worker {
namespace {

constexpr unsigned char kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

uint32_t Be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
uint32_t Be16(const unsigned char* p) { return (uint32_t{p[0]} << 8) | p[1]; }

absl::Status Bad(std::string_view what, std::string_view msg) {
  return absl::InvalidArgumentError(absl::StrCat(Sv(what), ": ", Sv(msg)));
}

// The first bytes, for "not an image" errors: hex of at most 8.
std::string Head(std::string_view bytes) {
  std::string s;
  for (size_t i = 0; i < bytes.size() && i < 8; ++i) {
    absl::StrAppendFormat(&s, "%s%02x", i ? " " : "", static_cast<unsigned char>(bytes[i]));
  }
  return s.empty() ? "no bytes" : absl::StrCat("starts with ", s);
}

absl::Status CheckSize(const PictureInfo& info, std::string_view what, const PictureLimits& limits) {
  const char* fmt = PictureFormatName(info.format);
  if (info.width <= 0 || info.height <= 0) {
    return Bad(what, absl::StrFormat("%s header gives an empty size %dx%d", fmt, info.width,
                                     info.height));
  }
  if (limits.max_side > 0 && (info.width > limits.max_side || info.height > limits.max_side)) {
    return Bad(what, absl::StrFormat("%s image is %dx%d, over the maximum side of %d pixels", fmt,
                                     info.width, info.height, limits.max_side));
  }
  const uint64_t pixels = static_cast<uint64_t>(info.width) * static_cast<uint64_t>(info.height);
  if (limits.max_pixels > 0 && pixels > limits.max_pixels) {
    return Bad(what, absl::StrFormat("%s image is %dx%d (%d pixels), over the maximum of %d pixels",
                                     fmt, info.width, info.height, pixels, limits.max_pixels));
  }
  return absl::OkStatus();
}

absl::StatusOr<PictureInfo> ProbePng(std::string_view bytes, std::string_view what) {
  // Signature (8), then the IHDR chunk: length (4) = 13, type (4), width (4), height (4), ...
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() < 8 + 8 + 13) return Bad(what, "PNG is truncated before the end of its header");
  if (Be32(p + 8) != 13 || std::memcmp(p + 12, "IHDR", 4) != 0) {
    return Bad(what, "PNG is damaged: its first chunk is not a 13-byte IHDR");
  }
  const uint32_t w = Be32(p + 16), h = Be32(p + 20);
  if (w > 0x7fffffffu || h > 0x7fffffffu) {
    return Bad(what, absl::StrFormat("PNG header gives an impossible size %dx%d", w, h));
  }
  return PictureInfo{PictureFormat::kPng, static_cast<int>(w), static_cast<int>(h)};
}

bool IsSof(unsigned char m) {
  // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
  return m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc;
}

absl::StatusOr<PictureInfo> ProbeJpeg(std::string_view bytes, std::string_view what) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 2;  // after SOI
  while (true) {
    while (i < n && p[i] == 0xff) ++i;  // fill bytes before a marker code
    if (i >= n) return Bad(what, "JPEG is truncated before its frame header");
    if (p[i - 1] != 0xff) {
      return Bad(what, absl::StrFormat("JPEG is damaged: no marker at byte %d", i - 1));
    }
    const unsigned char m = p[i++];
    if (m == 0xd8 || m == 0x01 || (m >= 0xd0 && m <= 0xd7)) continue;  // standalone markers
    if (m == 0xd9 || m == 0xda) return Bad(what, "JPEG has no frame header before its image data");
    if (i + 2 > n) return Bad(what, "JPEG is truncated before its frame header");
    const size_t len = Be16(p + i);
    if (len < 2) return Bad(what, absl::StrFormat("JPEG is damaged: segment length %d", len));
    if (IsSof(m)) {
      if (len < 8 || i + 7 > n) return Bad(what, "JPEG is truncated inside its frame header");
      const int h = static_cast<int>(Be16(p + i + 3)), w = static_cast<int>(Be16(p + i + 5));
      return PictureInfo{PictureFormat::kJpeg, w, h};
    }
    i += len;
    ++i;  // past the 0xff of the next marker (checked at the loop's top)
  }
}

// ---- PNG decoding (libpng) ----

struct PngRead {
  const unsigned char* data;
  size_t size;
  size_t pos;
  std::string error;
};

void PngErrorFn(png_structp png, png_const_charp msg) {
  static_cast<PngRead*>(png_get_error_ptr(png))->error = msg;
  png_longjmp(png, 1);
}
void PngWarnFn(png_structp, png_const_charp) {}
void PngReadFn(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<PngRead*>(png_get_io_ptr(png));
  if (n > r->size - r->pos) png_error(png, "the file ends inside the image data (truncated)");
  std::memcpy(out, r->data + r->pos, n);
  r->pos += n;
}

// Decodes into `out` (width/height already probed); false with r->error on failure.
bool DecodePngInto(PngRead* r, const PictureLimits& limits, DecodedImage* out) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, r, PngErrorFn, PngWarnFn);
  if (png == nullptr) {
    r->error = "png_create_read_struct failed";
    return false;
  }
  png_infop info = png_create_info_struct(png);
  std::vector<png_bytep> rows;
  if (info == nullptr || setjmp(png_jmpbuf(png))) {
    if (info == nullptr) r->error = "png_create_info_struct failed";
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  png_set_read_fn(png, r, PngReadFn);
  if (limits.max_side > 0) png_set_user_limits(png, limits.max_side, limits.max_side);
  png_read_info(png, info);
  const png_byte color = png_get_color_type(png, info);
  const png_byte depth = png_get_bit_depth(png, info);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if ((color & PNG_COLOR_MASK_COLOR) == 0 && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16) png_set_strip_16(png);
  png_set_strip_alpha(png);  // also the alpha that palette_to_rgb adds from tRNS
  if ((color & PNG_COLOR_MASK_COLOR) == 0) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_rowbytes(png, info) != static_cast<size_t>(out->width) * 3) {
    r->error = "unexpected row layout after conversion to RGB";
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  out->rgb.resize(static_cast<size_t>(out->width) * out->height * 3);
  rows.resize(out->height);
  for (int y = 0; y < out->height; ++y) {
    rows[y] = out->rgb.data() + static_cast<size_t>(y) * out->width * 3;
  }
  png_read_image(png, rows.data());
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

// ---- JPEG decoding (libjpeg-turbo) ----

struct JpegError {
  jpeg_error_mgr mgr;  // first: libjpeg's cinfo->err points here
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated;
};

void JpegErrorExit(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->message);
  std::longjmp(e->jump, 1);
}
void JpegEmitMessage(j_common_ptr cinfo, int level) {
  // Warnings (-1): a file that ends early is refused (libjpeg would fill the rest grey).
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
    reinterpret_cast<JpegError*>(cinfo->err)->truncated = true;
  }
}

// Decodes into `out`; false with *error on failure.
bool DecodeJpegInto(const unsigned char* data, size_t size, DecodedImage* out, std::string* error) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = JpegErrorExit;
  err.mgr.emit_message = JpegEmitMessage;
  err.truncated = false;
  err.message[0] = '\0';
  if (setjmp(err.jump)) {
    *error = err.message;
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space != JCS_GRAYSCALE && cinfo.jpeg_color_space != JCS_RGB &&
      cinfo.jpeg_color_space != JCS_YCbCr) {
    *error = absl::StrCat("colour space ", static_cast<int>(cinfo.jpeg_color_space),
                          " (CMYK/YCCK) is not supported; only grey, RGB and YCbCr");
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  if (static_cast<int>(cinfo.image_width) != out->width ||
      static_cast<int>(cinfo.image_height) != out->height) {
    *error = "the decoder's size differs from the frame header's";
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&cinfo);
  if (cinfo.output_components != 3) {
    *error = "the decoder did not produce 3 components";
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  out->rgb.resize(static_cast<size_t>(out->width) * out->height * 3);
  while (cinfo.output_scanline < cinfo.output_height && !err.truncated) {
    JSAMPROW row = out->rgb.data() + static_cast<size_t>(cinfo.output_scanline) * out->width * 3;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  if (err.truncated) {
    *error = "the file ends inside the image data (truncated)";
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_destroy_decompress(&cinfo);  // no jpeg_finish_decompress: trailing bytes do not matter
  return true;
}

}  // namespace

const char* PictureFormatName(PictureFormat f) { return f == PictureFormat::kPng ? "PNG" : "JPEG"; }

absl::StatusOr<PictureInfo> ProbeImage(std::string_view bytes, std::string_view what,
                                     const PictureLimits& limits) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  absl::StatusOr<PictureInfo> info;
  if (bytes.size() >= 8 && std::memcmp(p, kPngSignature, 8) == 0) {
    info = ProbePng(bytes, what);
  } else if (bytes.size() >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff) {
    info = ProbeJpeg(bytes, what);
  } else {
    return Bad(what, absl::StrCat("not a PNG or JPEG image (", Head(bytes), ", ", bytes.size(),
                                  " bytes)"));
  }
  if (!info.ok()) return info.status();
  if (absl::Status s = CheckSize(*info, what, limits); !s.ok()) return s;
  return info;
}

absl::StatusOr<DecodedImage> DecodeImage(std::string_view bytes, std::string_view what,
                                         const PictureLimits& limits) {
  absl::StatusOr<PictureInfo> info = ProbeImage(bytes, what, limits);
  if (!info.ok()) return info.status();
  DecodedImage out;
  out.format = info->format;
  out.width = info->width;
  out.height = info->height;
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (info->format == PictureFormat::kPng) {
    PngRead r{p, bytes.size(), 0, {}};
    if (!DecodePngInto(&r, limits, &out)) return Bad(what, absl::StrCat("PNG does not decode: ", r.error));
  } else {
    std::string error;
    if (!DecodeJpegInto(p, bytes.size(), &out, &error)) {
      return Bad(what, absl::StrCat("JPEG does not decode: ", error));
    }
  }
  return out;
}

}  // namespace zfarm::worker
