#ifndef ZFARM_WORKER_RUNTIME_METRICS_H_
#define ZFARM_WORKER_RUNTIME_METRICS_H_

// The worker's Prometheus metrics (served on --metrics-listen):
//   zfarm_worker_step_seconds        histogram, one denoising step
//   zfarm_worker_render_seconds      histogram, one image (first step .. encoded PNG)
//   zfarm_worker_job_gap_seconds     histogram, previous image out -> next render start (busy)
//   zfarm_worker_images_total        counter, committed images
//   zfarm_worker_failures_total      counter by reason
//   zfarm_worker_commits_refused_total counter (stale leases)
//   zfarm_worker_device_memory_bytes gauge by kind=total|free|in_use|peak
//   zfarm_worker_serving             gauge, 1 when warm, connected and healthy
//
// Thread-safe (prometheus-cpp metrics are).

#include <memory>
#include <string>

#include "worker/pipeline/renderer.h"

namespace prometheus {
class Registry;
}

namespace zfarm::worker {

class WorkerMetrics {
 public:
  explicit WorkerMetrics(std::shared_ptr<prometheus::Registry> registry);
  ~WorkerMetrics();
  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  void ObserveStep(double seconds);
  void ObserveRender(double seconds);
  void ObserveGap(double seconds);
  void CountImage();
  void CountFailure(const std::string& reason);
  void CountCommitRefused();
  void SetMemory(const DeviceMemory& memory);
  void SetServing(bool serving);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_RUNTIME_METRICS_H_
