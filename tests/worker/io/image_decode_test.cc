// Tests of worker/io/image_decode: format and size probing, PNG (every colour type the
// decoder converts) and JPEG decoding to RGB8, and the errors for bad inputs.

#include "worker/io/image_decode.h"
#include "worker/io/image_ops.h"

#include <gtest/gtest.h>
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <string>
#include <vector>

#include <jpeglib.h>

#include "absl/status/status.h"

#pragma GCC diagnostic ignored "-Wclobbered"

namespace zfarm::worker {
namespace {

void PngWrite(png_structp png, png_bytep data, png_size_t n) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<char*>(data), n);
}
void PngFlush(png_structp) {}

// A PNG of the given colour type / depth from raw rows (each `rowbytes` long).
std::string MakePng(int w, int h, int color, int depth, const std::vector<uint8_t>& raw,
                    bool interlace = false, const std::vector<png_color>& palette = {},
                    const std::vector<png_byte>& trns = {}) {
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    ADD_FAILURE() << "libpng write failed";
    return "";
  }
  png_set_write_fn(png, &out, PngWrite, PngFlush);
  png_set_IHDR(png, info, w, h, depth, color,
               interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!palette.empty()) png_set_PLTE(png, info, palette.data(), static_cast<int>(palette.size()));
  if (!trns.empty()) png_set_tRNS(png, info, trns.data(), static_cast<int>(trns.size()), nullptr);
  png_write_info(png, info);
  const size_t rowbytes = raw.size() / h;
  std::vector<png_bytep> rows(h);
  for (int y = 0; y < h; ++y) rows[y] = const_cast<png_bytep>(raw.data() + y * rowbytes);
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

std::vector<uint8_t> Gradient(int w, int h) {
  std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      uint8_t* p = &rgb[(static_cast<size_t>(y) * w + x) * 3];
      p[0] = static_cast<uint8_t>(x * 7 + y);
      p[1] = static_cast<uint8_t>(y * 5 + 3);
      p[2] = static_cast<uint8_t>((x * y) ^ 0x5a);
    }
  }
  return rgb;
}

// A JPEG from RGB (components = 3) or grey (1) samples.
std::string MakeJpeg(int w, int h, int components, const std::vector<uint8_t>& samples,
                     int quality = 95, J_COLOR_SPACE space = JCS_UNKNOWN) {
  jpeg_compress_struct c;
  jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&c, &buf, &size);
  c.image_width = w;
  c.image_height = h;
  c.input_components = components;
  c.in_color_space = components == 3 ? JCS_RGB : components == 4 ? JCS_CMYK : JCS_GRAYSCALE;
  jpeg_set_defaults(&c);
  if (space != JCS_UNKNOWN) jpeg_set_colorspace(&c, space);
  jpeg_set_quality(&c, quality, TRUE);
  jpeg_start_compress(&c, TRUE);
  const size_t stride = static_cast<size_t>(w) * components;
  while (c.next_scanline < c.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(samples.data() + c.next_scanline * stride);
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  std::string out(reinterpret_cast<char*>(buf), size);
  free(buf);
  return out;
}

TEST(ImageDecodeTest, PngRgbRoundTripsExactly) {
  const std::vector<uint8_t> rgb = Gradient(37, 21);
  const std::string png = MakePng(37, 21, PNG_COLOR_TYPE_RGB, 8, rgb);
  auto info = ProbeImage(png, "init_image");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->format, PictureFormat::kPng);
  EXPECT_EQ(info->width, 37);
  EXPECT_EQ(info->height, 21);
  auto img = DecodeImage(png, "init_image");
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(img->width, 37);
  EXPECT_EQ(img->height, 21);
  EXPECT_EQ(img->rgb, rgb);
}

TEST(ImageDecodeTest, InterlacedPngDecodesLikeTheFlatOne) {
  const std::vector<uint8_t> rgb = Gradient(19, 13);
  auto img = DecodeImage(MakePng(19, 13, PNG_COLOR_TYPE_RGB, 8, rgb, /*interlace=*/true), "x");
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(img->rgb, rgb);
}

TEST(ImageDecodeTest, PngAlphaIsDroppedNotComposited) {
  std::vector<uint8_t> rgba;
  const std::vector<uint8_t> rgb = Gradient(5, 4);
  for (size_t i = 0; i < rgb.size(); i += 3) {
    rgba.insert(rgba.end(), {rgb[i], rgb[i + 1], rgb[i + 2], static_cast<uint8_t>(i % 256)});
  }
  auto img = DecodeImage(MakePng(5, 4, PNG_COLOR_TYPE_RGBA, 8, rgba), "x");
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(img->rgb, rgb);
}

