#ifndef ZFARM_WORKER_RUNTIME_WORKER_H_
#define ZFARM_WORKER_RUNTIME_WORKER_H_

// The resident worker: one warm Renderer on one device, a scheduler session
// (SchedulerLink) and three kinds of threads:
//   - the inference thread owns the Renderer: it takes leases from the local
//     queue (one running + prefetched ones), renders them, reports Started,
//     Progress after every step, encodes the next job's prompt between steps
//     (Renderer::Prepare), and hands images to the output thread;
//   - the output thread encodes the PNG, writes `<dir>/<job>.<attempt>.tmp`,
//     fsyncs it, asks the scheduler to commit the lease and renames the file to
//     its final path only when accepted (a refused lease deletes the temp file);
//   - gRPC / link threads deliver scheduler messages (assignments, cancels,
//     commit replies, drain) and never block.
//
// Disconnects: the running job keeps rendering; prefetched, unstarted leases
// are dropped (the scheduler requeues them). On reconnect the hello lists the
// running lease and every rendered-but-uncommitted one; commits are re-sent.
// The scheduler accepts a commit only for a lease it still holds for this worker,
// so a worker cut off long enough for its job to be reassigned has its late commit
// refused and deletes its temp file: there is never a second final file.
//
//   Worker::Options o; o.name = "host/cuda:0"; o.output_root = "/outputs"; ...
//   ZFARM_ASSIGN_OR_RETURN(auto w, Worker::Create(o, std::move(renderer), link_options));
//   w->Start();
//   ...
//   w->Shutdown();  // SIGTERM: finish the current job, hand back the rest
//
// Thread-safe.

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/contract/failure_policy.h"
#include "worker/pipeline/renderer.h"
#include "worker/runtime/lora_catalog.h"
#include "worker/runtime/scheduler_link.h"
#include "zfarm/v1/worker_service.pb.h"

namespace zfarm::worker {

class WorkerMetrics;

class Worker : public SchedulerLink::Handler {
 public:
  struct Options {
    // Unique in the farm, e.g. "host-a/cuda:0".
    std::string name;
    std::string device = "cpu";       // "cuda:N" or "cpu"
    std::string device_class = "cpu";  // "cuda/NVIDIA H200" or "cpu"
    std::string device_name = "cpu";
    std::string model = "z-image-turbo";
    std::string model_fingerprint;
    std::string dtype = "float32";
    // Where results go (the shared mount the scheduler reads).
    std::string output_root;
    int max_width_px = 2048, max_height_px = 2048;
    // Leases held beyond the running one.
    int prefetch = 1;
    // A job is failed (OUTPUT_ERROR) before rendering when the output root has
    // less free space than this plus the image's raw size.
    int64_t min_free_disk_bytes = int64_t{512} << 20;
    // Failures in a row that make the worker report itself unhealthy (only those
    // that count against the device, failure_policy.h).
    int unhealthy_after_failures = contract::kUnhealthyAfterFailures;
    // While unhealthy, a self-test render runs after this delay (doubling up to
    // 32x); success makes the worker healthy again.
    absl::Duration self_test_delay = absl::Seconds(10);
    // The self-test request (a small warm-up image).
    GenerateRequest self_test;
    // --lora-dir: the LoRAs jobs may name (sent in the hello, and in a heartbeat whenever
    // the directory changed). Null = none; a job naming a LoRA then fails INVALID_REQUEST.
    std::shared_ptr<LoraCatalog> loras;
    // --controlnet: the name of the resident ControlNet (ControlNetName of its path), sent
    // in the hello as feature "controlnet" and written into results. Empty = none.
    std::string controlnet;
  };

  // Counters for /metrics, tests and benchmarks.
  struct Stats {
    int64_t images = 0;
    int64_t failures = 0;
    int64_t commits_refused = 0;
    bool healthy = true;
    bool connected = false;
    bool draining = false;
    // Time from one job's image leaving the pipeline to the next job's render
    // starting, for jobs that were already waiting locally (the busy case).
    std::vector<double> gap_seconds;
    // The same, to the end of the next job's first denoising step (includes its
    // prompt encoding and one step of compute).
    std::vector<double> first_step_gap_seconds;
  };

  static absl::StatusOr<std::unique_ptr<Worker>> Create(Options options,
                                                        std::unique_ptr<Renderer> renderer,
                                                        SchedulerLink::Options link);
  ~Worker() override;  // Shutdown(absl::ZeroDuration())
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Starts the threads and connects.
  void Start();
  // Finishes the running job (and its commit), hands back prefetched leases,
  // closes the session and stops the threads. Waits at most `grace` for the
  // running job; past that the job is cancelled.
  void Shutdown(absl::Duration grace = absl::Minutes(10));
  // Blocks until a Drain message was handled and the worker is idle, or `timeout`.
  bool WaitDrained(absl::Duration timeout);
  // True when warm, connected, healthy and not draining: what probes report.
  bool Serving();
  Stats stats();
  // Publishes metrics (optional; call before Start()).
  void set_metrics(WorkerMetrics* metrics) { metrics_ = metrics; }
  SchedulerLink* link() { return link_.get(); }

  // SchedulerLink::Handler.
  zfarm::v1::WorkerHello MakeHello() override;
  void OnWelcome(const zfarm::v1::Welcome& welcome) override;
  void OnMessage(const zfarm::v1::SchedulerMessage& message) override;
  void OnDisconnected(const absl::Status& why) override;
  zfarm::v1::WorkerHeartbeat MakeHeartbeat() override;

