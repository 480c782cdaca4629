#ifndef ZFARM_TESTS_WORKER_PIPELINE_PARITY_UTIL_H_
#define ZFARM_TESTS_WORKER_PIPELINE_PARITY_UTIL_H_

// Comparisons of pipeline outputs with the diffusers goldens in tests/testdata/golden.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "gtest/gtest.h"
#include "proto/base/files.h"
#include "worker/io/file_util.h"
#include "worker/io/image_decode.h"
#include "worker/io/safetensors.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker::testing {

// A golden tensor as float32 ({} when absent).
inline std::vector<float> GoldenTensor(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* t = f.Find(name);
  if (t == nullptr) return {};
  std::vector<float> v(t->numel());
  ConvertToF32(f.View(*t), v.data());
  return v;
}

// An input picture of tests/testdata/golden, decoded as the pipeline gets it (with the file's
// sha256); empty (and a test failure) if it does not read or decode.
inline InputPicture GoldenPicture(const std::string& file) {
  const std::string dir = std::string(ZFARM_SOURCE_DIR) + "/tests/testdata/golden/";
  auto bytes = ReadSmallFile(dir + file, 1 << 20);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  if (!bytes.ok()) return {};
  auto img = DecodeImage(*bytes, file);
  EXPECT_TRUE(img.ok()) << img.status();
  if (!img.ok()) return {};
  return {img->width, img->height, std::move(img->rgb), base::Sha256Hex(*bytes)};
}

// The largest difference in levels between 8-bit pixels and a golden's values; 256 for a
// size mismatch.
inline int WorstLevel(const std::vector<uint8_t>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return 256;
  int worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<int>(got[i]) - static_cast<int>(want[i])));
  }
  return worst;
}

// max |a - b| relative to max |b| (the output scale); 1e9 for a size mismatch.
inline double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 1e9;
  double m = 1e-12, e = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, static_cast<double>(std::fabs(b[i])));
    e = std::max(e, static_cast<double>(std::fabs(a[i] - b[i])));
  }
  return e / m;
}

// A golden's metadata value ("" when absent).
inline std::string GoldenMeta(const SafetensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  return it == f.metadata().end() ? std::string() : it->second;
}

// The request a golden was rendered with: prompt, width, height, steps, seed and, when the
// golden has one, strength. False if a number does not parse.
inline bool GoldenRequest(const SafetensorsFile& f, GenerateRequest* r) {
  r->prompt = GoldenMeta(f, "prompt");
  const std::string strength = GoldenMeta(f, "strength");
  return absl::SimpleAtoi(GoldenMeta(f, "width"), &r->width) &&
         absl::SimpleAtoi(GoldenMeta(f, "height"), &r->height) &&
         absl::SimpleAtoi(GoldenMeta(f, "steps"), &r->steps) &&
         absl::SimpleAtoi(GoldenMeta(f, "seed"), &r->seed) &&
         (strength.empty() || absl::SimpleAtof(strength, &r->strength));
}

// Cosine similarity; 0 for a size mismatch.
inline double Cosine(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 0;
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb + 1e-30);
}

}  // namespace zfarm::worker::testing

#endif  // ZFARM_TESTS_WORKER_PIPELINE_PARITY_UTIL_H_
