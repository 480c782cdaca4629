#ifndef ZFARM_WORKER_PIPELINE_PIPELINE_RENDERER_H_
#define ZFARM_WORKER_PIPELINE_PIPELINE_RENDERER_H_

// The production Renderer: a warm Pipeline on one device.
//
//   ZFARM_ASSIGN_OR_RETURN(auto r, PipelineRenderer::Create(pipeline_options));
//   r->Render(request, on_step, &cancel);
//
// Thread-compatible: one thread (the worker's inference thread) at a time.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/pipeline/pipeline.h"
#include "worker/pipeline/renderer.h"

namespace zfarm::worker {

class PipelineRenderer : public Renderer {
 public:
  explicit PipelineRenderer(std::unique_ptr<Pipeline> pipeline, std::string device)
      : pipeline_(std::move(pipeline)), device_(std::move(device)) {}

  absl::StatusOr<Image> Render(const GenerateRequest& request, const StepCallback& on_step,
                               const CancelToken* cancel) override;
  DeviceMemory Memory() override;
  absl::Status Prepare(const GenerateRequest& request) override {
    return pipeline_->PrepareCaption(request);
  }
  std::vector<std::string> ActiveLoras() override { return pipeline_->active_loras(); }
  Pipeline* pipeline() { return pipeline_.get(); }

 private:
  std::unique_ptr<Pipeline> pipeline_;
  std::string device_;
};

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_PIPELINE_PIPELINE_RENDERER_H_