TEST(ImageDecodeTest, PngGreyIsExpandedToRgb) {
  // 8-bit grey, and 4-bit grey (scaled to 8 bits: 0xf -> 0xff, 0x3 -> 0x33).
  auto g8 = DecodeImage(MakePng(3, 1, PNG_COLOR_TYPE_GRAY, 8, {0, 128, 255}), "x");
  ASSERT_TRUE(g8.ok()) << g8.status();
  EXPECT_EQ(g8->rgb, (std::vector<uint8_t>{0, 0, 0, 128, 128, 128, 255, 255, 255}));
  auto g4 = DecodeImage(MakePng(2, 1, PNG_COLOR_TYPE_GRAY, 4, {0xf3}), "x");
  ASSERT_TRUE(g4.ok()) << g4.status();
  EXPECT_EQ(g4->rgb, (std::vector<uint8_t>{255, 255, 255, 0x33, 0x33, 0x33}));
  auto ga = DecodeImage(MakePng(2, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 8, {10, 0, 200, 77}), "x");
  ASSERT_TRUE(ga.ok()) << ga.status();
  EXPECT_EQ(ga->rgb, (std::vector<uint8_t>{10, 10, 10, 200, 200, 200}));
}

TEST(ImageDecodeTest, PngPaletteWithTransparencyGivesThePaletteColours) {
  const std::vector<png_color> pal = {{255, 0, 0}, {0, 255, 0}, {1, 2, 3}};
  auto img = DecodeImage(
      MakePng(3, 1, PNG_COLOR_TYPE_PALETTE, 8, {2, 0, 1}, false, pal, /*trns=*/{0, 128}), "x");
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(img->rgb, (std::vector<uint8_t>{1, 2, 3, 255, 0, 0, 0, 255, 0}));
}

TEST(ImageDecodeTest, Png16BitKeepsTheHighByte) {
  // One pixel: R = 0x12ff, G = 0xab01, B = 0x0080 (big-endian samples).
  auto img = DecodeImage(MakePng(1, 1, PNG_COLOR_TYPE_RGB, 16, {0x12, 0xff, 0xab, 0x01, 0x00, 0x80}),
                         "x");
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(img->rgb, (std::vector<uint8_t>{0x12, 0xab, 0x00}));
}

TEST(ImageDecodeTest, JpegRgbDecodesCloseToTheSource) {
  // A smooth picture at quality 100: every sample within a few levels of the source.
  const int w = 48, h = 40;
  std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      uint8_t* p = &rgb[(static_cast<size_t>(y) * w + x) * 3];
      p[0] = static_cast<uint8_t>(40 + x * 3);
      p[1] = static_cast<uint8_t>(200 - y * 2);
      p[2] = 128;
    }
  }
  const std::string jpg = MakeJpeg(w, h, 3, rgb, 100);
  auto info = ProbeImage(jpg, "init_image");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->format, PictureFormat::kJpeg);
  EXPECT_EQ(info->width, w);
  EXPECT_EQ(info->height, h);
  auto img = DecodeImage(jpg, "init_image");
  ASSERT_TRUE(img.ok()) << img.status();
  ASSERT_EQ(img->rgb.size(), rgb.size());
  int max_diff = 0;
  for (size_t i = 0; i < rgb.size(); ++i) max_diff = std::max(max_diff, std::abs(img->rgb[i] - rgb[i]));
  EXPECT_LE(max_diff, 6);
}

TEST(ImageDecodeTest, GreyJpegIsExpandedToRgb) {
  std::vector<uint8_t> grey(16 * 8, 90);
  auto img = DecodeImage(MakeJpeg(16, 8, 1, grey), "x");
  ASSERT_TRUE(img.ok()) << img.status();
  ASSERT_EQ(img->rgb.size(), 16u * 8 * 3);
  for (size_t i = 0; i < img->rgb.size(); i += 3) {
    EXPECT_EQ(img->rgb[i], img->rgb[i + 1]);
    EXPECT_EQ(img->rgb[i], img->rgb[i + 2]);
    EXPECT_NEAR(img->rgb[i], 90, 1);
  }
}

