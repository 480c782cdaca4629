#include "worker/io/webp.h"

#include <webp/decode.h>
#include <webp/encode.h>
#include <webp/mux.h>

#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace zfarm::worker {
namespace {

constexpr int kMaxDimension = 16383;  // WEBP_MAX_DIMENSION

struct MuxDeleter {
  void operator()(WebPMux* m) const { WebPMuxDelete(m); }
};
using MuxPtr = std::unique_ptr<WebPMux, MuxDeleter>;

std::string ChunkOrEmpty(const WebPMux* mux, const char fourcc[4]) {
  WebPData chunk;
  if (WebPMuxGetChunk(mux, fourcc, &chunk) != WEBP_MUX_OK) return "";
  return std::string(reinterpret_cast<const char*>(chunk.bytes), chunk.size);
}

}  // namespace

absl::StatusOr<std::string> EncodeWebp(const std::vector<uint8_t>& rgb, int width, int height,
                                       int quality, const std::string& exif,
                                       const std::string& xmp) {
  if (width <= 0 || height <= 0 || width > kMaxDimension || height > kMaxDimension ||
      rgb.size() != static_cast<size_t>(width) * static_cast<size_t>(height) * 3) {
    return absl::InvalidArgumentError(absl::StrCat("webp: ", rgb.size(), " bytes do not hold ",
                                                   width, "x", height, " RGB pixels (at most ",
                                                   kMaxDimension, " px a side)"));
  }
  if (quality < 1 || quality > 100) {
    return absl::InvalidArgumentError(absl::StrCat("quality: ", quality, " is outside [1, 100]"));
  }
  uint8_t* encoded = nullptr;
  const size_t n =
      WebPEncodeRGB(rgb.data(), width, height, width * 3, static_cast<float>(quality), &encoded);
  if (n == 0) {
    WebPFree(encoded);
    return absl::InternalError("webp: WebPEncodeRGB failed");
  }
  const WebPData image{encoded, n};
  MuxPtr mux(WebPMuxCreate(&image, /*copy_data=*/1));
  WebPFree(encoded);
  if (mux == nullptr) return absl::InternalError("webp: WebPMuxCreate failed");
  const std::pair<const char*, const std::string*> chunks[] = {{"EXIF", &exif}, {"XMP ", &xmp}};
  for (const auto& [fourcc, data] : chunks) {
    if (data->empty()) continue;
    const WebPData d{reinterpret_cast<const uint8_t*>(data->data()), data->size()};
    if (WebPMuxError e = WebPMuxSetChunk(mux.get(), fourcc, &d, /*copy_data=*/1); e != WEBP_MUX_OK) {
      return absl::InternalError(absl::StrCat("webp: WebPMuxSetChunk(", fourcc, ") failed: ", e));
    }
  }
  WebPData assembled;
  WebPDataInit(&assembled);
  if (WebPMuxError e = WebPMuxAssemble(mux.get(), &assembled); e != WEBP_MUX_OK) {
    WebPDataClear(&assembled);
    return absl::InternalError(absl::StrCat("webp: WebPMuxAssemble failed: ", e));
  }
  std::string out(reinterpret_cast<const char*>(assembled.bytes), assembled.size);
  WebPDataClear(&assembled);
  return out;
}

absl::StatusOr<DecodedWebp> DecodeWebp(const std::string& bytes) {
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  DecodedWebp out;
  WebPBitstreamFeatures features;
  if (WebPGetFeatures(data, bytes.size(), &features) != VP8_STATUS_OK) {
    return absl::InvalidArgumentError("webp: not a WebP image");
  }
  if (features.has_animation) return absl::InvalidArgumentError("webp: animated WebP is not supported");
  uint8_t* pixels = WebPDecodeRGB(data, bytes.size(), &out.width, &out.height);
  if (pixels == nullptr) return absl::InvalidArgumentError("webp: cannot decode the image");
  out.rgb.assign(pixels, pixels + static_cast<size_t>(out.width) * out.height * 3);
  WebPFree(pixels);
  const WebPData whole{data, bytes.size()};
  MuxPtr mux(WebPMuxCreate(&whole, /*copy_data=*/0));
  if (mux != nullptr) {
    out.exif = ChunkOrEmpty(mux.get(), "EXIF");
    out.xmp = ChunkOrEmpty(mux.get(), "XMP ");
  }
  return out;
}

}  // namespace zfarm::worker
