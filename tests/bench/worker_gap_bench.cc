// worker_gap_bench: how long a busy worker sits idle between jobs. An in-process
// scheduler and one Worker with the real Pipeline (tiny model, CPU) render N jobs
// submitted at once; the worker holds one job ahead (prefetch), so the next job
// starts from its local queue. Reports, per job after the first:
//   switch:     previous image out of the pipeline -> next render starts
//   first step: previous image out -> next job's first denoising step done
//               (its tokenize + text encoder + one DiT step included)
// and the wall time per image. ComfyUI loses about 2 s between API jobs (peers.md).
//
//   build/tests/bench/worker_gap_bench [--jobs 40] [--size 256] [--steps 2]
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/clock.h"
#include "tests/testing/scheduler_fixture.h"
#include "worker/pipeline/pipeline_renderer.h"
#include "worker/runtime/worker.h"
#include "zfarm/v1/job_service.grpc.pb.h"

ABSL_FLAG(int, jobs, 40, "jobs to render");
ABSL_FLAG(int, size, 256, "image side");
ABSL_FLAG(int, steps, 2, "steps per job");
ABSL_FLAG(std::string, model, ZFARM_TINY_MODEL_DIR, "model folder");
ABSL_FLAG(std::string, device, "cpu", "device");

namespace {

double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  namespace v1 = zfarm::v1;
  using zfarm::worker::Worker;
  auto farm = zfarm::testing::TestScheduler::Start();
  if (!farm.ok()) {
    std::fprintf(stderr, "%s\n", farm.status().ToString().c_str());
    return 1;
  }
  zfarm::worker::PipelineOptions po;
  po.model_dir = absl::GetFlag(FLAGS_model);
  po.device = absl::GetFlag(FLAGS_device);
  auto pipeline = zfarm::worker::Pipeline::Create(po);
  if (!pipeline.ok()) {
    std::fprintf(stderr, "%s\n", pipeline.status().ToString().c_str());
    return 1;
  }
  Worker::Options wo;
  wo.name = "bench";
  wo.output_root = (*farm)->output_root();
  wo.min_free_disk_bytes = 0;
  zfarm::worker::SchedulerLink::Options lo;
  lo.targets = {(*farm)->address()};
  auto worker = Worker::Create(
      wo, std::make_unique<zfarm::worker::PipelineRenderer>(*std::move(pipeline), po.device), lo);
  if (!worker.ok()) return 1;
  (*worker)->Start();
  while (!(*worker)->Serving()) absl::SleepFor(absl::Milliseconds(5));

  auto jobs = v1::JobService::NewStub((*farm)->channel());
  const int n = absl::GetFlag(FLAGS_jobs), size = absl::GetFlag(FLAGS_size);
  const absl::Time t0 = absl::Now();
  for (int i = 0; i < n; ++i) {
    v1::SubmitJobRequest r;
    r.mutable_spec()->set_prompt("job " + std::to_string(i) + ": a lighthouse at dusk");
    r.mutable_spec()->set_width_px(size);
    r.mutable_spec()->set_height_px(size);
    r.mutable_spec()->set_steps(absl::GetFlag(FLAGS_steps));
    r.mutable_spec()->set_seed(i);
    v1::SubmitJobResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!jobs->SubmitJob(&ctx, r, &resp).ok()) return 1;
  }
  while ((*worker)->stats().images < n) absl::SleepFor(absl::Milliseconds(5));
  const double wall = absl::ToDoubleSeconds(absl::Now() - t0);
  Worker::Stats s = (*worker)->stats();
  std::printf("| jobs | size | steps | s/image (wall) | switch p50 | switch p99 | switch max | "
              "first step p50 | first step p99 |\n|---|---|---|---|---|---|---|---|---|\n");
  std::printf("| %d | %d² | %d | %.3f | %.2f ms | %.2f ms | %.2f ms | %.1f ms | %.1f ms |\n", n,
              size, absl::GetFlag(FLAGS_steps), wall / n, 1e3 * Pct(s.gap_seconds, 0.5),
              1e3 * Pct(s.gap_seconds, 0.99),
              1e3 * (s.gap_seconds.empty() ? 0 : *std::max_element(s.gap_seconds.begin(),
                                                                    s.gap_seconds.end())),
              1e3 * Pct(s.first_step_gap_seconds, 0.5), 1e3 * Pct(s.first_step_gap_seconds, 0.99));
  std::printf("(%zu of %d jobs started from the local queue)\n", s.gap_seconds.size(), n);
  (*worker)->Shutdown();
  return 0;
}
