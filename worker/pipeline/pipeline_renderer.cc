#include "worker/pipeline/pipeline_renderer.h"

#include "worker/pipeline/device_info.h"

namespace zfarm::worker {

absl::StatusOr<Image> PipelineRenderer::Render(const GenerateRequest& request,
                                               const StepCallback& on_step,
                                               const CancelToken* cancel) {
  return pipeline_->Generate(request, on_step, cancel);
}

DeviceMemory PipelineRenderer::Memory() { return QueryMemory(device_); }

}  // namespace zfarm::worker
