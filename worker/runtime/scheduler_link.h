#ifndef ZFARM_WORKER_RUNTIME_SCHEDULER_LINK_H_
#define ZFARM_WORKER_RUNTIME_SCHEDULER_LINK_H_

// The worker's side of WorkerService.Connect: one long-lived bidirectional
// stream (gRPC callback API), re-opened with exponential backoff and full
// jitter whenever it ends, heartbeats at the interval the scheduler asks for.
//
// With several scheduler addresses (an active scheduler and its standbys), a
// session that ends without a Welcome (refused, unreachable, a standby's
// UNAVAILABLE) moves on to the next address at once; the backoff applies once
// every address has failed in a row. A welcomed session that ends is retried on
// the same address first (a quick reconnect keeps the running job's lease).
//
//   SchedulerLink link({.targets = {"sched-0:50051", "sched-1:50051"}}, &handler);
//   link.Start();                 // connects in the background, forever
//   link.Send(progress_message);  // false while disconnected
//   link.Stop();                  // flushes queued messages, half-closes
//
// Every (re)connect asks the handler for a fresh WorkerHello (so it can list
// the leases it still holds). Handler methods run on gRPC or link threads and
// must not block.
//
// Thread-safe.

#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "zfarm/v1/worker_service.grpc.pb.h"

namespace zfarm::worker {

// The largest message the worker accepts from the scheduler: a lease with its job's init
// image and mask (16 MiB each by default) and the rest of the spec.
inline constexpr int kMaxLeaseBytes = 64 << 20;

class SchedulerLink {
 public:
  class Handler {
   public:
    virtual ~Handler() = default;
    // The hello for a new session.
    virtual zfarm::v1::WorkerHello MakeHello() = 0;
    // The scheduler accepted the session. Messages sent from here on go out
    // after the hello.
    virtual void OnWelcome(const zfarm::v1::Welcome& welcome) = 0;
    // Any message after the Welcome.
    virtual void OnMessage(const zfarm::v1::SchedulerMessage& message) = 0;
    // The session ended (also when it never got a Welcome).
    virtual void OnDisconnected(const absl::Status& why) = 0;
    // A heartbeat to send now.
    virtual zfarm::v1::WorkerHeartbeat MakeHeartbeat() = 0;
  };

  struct Options {
    // Scheduler addresses, HOST:PORT, tried in this order (at least one).
    std::vector<std::string> targets;
    // Channel credentials; null = plaintext.
    std::shared_ptr<grpc::ChannelCredentials> credentials;
    // Extra per-call metadata (e.g. {"authorization", "Bearer ..."}).
    std::vector<std::pair<std::string, std::string>> metadata;
    // Reconnect backoff: after the n-th consecutive round in which every address
    // failed, a uniformly random wait in [0, min(max_backoff, initial_backoff * 2^n)]
    // (full jitter).
    absl::Duration initial_backoff = absl::Milliseconds(250);
    absl::Duration max_backoff = absl::Seconds(15);
    // Heartbeat interval until the Welcome says otherwise.
    absl::Duration default_heartbeat = absl::Seconds(5);
  };

  SchedulerLink(Options options, Handler* handler);
  ~SchedulerLink();  // Stop()
  SchedulerLink(const SchedulerLink&) = delete;
  SchedulerLink& operator=(const SchedulerLink&) = delete;

  // Starts connecting in a background thread.
  void Start();
  // Queues `message` on the current session. False (nothing queued) while no
  // session is welcomed; the caller keeps its state and replays after the next
  // OnWelcome.
  bool Send(const zfarm::v1::WorkerMessage& message);
  // True between OnWelcome and OnDisconnected.
  bool connected();
  // Writes what is queued, half-closes the stream and stops reconnecting.
  // Waits at most `timeout` for the stream to end.
  void Stop(absl::Duration timeout = absl::Seconds(5));
  // Tests: ends the current session at once (as a network cut would); the link
  // reconnects after its backoff.
  void DropSessionForTesting();
  // Tests: while paused, the link does not open a new session.
  void PauseReconnectsForTesting(bool paused);
  // Sessions welcomed so far.
  int sessions_welcomed();
  // The address of the current (or the next) session.
  std::string current_target();

 private:
  class Session;
  void Run();

  // Constant after construction.
  const Options options_;
  Handler* const handler_;
  // One channel per address, in options_.targets' order.
  std::vector<std::unique_ptr<zfarm::v1::WorkerService::Stub>> stubs_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool reconnect_paused_ ABSL_GUARDED_BY(mu_) = false;
  Session* session_ ABSL_GUARDED_BY(mu_) = nullptr;  // the live one, owned by Run()
  int sessions_welcomed_ ABSL_GUARDED_BY(mu_) = 0;
  size_t current_ ABSL_GUARDED_BY(mu_) = 0;  // index into options_.targets
  absl::Duration heartbeat_ ABSL_GUARDED_BY(mu_);

  std::thread thread_;
};

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_RUNTIME_SCHEDULER_LINK_H_
