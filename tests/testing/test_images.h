#ifndef ZFARM_TESTS_TESTING_TEST_IMAGES_H_
#define ZFARM_TESTS_TESTING_TEST_IMAGES_H_

// Real, decodable PNG files for tests of image inputs (link ZLIB::ZLIB):
//
//   std::string png = MakeTestPng(640, 480);              // a gradient, RGB8
//   std::string big = MakeTestPng(64, 64, 16 << 20);      // padded to exactly 16 MiB
//   std::string mask = MakeTestPng(64, 64, 0, /*mask=*/true);  // white square on black
//
// Padding goes into a private ancillary chunk ("zfPd"), which decoders skip.

#include <zlib.h>

#include <cstdint>
#include <string>
#include <vector>

namespace zfarm::testing {

inline void AppendPngChunk(std::string* out, const char type[4], const std::string& data) {
  auto be32 = [out](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out->push_back(static_cast<char>((v >> s) & 0xFF));
  };
  be32(static_cast<uint32_t>(data.size()));
  std::string body = std::string(type, 4) + data;
  out->append(body);
  be32(static_cast<uint32_t>(
      crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()))));
}

// A w x h RGB8 PNG (a gradient, or for `mask` a white centre square on black),
// padded with an ancillary chunk to exactly `total_bytes` when that is larger.
inline std::string MakeTestPng(int w, int h, int64_t total_bytes = 0, bool mask = false) {
  std::string raw;
  raw.reserve(static_cast<size_t>(h) * (1 + 3 * w));
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);  // filter: none
    for (int x = 0; x < w; ++x) {
      if (mask) {
        bool in = x >= w / 4 && x < 3 * w / 4 && y >= h / 4 && y < 3 * h / 4;
        raw.append(3, static_cast<char>(in ? 255 : 0));
      } else {
        raw.push_back(static_cast<char>(x * 255 / (w > 1 ? w - 1 : 1)));
        raw.push_back(static_cast<char>(y * 255 / (h > 1 ? h - 1 : 1)));
        raw.push_back(static_cast<char>((x + y) & 0xFF));
      }
    }
  }
  uLongf zlen = compressBound(static_cast<uLong>(raw.size()));
  std::vector<Bytef> z(zlen);
  compress(z.data(), &zlen, reinterpret_cast<const Bytef*>(raw.data()),
           static_cast<uLong>(raw.size()));
  std::string out("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  for (uint32_t v : {static_cast<uint32_t>(w), static_cast<uint32_t>(h)}) {
    for (int s = 24; s >= 0; s -= 8) ihdr.push_back(static_cast<char>((v >> s) & 0xFF));
  }
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB, deflate, no interlace
  AppendPngChunk(&out, "IHDR", ihdr);
  AppendPngChunk(&out, "IDAT", std::string(reinterpret_cast<char*>(z.data()), zlen));
  const int64_t rest = total_bytes - static_cast<int64_t>(out.size()) - 12 /* IEND */;
  if (rest >= 12) AppendPngChunk(&out, "zfPd", std::string(rest - 12, '\0'));
  AppendPngChunk(&out, "IEND", "");
  return out;
}

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_TEST_IMAGES_H_
