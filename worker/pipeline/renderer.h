#ifndef ZFARM_WORKER_PIPELINE_RENDERER_H_
#define ZFARM_WORKER_PIPELINE_RENDERER_H_

// What the worker runtime renders with: the real Pipeline (PipelineRenderer,
// worker/pipeline/pipeline_renderer.h) or a test double. Torch-free: the runtime
// includes this, never pipeline.h.
//
// Thread-compatibility: Render and Memory are called from the worker's single
// inference thread only (the one thread that owns the device).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/pipeline/request.h"

namespace zfarm::worker {

// Device memory as the worker reports it (bytes; 0 = unknown).
struct DeviceMemory {
  int64_t total = 0;
  int64_t free = 0;
  int64_t in_use = 0;  // allocated by this process
  int64_t peak = 0;    // peak allocated since start
};

class Renderer {
 public:
  virtual ~Renderer() = default;
  // Pipeline::Generate's contract: CANCELLED when `cancel` fires, RESOURCE_EXHAUSTED
  // on out-of-memory (the renderer stays usable), INVALID_ARGUMENT for bad requests.
  virtual absl::StatusOr<Image> Render(const GenerateRequest& request, const StepCallback& on_step,
                                       const CancelToken* cancel) = 0;
  virtual DeviceMemory Memory() = 0;
  // Encodes the prompt of a job that will run next (called between steps of the
  // running job, on the same thread), so that job starts with its caption ready.
  virtual absl::Status Prepare(const GenerateRequest& request) {
    (void)request;
    return absl::OkStatus();
  }
  // Names of the LoRAs applied now (those of the last render), in order.
  virtual std::vector<std::string> ActiveLoras() { return {}; }
};

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_PIPELINE_RENDERER_H_
