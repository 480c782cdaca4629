#ifndef ZFARM_TESTS_TESTING_FAKE_WORKER_H_
#define ZFARM_TESTS_TESTING_FAKE_WORKER_H_

// A worker that speaks the real WorkerService.Connect protocol over a channel,
// for scheduler, CLI and e2e tests. It renders nothing: Commit() writes a small
// fake PNG as "<output_root>/<job>.<attempt>.tmp", asks the scheduler to commit
// the lease and renames it to the lease's output_path only when accepted (the
// real two-phase protocol).
//
//   auto w = FakeWorker::Connect(channel, {.name = "w1"});
//   ASSERT_OK_AND_ASSIGN(v1::Lease lease, (*w)->NextLease(absl::Seconds(5)));
//   ASSERT_OK((*w)->RunToSuccess(lease, output_root));
//
// Thread-safe; a reader thread collects incoming messages.

#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "zfarm/v1/worker_service.grpc.pb.h"

namespace zfarm::testing {

class FakeWorker {
 public:
  struct Options {
    std::string name = "fake-worker";
    int capacity = 1;
    std::string model = "z-image-turbo";
    int64_t memory_total_bytes = int64_t{80} << 30;
    int max_width_px = 2048;
    int max_height_px = 2048;
    std::vector<zfarm::v1::LeaseId> held_leases;
    // WorkerHello.dtype.
    std::string dtype = "float32";
    // Skip the hello (to test protocol errors).
    bool send_hello = true;
    // Bearer token sent with Connect ("" = none).
    std::string token;
    // WorkerHello.features ("img2img", "inpaint") and .loras.
    std::vector<std::string> features;
    std::vector<zfarm::v1::LoraInfo> loras;
  };

  // Opens the stream and sends hello; waits for Welcome (unless !send_hello).
  static absl::StatusOr<std::unique_ptr<FakeWorker>> Connect(
      std::shared_ptr<grpc::Channel> channel, const Options& options,
      absl::Duration timeout = absl::Seconds(10));
  ~FakeWorker();  // Disconnect().

  // Next lease from any Assignment, in order.
  absl::StatusOr<zfarm::v1::Lease> NextLease(absl::Duration timeout = absl::Seconds(10));
  // Next non-assignment message of `kind` (e.g. kCancel, kCommitReply, kDrain).
  absl::StatusOr<zfarm::v1::SchedulerMessage> NextMessage(
      zfarm::v1::SchedulerMessage::MsgCase kind, absl::Duration timeout = absl::Seconds(10));
  // Leases received so far and not yet taken by NextLease().
  size_t PendingLeases();

  absl::Status Send(const zfarm::v1::WorkerMessage& message);
  // Sends a heartbeat. The scheduler drops a worker silent for its lease timeout
  // (30 s by default): long tests must call this (or send anything else).
  absl::Status Heartbeat();
  // A heartbeat saying which LoRAs are applied right now (affinity).
  absl::Status HeartbeatActive(const std::vector<std::string>& active_loras);
  absl::Status Started(const zfarm::v1::LeaseId& lease);
  absl::Status Progress(const zfarm::v1::LeaseId& lease, int step, int total);
  absl::Status Fail(const zfarm::v1::LeaseId& lease, zfarm::v1::FailureReason reason,
                    bool retryable, const std::string& message = "fake failure");
  // Two-phase commit. Returns whether the scheduler accepted (and the file was
  // renamed + Finalized sent) or refused (temp file deleted).
  absl::StatusOr<bool> Commit(const zfarm::v1::Lease& lease, const std::string& output_root,
                              bool send_finalized = true);
  // Started, one progress per step, Commit. OK only if accepted.
  absl::Status RunToSuccess(const zfarm::v1::Lease& lease, const std::string& output_root);

  // Half-closes and cancels the stream (the scheduler sees the worker lost).
  void Disconnect();
  // Waits for the stream to end and returns its status.
  grpc::Status WaitForEnd(absl::Duration timeout = absl::Seconds(10));

 private:
  FakeWorker() = default;
  void ReadLoop();

  grpc::ClientContext ctx_;
  std::unique_ptr<zfarm::v1::WorkerService::Stub> stub_;
  std::unique_ptr<grpc::ClientReaderWriter<zfarm::v1::WorkerMessage, zfarm::v1::SchedulerMessage>>
      stream_;
  std::thread reader_;
  absl::Mutex write_mu_;
  bool writes_done_ ABSL_GUARDED_BY(write_mu_) = false;

  absl::Mutex mu_;
  std::deque<zfarm::v1::Lease> leases_ ABSL_GUARDED_BY(mu_);
  std::deque<zfarm::v1::SchedulerMessage> messages_ ABSL_GUARDED_BY(mu_);
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status end_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_FAKE_WORKER_H_
