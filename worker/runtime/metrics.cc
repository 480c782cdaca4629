#include "worker/runtime/metrics.h"

#include <map>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace zfarm::worker {

struct WorkerMetrics::Impl {
  std::shared_ptr<prometheus::Registry> registry;
  prometheus::Histogram* step = nullptr;
  prometheus::Histogram* render = nullptr;
  prometheus::Histogram* gap = nullptr;
  prometheus::Counter* images = nullptr;
  prometheus::Counter* refused = nullptr;
  prometheus::Family<prometheus::Counter>* failures = nullptr;
  prometheus::Gauge *mem_total = nullptr, *mem_free = nullptr, *mem_in_use = nullptr,
                    *mem_peak = nullptr, *serving = nullptr;
  absl::Mutex mu;
  std::map<std::string, prometheus::Counter*> failure_by_reason ABSL_GUARDED_BY(mu);
};

WorkerMetrics::WorkerMetrics(std::shared_ptr<prometheus::Registry> registry)
    : impl_(std::make_unique<Impl>()) {
  impl_->registry = std::move(registry);
  auto& r = *impl_->registry;
  const prometheus::Histogram::BucketBoundaries step_b{0.005, 0.01, 0.02, 0.05, 0.1, 0.2,
                                                       0.5,   1,    2,    5,    10};
  const prometheus::Histogram::BucketBoundaries render_b{0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120};
  const prometheus::Histogram::BucketBoundaries gap_b{0.0005, 0.001, 0.002, 0.005, 0.01,
                                                      0.02,   0.05,  0.1,   0.5,   2};
  impl_->step = &prometheus::BuildHistogram()
                     .Name("zfarm_worker_step_seconds")
                     .Help("Wall time of one denoising step")
                     .Register(r)
                     .Add({}, step_b);
  impl_->render = &prometheus::BuildHistogram()
                       .Name("zfarm_worker_render_seconds")
                       .Help("Wall time of one image, from render start to the encoded PNG")
                       .Register(r)
                       .Add({}, render_b);
  impl_->gap = &prometheus::BuildHistogram()
                    .Name("zfarm_worker_job_gap_seconds")
                    .Help("Previous image out to the next render start, on a busy worker")
                    .Register(r)
                    .Add({}, gap_b);
  impl_->images = &prometheus::BuildCounter()
                       .Name("zfarm_worker_images_total")
                       .Help("Images committed")
                       .Register(r)
                       .Add({});
  impl_->refused = &prometheus::BuildCounter()
                        .Name("zfarm_worker_commits_refused_total")
                        .Help("Results whose lease the scheduler refused (stale); deleted")
                        .Register(r)
                        .Add({});
  impl_->failures = &prometheus::BuildCounter()
                         .Name("zfarm_worker_failures_total")
                         .Help("Jobs that failed on this worker, by reason")
                         .Register(r);
  auto& mem = prometheus::BuildGauge()
                  .Name("zfarm_worker_device_memory_bytes")
                  .Help("Device memory: total, free, in use by this process, peak in use")
                  .Register(r);
  impl_->mem_total = &mem.Add({{"kind", "total"}});
  impl_->mem_free = &mem.Add({{"kind", "free"}});
  impl_->mem_in_use = &mem.Add({{"kind", "in_use"}});
  impl_->mem_peak = &mem.Add({{"kind", "peak"}});
  impl_->serving = &prometheus::BuildGauge()
                        .Name("zfarm_worker_serving")
                        .Help("1 when warm, connected to the scheduler and healthy")
                        .Register(r)
                        .Add({});
}

WorkerMetrics::~WorkerMetrics() = default;

void WorkerMetrics::ObserveStep(double s) { impl_->step->Observe(s); }
void WorkerMetrics::ObserveRender(double s) { impl_->render->Observe(s); }
void WorkerMetrics::ObserveGap(double s) { impl_->gap->Observe(s); }
void WorkerMetrics::CountImage() { impl_->images->Increment(); }
void WorkerMetrics::CountCommitRefused() { impl_->refused->Increment(); }
void WorkerMetrics::CountFailure(const std::string& reason) {
  absl::MutexLock lock(&impl_->mu);
  auto& c = impl_->failure_by_reason[reason];
  if (c == nullptr) c = &impl_->failures->Add({{"reason", reason}});
  c->Increment();
}
void WorkerMetrics::SetMemory(const DeviceMemory& m) {
  impl_->mem_total->Set(static_cast<double>(m.total));
  impl_->mem_free->Set(static_cast<double>(m.free));
  impl_->mem_in_use->Set(static_cast<double>(m.in_use));
  impl_->mem_peak->Set(static_cast<double>(m.peak));
}
void WorkerMetrics::SetServing(bool serving) { impl_->serving->Set(serving ? 1 : 0); }

}  // namespace zfarm::worker
