// worker/io speed: header scan of a full-size sharded model folder (target <= 50 ms),
// dtype conversion and md5 throughput.
//   BUILD/tests/bench/io_bench [--benchmark_filter=...]
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "proto/base/files.h"
#include "worker/io/file_util.h"
#include "worker/io/manifest.h"
#include "worker/io/model_folder.h"
#include "worker/io/safetensors.h"

namespace zfarm::worker {
namespace {

namespace fs = std::filesystem;

std::string TmpRoot() {
  const char* t = std::getenv("TMPDIR");
  return std::string(t ? t : "/tmp") + "/zfarm_io_bench_" + std::to_string(getpid());
}

// Full-size configuration with sparse shards (headers only; 32 GB apparent, ~0 on disk).
const std::string& FullSparseFolder() {
  static const std::string* dir = [] {
    auto* d = new std::string(TmpRoot() + "/full");
    const char* tok = std::getenv("ZFARM_TOKENIZER_JSON");
    std::string cmd = std::string(ZFARM_MAKE_TINY_MODEL) +
                      " --force --variant full-random --sparse --out " + *d + " --tokenizer " +
                      (tok ? tok : ZFARM_TOKENIZER_JSON_DEFAULT);
    if (std::system(cmd.c_str()) != 0) std::abort();
    return d;
  }();
  return *dir;
}

void BM_HeaderScanFullFolder(benchmark::State& state) {
  const std::string& dir = FullSparseFolder();
  size_t tensors = 0;
  for (auto _ : state) {
    auto config = LoadModelConfig(dir);
    auto dit = WeightSet::Open(dir + "/transformer");
    auto te = WeightSet::Open(dir + "/text_encoder");
    auto vae = WeightSet::Open(dir + "/vae");
    if (!config.ok() || !dit.ok() || !te.ok() || !vae.ok()) {
      state.SkipWithError("open failed");
      return;
    }
    tensors = (*dit)->size() + (*te)->size() + (*vae)->size();
    benchmark::DoNotOptimize(tensors);
  }
  state.counters["tensors"] = static_cast<double>(tensors);
}
BENCHMARK(BM_HeaderScanFullFolder)->Unit(benchmark::kMillisecond);

void BM_Convert(benchmark::State& state, DType from, bool to_bf16) {
  const int64_t n = 16 << 20;  // elements
  std::vector<uint8_t> src(static_cast<size_t>(n) * DTypeSize(from));
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 2654435761u >> 13);
  for (size_t i = 1; i < src.size(); i += 2) src[i] &= 0x3f;  // finite values
  TensorInfo info{"t", from, {n}, 0, src.size()};
  TensorView v{&info, src.data(), src.size()};
  std::vector<float> f32(to_bf16 ? 0 : static_cast<size_t>(n));
  std::vector<uint16_t> bf16(to_bf16 ? static_cast<size_t>(n) : 0);
  for (auto _ : state) {
    if (to_bf16) {
      ConvertToBF16(v, bf16.data());
      benchmark::DoNotOptimize(bf16.data());
    } else {
      ConvertToF32(v, f32.data());
      benchmark::DoNotOptimize(f32.data());
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(src.size()));
}
BENCHMARK_CAPTURE(BM_Convert, f32_to_bf16, DType::kF32, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Convert, bf16_to_f32, DType::kBF16, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Convert, f16_to_f32, DType::kF16, false)->Unit(benchmark::kMillisecond);

// Reads a 256 MB F32 safetensors file (page cache warm) through mmap and converts to BF16.
void BM_MmapReadConvert(benchmark::State& state) {
  const std::string path = TmpRoot() + "/read.safetensors";
  fs::create_directories(TmpRoot());
  const int64_t n = 64 << 20;
  {
    auto w = SafetensorsStreamWriter::Create(path, {{"w", DType::kF32, {n}}}, {});
    if (!w.ok()) std::abort();
    std::string chunk(4 << 20, '\x3c');
    for (int64_t done = 0; done < n * 4; done += static_cast<int64_t>(chunk.size())) {
      if (!(*w)->Append(chunk).ok()) std::abort();
    }
    if (!(*w)->Finish().ok()) std::abort();
  }
  std::vector<uint16_t> out(static_cast<size_t>(n));
  for (auto _ : state) {
    auto f = SafetensorsFile::Open(path);
    if (!f.ok()) std::abort();
    ConvertToBF16((*f)->View((*f)->tensors()[0]), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * n * 4);
}
BENCHMARK(BM_MmapReadConvert)->Unit(benchmark::kMillisecond);

void BM_Md5(benchmark::State& state) {
  const std::string path = TmpRoot() + "/md5.bin";
  fs::create_directories(TmpRoot());
  if (!base::WriteFileAtomically(path, std::string(128 << 20, 'z')).ok()) std::abort();
  for (auto _ : state) {
    auto md5 = Md5File(path);
    benchmark::DoNotOptimize(md5);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * (128 << 20));
}
BENCHMARK(BM_Md5)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace zfarm::worker

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::error_code ec;
  std::filesystem::remove_all(zfarm::worker::TmpRoot(), ec);
  return 0;
}
