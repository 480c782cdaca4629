#include "worker/io/jpeg.h"

// jpeglib.h needs size_t and FILE declared before it.
#include <algorithm>
#include <csetjmp>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <jpeglib.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

// setjmp/longjmp error handling of libjpeg: every object touched after setjmp is
// created before it and not modified between setjmp and a possible longjmp.
#pragma GCC diagnostic ignored "-Wclobbered"

namespace zfarm::worker {
namespace {

constexpr size_t kMaxSegmentPayload = 65000;  // an APP segment holds at most 65533
constexpr char kExifHeader[] = "Exif\0\0";    // 6 bytes
constexpr char kXmpHeader[] = "http://ns.adobe.com/xap/1.0/";  // + its NUL: 29 bytes

struct ErrorManager {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void ErrorExit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}
void OutputMessage(j_common_ptr) {}  // warnings are not printed

}  // namespace

absl::StatusOr<std::string> EncodeJpeg(const std::vector<uint8_t>& rgb, int width, int height,
                                       int quality, const std::string& exif,
                                       const std::string& xmp) {
  if (width <= 0 || height <= 0 || width > JPEG_MAX_DIMENSION || height > JPEG_MAX_DIMENSION ||
      rgb.size() != static_cast<size_t>(width) * static_cast<size_t>(height) * 3) {
    return absl::InvalidArgumentError(absl::StrCat("jpeg: ", rgb.size(), " bytes do not hold ",
                                                   width, "x", height, " RGB pixels"));
  }
  if (quality < 1 || quality > 100) {
    return absl::InvalidArgumentError(absl::StrCat("quality: ", quality, " is outside [1, 100]"));
  }
  if (exif.size() > kMaxSegmentPayload || xmp.size() > kMaxSegmentPayload) {
    return absl::InvalidArgumentError(absl::StrCat(
        "jpeg: metadata of ", std::max(exif.size(), xmp.size()),
        " bytes exceeds one APP1 segment's limit of ", kMaxSegmentPayload, " bytes"));
  }
  std::string app1_exif, app1_xmp;
  if (!exif.empty()) app1_exif = std::string(kExifHeader, 6) + exif;
  if (!xmp.empty()) app1_xmp = std::string(kXmpHeader, sizeof(kXmpHeader)) + xmp;

  jpeg_compress_struct cinfo;
  ErrorManager err;
  unsigned char* buffer = nullptr;
  unsigned long size = 0;  // NOLINT(runtime/int): libjpeg's type
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = ErrorExit;
  err.mgr.output_message = OutputMessage;
  if (setjmp(err.jump)) {
    jpeg_destroy_compress(&cinfo);
    std::free(buffer);
    return absl::InternalError(absl::StrCat("jpeg: libjpeg error: ", err.message));
  }
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = static_cast<JDIMENSION>(width);
  cinfo.image_height = static_cast<JDIMENSION>(height);
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  cinfo.optimize_coding = TRUE;
  cinfo.write_JFIF_header = FALSE;
  jpeg_start_compress(&cinfo, TRUE);
  for (const std::string* seg : {&app1_exif, &app1_xmp}) {
    if (seg->empty()) continue;
    jpeg_write_marker(&cinfo, JPEG_APP0 + 1, reinterpret_cast<const JOCTET*>(seg->data()),
                      static_cast<unsigned int>(seg->size()));
  }
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(rgb.data() + static_cast<size_t>(cinfo.next_scanline) *
                                                         static_cast<size_t>(width) * 3);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string out(reinterpret_cast<const char*>(buffer), size);
  std::free(buffer);
  return out;
}

absl::StatusOr<DecodedJpeg> DecodeJpeg(const std::string& bytes) {
  DecodedJpeg out;
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = ErrorExit;
  err.mgr.output_message = OutputMessage;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return absl::InvalidArgumentError(absl::StrCat("jpeg: ", err.message));
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));  // NOLINT(runtime/int)
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m != nullptr; m = m->next) {
    const std::string data(reinterpret_cast<const char*>(m->data), m->data_length);
    if (data.compare(0, 6, kExifHeader, 6) == 0) {
      out.exif = data.substr(6);
    } else if (data.compare(0, sizeof(kXmpHeader), kXmpHeader, sizeof(kXmpHeader)) == 0) {
      out.xmp = data.substr(sizeof(kXmpHeader));
    }
  }
  cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&cinfo);
  out.width = static_cast<int>(cinfo.output_width);
  out.height = static_cast<int>(cinfo.output_height);
  out.rgb.resize(static_cast<size_t>(out.width) * out.height * 3);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out.rgb.data() + static_cast<size_t>(cinfo.output_scanline) * out.width * 3;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return out;
}

}  // namespace zfarm::worker
