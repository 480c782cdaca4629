// libFuzzer target for the safetensors header parser (bad input: an error, never a crash).
// Property: any byte string either parses into tensors that lie inside the buffer and can be
// converted, and survives a write/re-read round trip unchanged, or yields a non-OK status —
// never a crash, hang or sanitizer report. Without ZFARM_LIBFUZZER this file builds a
// replay driver that runs the given corpus files through the same target (a ctest).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "worker/io/safetensors.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "safetensors_fuzzer: property violated: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace zfarm::worker;
  auto f = SafetensorsFile::FromBuffer(data, size, "fuzz.safetensors");
  if (!f.ok()) {
    Check(!f.status().message().empty(), "error without message");
    return 0;
  }
  SafetensorsWriter w;
  for (const TensorInfo& t : (*f)->tensors()) {
    TensorView v = (*f)->View(t);
    Check(v.data >= data && v.data + v.size <= data + size, "view outside the buffer");
    Check(v.size == static_cast<size_t>(t.numel()) * DTypeSize(t.dtype), "size != numel * dtype");
    Check((*f)->Find(t.name) == &t, "Find() disagrees with tensors()");
    std::vector<float> f32(static_cast<size_t>(t.numel()));
    std::vector<uint16_t> bf16(static_cast<size_t>(t.numel()));
    ConvertToF32(v, f32.data());
    ConvertToBF16(v, bf16.data());
    Check(w.Add(t.name, t.dtype, t.shape,
                std::string_view(reinterpret_cast<const char*>(v.data), v.size))
              .ok(),
          "writer rejects a parsed tensor");
  }
  for (const auto& [k, val] : (*f)->metadata()) w.AddMetadata(k, val);
  // Round trip through the writer's header (data re-laid out in name order).
  std::string header = w.HeaderJson();
  std::string image(8, '\0');
  for (int i = 0; i < 8; ++i)
    image[i] = static_cast<char>(static_cast<uint64_t>(header.size()) >> (8 * i));
  image += header;
  std::vector<std::pair<std::string, const TensorInfo*>> sorted;
  for (const TensorInfo& t : (*f)->tensors()) sorted.emplace_back(t.name, &t);
  std::sort(sorted.begin(), sorted.end());
  for (const auto& [name, t] : sorted) {
    TensorView v = (*f)->View(*t);
    image.append(reinterpret_cast<const char*>(v.data), v.size);
  }
  auto g = SafetensorsFile::FromBuffer(reinterpret_cast<const uint8_t*>(image.data()), image.size(),
                                       "roundtrip.safetensors");
  Check(g.ok(), "writer output does not parse");
  Check((*g)->tensors().size() == (*f)->tensors().size(), "tensor count changed");
  Check((*g)->metadata() == (*f)->metadata(), "metadata changed");
  for (const TensorInfo& t : (*f)->tensors()) {
    const TensorInfo* u = (*g)->Find(t.name);
    Check(u != nullptr && u->dtype == t.dtype && u->shape == t.shape, "tensor changed");
    TensorView a = (*f)->View(t), b = (*g)->View(*u);
    Check(a.size == b.size && std::memcmp(a.data, b.data, a.size) == 0, "bytes changed");
  }
  return 0;
}

#ifndef ZFARM_LIBFUZZER
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::directory_iterator(p)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
    } else {
      files.push_back(p);
    }
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  }
  std::printf("safetensors_fuzz_replay: %zu inputs ok\n", files.size());
  return files.empty() ? 1 : 0;
}
#endif