TEST(ImageDecodeTest, CmykJpegIsRefusedNamingTheColourSpace) {
  std::vector<uint8_t> cmyk(8 * 8 * 4, 30);
  auto img = DecodeImage(MakeJpeg(8, 8, 4, cmyk), "mask_image");
  ASSERT_FALSE(img.ok());
  EXPECT_EQ(img.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(img.status().message().find("mask_image: JPEG"), std::string::npos) << img.status();
  EXPECT_NE(img.status().message().find("CMYK"), std::string::npos) << img.status();
}

TEST(ImageDecodeTest, BytesThatAreNoImageNameTheInput) {
  for (const std::string& bytes : {std::string(), std::string("GIF89a......"),
                                  std::string("\x89PNG", 4)}) {
    auto info = ProbeImage(bytes, "init_image");
    ASSERT_FALSE(info.ok());
    EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(info.status().message().rfind("init_image: not a PNG or JPEG", 0), 0u) << info.status();
    EXPECT_FALSE(DecodeImage(bytes, "init_image").ok());
  }
}

TEST(ImageDecodeTest, TruncatedFilesAreErrors) {
  const std::string png = MakePng(64, 64, PNG_COLOR_TYPE_RGB, 8, Gradient(64, 64));
  const std::string jpg = MakeJpeg(64, 64, 3, Gradient(64, 64));
  // The header survives, the pixel data does not: probe passes, decode fails.
  const std::string png_cut = png.substr(0, png.size() / 2);
  const std::string jpg_cut = jpg.substr(0, jpg.size() / 2);
  EXPECT_TRUE(ProbeImage(png_cut, "init_image").ok());
  EXPECT_TRUE(ProbeImage(jpg_cut, "init_image").ok());
  for (const std::string* cut : {&png_cut, &jpg_cut}) {
    auto img = DecodeImage(*cut, "init_image");
    ASSERT_FALSE(img.ok());
    EXPECT_EQ(img.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(img.status().message().find("init_image: "), std::string::npos) << img.status();
    EXPECT_NE(img.status().message().find("truncated"), std::string::npos) << img.status();
  }
  // Cut inside the header: even the probe fails.
  EXPECT_FALSE(ProbeImage(png.substr(0, 20), "init_image").ok());
  EXPECT_FALSE(ProbeImage(jpg.substr(0, 4), "init_image").ok());
}

TEST(ImageDecodeTest, DamagedPngDataIsAnError) {
  std::string png = MakePng(32, 32, PNG_COLOR_TYPE_RGB, 8, Gradient(32, 32));
  png[png.size() / 2] ^= 0x55;  // inside IDAT: the CRC (or zlib) check fails
  auto img = DecodeImage(png, "mask_image");
  ASSERT_FALSE(img.ok());
  EXPECT_NE(img.status().message().find("mask_image: PNG does not decode"), std::string::npos)
      << img.status();
}

TEST(ImageDecodeTest, SizeLimitsAreCheckedFromTheHeader) {
  const std::string png = MakePng(40, 20, PNG_COLOR_TYPE_RGB, 8, Gradient(40, 20));
  const std::string jpg = MakeJpeg(40, 20, 3, Gradient(40, 20));
  for (const std::string* bytes : {&png, &jpg}) {
    auto side = ProbeImage(*bytes, "init_image", PictureLimits{32, 0});
    ASSERT_FALSE(side.ok());
    EXPECT_NE(side.status().message().find("40x20, over the maximum side of 32"), std::string::npos)
        << side.status();
    auto pixels = DecodeImage(*bytes, "init_image", PictureLimits{0, 799});
    ASSERT_FALSE(pixels.ok());
    EXPECT_NE(pixels.status().message().find("over the maximum of 799 pixels"), std::string::npos)
        << pixels.status();
    EXPECT_TRUE(DecodeImage(*bytes, "init_image", PictureLimits{40, 800}).ok());
  }
}

TEST(ImageDecodeTest, AHugeHeaderSizeIsRefusedBeforeDecoding) {
  // A PNG whose IHDR claims 100000 x 100000 (a decompression bomb's header).
  std::string png = MakePng(1, 1, PNG_COLOR_TYPE_RGB, 8, {1, 2, 3});
  for (int i : {16, 20}) {  // width, height (big-endian) in IHDR
    png[i] = 0;
    png[i + 1] = 0x01;
    png[i + 2] = static_cast<char>(0x86);
    png[i + 3] = static_cast<char>(0xa0);
  }
  auto img = DecodeImage(png, "init_image");
  ASSERT_FALSE(img.ok());
  EXPECT_NE(img.status().message().find("100000x100000, over the maximum side of 8192"),
            std::string::npos)
      << img.status();
}

TEST(ImageOpsTest, GreyIsPillowsFixedPointLuma) {
  // (R*19595 + G*38470 + B*7471 + 0x8000) >> 16: pure channels and a mix.
  EXPECT_EQ(RgbToGrey({255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 200, 30, 7, 7, 7}),
            (std::vector<uint8_t>{76, 150, 29, 124, 7}));
}

TEST(ImageOpsTest, LanczosKeepsFlatPicturesAndTheSameSize) {
  const std::vector<uint8_t> g = Gradient(13, 9);
  EXPECT_EQ(ResizeLanczos(g, 13, 9, 3, 13, 9), g);  // same size: a copy, as Pillow
  const std::vector<uint8_t> flat(37 * 23 * 3, 77);
  const std::vector<uint8_t> down = ResizeLanczos(flat, 37, 23, 3, 16, 16);
  ASSERT_EQ(down.size(), 16u * 16 * 3);
  for (uint8_t v : down) EXPECT_EQ(v, 77);  // weights sum to one in fixed point
  // One pass only (width or height unchanged) and upscaling keep a flat picture flat too.
  for (uint8_t v : ResizeLanczos(flat, 37, 23, 3, 37, 16)) EXPECT_EQ(v, 77);
  for (uint8_t v : ResizeLanczos(flat, 37, 23, 3, 64, 23)) EXPECT_EQ(v, 77);
}

}  // namespace
}  // namespace zfarm::worker
