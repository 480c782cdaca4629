#ifndef ZFARM_TESTS_WORKER_PIPELINE_PARITY_UTIL_H_
#define ZFARM_TESTS_WORKER_PIPELINE_PARITY_UTIL_H_

// Comparisons of pipeline outputs with the diffusers goldens in tests/testdata/golden.

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "worker/io/safetensors.h"

namespace zfarm::worker::testing {

// A golden tensor as float32 ({} when absent).
inline std::vector<float> GoldenTensor(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* t = f.Find(name);
  if (t == nullptr) return {};
  std::vector<float> v(t->numel());
  ConvertToF32(f.View(*t), v.data());
  return v;
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
