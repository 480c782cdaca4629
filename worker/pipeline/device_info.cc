#include "worker/pipeline/device_info.h"

#include <ATen/Context.h>
#include <sys/resource.h>
#include <torch/version.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

#ifdef ZFARM_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>
#endif

namespace zfarm::worker {
namespace {

// "cpu" -> -1, "cuda:N" -> N.
absl::StatusOr<int> ParseIndex(const std::string& device) {
  if (device == "cpu") return -1;
  int index = -1;
  if (absl::StartsWith(device, "cuda:") && absl::SimpleAtoi(device.substr(5), &index) &&
      index >= 0) {
    return index;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device '", device, "': expected \"cpu\" or \"cuda:N\""));
}

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (absl::StartsWith(line, "model name")) {
      auto pos = line.find(':');
      if (pos != std::string::npos) {
        return std::string(absl::StripAsciiWhitespace(line.substr(pos + 1)));
      }
    }
  }
  return "cpu";
}

int64_t MeminfoBytes(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  for (std::string line; std::getline(in, line);) {
    if (absl::StartsWith(line, key + ":")) {
      std::istringstream ss(line.substr(key.size() + 1));
      int64_t kb = 0;
      ss >> kb;
      return kb * 1024;
    }
  }
  return 0;
}

[[maybe_unused]] std::string CudaVersion(int v) { return v <= 0 ? "" : absl::StrCat(v / 1000, ".", (v % 1000) / 10); }

}  // namespace

DeviceMemory QueryMemory(const std::string& device) {
  DeviceMemory m;
  absl::StatusOr<int> index = ParseIndex(device);
#ifdef ZFARM_TORCH_CUDA
  if (index.ok() && *index >= 0 && at::hasCUDA()) {
    size_t free_b = 0, total_b = 0;
    int prev = 0;
    cudaGetDevice(&prev);
    cudaSetDevice(*index);
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
      m.free = static_cast<int64_t>(free_b);
      m.total = static_cast<int64_t>(total_b);
    }
    cudaSetDevice(prev);
    try {
      auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(*index);
      m.in_use = stats.allocated_bytes[0].current;
      m.peak = stats.allocated_bytes[0].peak;
    } catch (const c10::Error&) {
      // The caching allocator starts lazily, at the first allocation: nothing in use yet.
    }
    return m;
  }
#endif
  (void)index;
  m.total = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  m.free = MeminfoBytes("MemAvailable");
  std::ifstream statm("/proc/self/statm");
  int64_t pages = 0, resident = 0;
  if (statm >> pages >> resident) m.in_use = resident * sysconf(_SC_PAGESIZE);
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  m.peak = static_cast<int64_t>(ru.ru_maxrss) * 1024;
  return m;
}

absl::StatusOr<DeviceInfo> QueryDevice(const std::string& device) {
  absl::StatusOr<int> index = ParseIndex(device);
  if (!index.ok()) return index.status();
  DeviceInfo info;
  info.device = device;
  info.torch_version = TORCH_VERSION;
#ifdef ZFARM_TORCH_CUDA
  if (at::hasCUDA()) {
    int n = 0;
    if (cudaGetDeviceCount(&n) == cudaSuccess) info.device_count = n;
    int v = 0;
    if (cudaDriverGetVersion(&v) == cudaSuccess) info.driver_version = CudaVersion(v);
    if (cudaRuntimeGetVersion(&v) == cudaSuccess) info.cuda_version = CudaVersion(v);
  }
#endif
  if (*index < 0) {
    info.name = CpuModelName();
    info.device_class = "cpu";
    info.memory = QueryMemory(device);
    return info;
  }
  if (*index >= info.device_count) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--device ", device, ": ", info.device_count == 0
                                       ? "no CUDA device is visible (or this is a CPU-only build)"
                                       : absl::StrCat("only ", info.device_count,
                                                      " CUDA device(s) are visible")));
  }
#ifdef ZFARM_TORCH_CUDA
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, *index) == cudaSuccess) info.name = prop.name;
#endif
  info.device_class = absl::StrCat("cuda/", info.name);
  info.memory = QueryMemory(device);
  return info;
}

}  // namespace zfarm::worker
