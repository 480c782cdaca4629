#ifndef ZFARM_WORKER_PIPELINE_DEVICE_INFO_H_
#define ZFARM_WORKER_PIPELINE_DEVICE_INFO_H_

// What the worker knows about its device: name, memory, driver and CUDA
// versions (for the hello, heartbeats, /metrics and `doctor`). Torch-free header.

#include <string>

#include "absl/status/statusor.h"
#include "worker/pipeline/renderer.h"

namespace zfarm::worker {

struct DeviceInfo {
  std::string device;          // "cuda:0" or "cpu"
  std::string name;            // "NVIDIA H200" or the CPU model name
  std::string device_class;    // "cuda/NVIDIA H200" or "cpu"
  std::string driver_version;  // CUDA driver API version, e.g. "12.4"; empty on CPU
  std::string cuda_version;    // CUDA runtime torch uses, e.g. "12.1"; empty on CPU
  std::string torch_version;   // libtorch version
  int device_count = 0;        // CUDA devices visible (0 on a CPU-only host or build)
  DeviceMemory memory;
};

// INVALID_ARGUMENT for a malformed device string; FAILED_PRECONDITION when a CUDA
// device is asked for and this build or host has none (or not that index).
absl::StatusOr<DeviceInfo> QueryDevice(const std::string& device);

// Current memory of `device` (CPU: physical RAM, MemAvailable, RSS, max RSS).
DeviceMemory QueryMemory(const std::string& device);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_PIPELINE_DEVICE_INFO_H_