 private:
  // A rendered image waiting to be written and committed.
  struct Output;
  // A temp file written and fsynced, waiting for the scheduler's answer.
  struct PendingCommit {
    zfarm::v1::CommitRequest request;
    std::string output_path;  // the lease's, relative to the output root
    std::string temp_abs, final_abs;
  };

  Worker(Options options, std::unique_ptr<Renderer> renderer);
  // OnMessage's handlers, one per scheduler message.
  void OnAssignment(const zfarm::v1::Assignment& assignment) ABSL_LOCKS_EXCLUDED(mu_);
  void OnCancel(const zfarm::v1::CancelLease& cancel) ABSL_LOCKS_EXCLUDED(mu_);
  void OnDrain() ABSL_LOCKS_EXCLUDED(mu_);
  void OnResume() ABSL_LOCKS_EXCLUDED(mu_);
  void InferenceLoop();
  void OutputLoop();
  // One lease, start to hand-off: RequestForLease, BeginRender, the render with OnStep
  // after every step, EndRender, then the output thread or FailLease.
  void RenderLease(const zfarm::v1::Lease& lease, absl::Time queued_since) ABSL_LOCKS_EXCLUDED(mu_);
  struct RunningRender;
  // The request the lease asks for, checked against what this worker can write
  // (output path, free space) and resolve (LoRAs, input pictures); nullopt after
  // failing the lease with the reason.
  std::optional<GenerateRequest> RequestForLease(const zfarm::v1::Lease& lease)
      ABSL_LOCKS_EXCLUDED(mu_);
  // RESOURCE_EXHAUSTED naming --min-free-disk-mb when the output root lacks the space.
  absl::Status CheckFreeSpace(const zfarm::v1::JobSpec& spec) const;
  // Marks `run` as running (cancellable), records the gap since the previous image
  // when the lease was waiting for it, and reports Started.
  void BeginRender(RunningRender& run, absl::Time queued_since) ABSL_LOCKS_EXCLUDED(mu_);
  // After each step: encodes the next job's prompt, cancels past the deadline,
  // reports Progress.
  void OnStep(RunningRender& run, int step, int total) ABSL_LOCKS_EXCLUDED(mu_);
  void PrepareNextCaption() ABSL_LOCKS_EXCLUDED(mu_);
  // Records memory and LoRAs after a render and clears the running lease; returns
  // why it was cancelled if it was (client or deadline).
  zfarm::v1::FailureReason EndRender(bool rendered) ABSL_LOCKS_EXCLUDED(mu_);
  // How a failed render is reported: the reason and whether another attempt may help.
  struct RenderFailure {
    zfarm::v1::FailureReason reason;
    bool retryable;
  };
  static RenderFailure FailureOf(const absl::Status& s, zfarm::v1::FailureReason cancel_reason);
  // Encodes the image, writes and fsyncs its temp file, asks the scheduler to commit.
  void WriteAndCommit(Output out) ABSL_LOCKS_EXCLUDED(mu_);
  void HandleCommitReply(const zfarm::v1::CommitReply& reply);
  void Fail(const zfarm::v1::LeaseId& lease, zfarm::v1::FailureReason reason, bool retryable,
            const std::string& message, int64_t memory_required = 0);
  void CountFailure(zfarm::v1::FailureReason reason) ABSL_LOCKS_EXCLUDED(mu_);
  // Fail() then CountFailure(): a lease this worker gives up on.
  void FailLease(const zfarm::v1::LeaseId& lease, zfarm::v1::FailureReason reason, bool retryable,
                 const std::string& message) ABSL_LOCKS_EXCLUDED(mu_);
  void RunSelfTest();
  void PostOutput(absl::AnyInvocable<void() &&> task);
  void SendStatus(bool healthy, const std::string& message);

  // Constant after construction.
  const Options options_;
  std::unique_ptr<Renderer> renderer_;  // used only by the inference thread
  std::unique_ptr<SchedulerLink> link_;
  WorkerMetrics* metrics_ = nullptr;

  absl::Mutex mu_;
  // Leases received and not started, in order.
  std::deque<std::pair<zfarm::v1::Lease, absl::Time>> pending_ ABSL_GUARDED_BY(mu_);
  // The lease being rendered, and its cancel token.
  std::optional<zfarm::v1::LeaseId> running_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<CancelToken> running_cancel_ ABSL_GUARDED_BY(mu_);
  zfarm::v1::FailureReason running_cancel_reason_ ABSL_GUARDED_BY(mu_) =
      zfarm::v1::FAILURE_REASON_CANCELLED_BY_CLIENT;
  // Rendered, written, not yet answered; keyed by job id.
  std::map<std::string, PendingCommit> commits_ ABSL_GUARDED_BY(mu_);
  // Images the output thread has not finished with.
  int outputs_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<absl::AnyInvocable<void() &&>> output_tasks_ ABSL_GUARDED_BY(mu_);
  bool connected_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool drain_requested_ ABSL_GUARDED_BY(mu_) = false;  // by the scheduler (Resume undoes it)
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;    // Shutdown() began: no Resume
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool output_stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool healthy_ ABSL_GUARDED_BY(mu_) = true;
  int consecutive_failures_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_image_done_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // The pending job whose prompt was encoded ahead (Renderer::Prepare).
  std::string prepared_job_ ABSL_GUARDED_BY(mu_);
  // The renderer's applied LoRAs after the last render (heartbeat active_loras).
  std::vector<std::string> active_loras_ ABSL_GUARDED_BY(mu_);
  Stats stats_ ABSL_GUARDED_BY(mu_);
  DeviceMemory memory_ ABSL_GUARDED_BY(mu_);

  std::thread inference_thread_;
  std::thread output_thread_;
};

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_RUNTIME_WORKER_H_
