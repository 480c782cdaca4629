#ifndef ZFARM_SCHEDULER_SERVER_H_
#define ZFARM_SCHEDULER_SERVER_H_

// The zfarm-scheduler gRPC server: JobService, WorkerService, AdminService (all on
// the callback API), grpc.health.v1 (SERVING once the journal is open) and server
// reflection, around one Scheduler core.
//
// Pictures (JobSpec.init_image / mask_image) are resolved, checked and stored by
// an InputStore at submit, before the core journals the job with their sha256
// references; the lease sent to a worker gets the bytes back (one lease per
// Assignment message then, so a message holds at most two pictures).
//
// Security plugs in at ONE place, ServerSecurity: the credentials factory used for
// the listening port, and an Authorizer every handler calls with its method name
// and the caller's metadata before doing anything. The defaults are insecure
// credentials and allow-all with owner "anonymous"; TLS and tokens (proto/security)
// replace them without touching service code.
//
//   ServerOptions o;
//   o.listen = "127.0.0.1:0";
//   o.scheduler.state_dir = dir;
//   ZFARM_ASSIGN_OR_RETURN(auto server, SchedulerServer::Start(o));
//   ... server->port() ...
//   server->Shutdown();   // stop accepting, cancel streams, flush the journal

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "proto/security/auth.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/support/string_ref.h"
#include "scheduler/clock.h"
#include "scheduler/inputs.h"
#include "scheduler/scheduler.h"

namespace zfarm::scheduler {

// Who is calling: the principal recorded as Job.owner, and whether it may see
// and act on every principal's jobs.
struct Caller {
  std::string principal;
  bool admin = false;
  // Owner filter for job reads and cancels: "" (all jobs) for an admin.
  std::string OwnerFilter() const { return admin ? std::string() : principal; }
};

// Decides whether a call may proceed and who makes it. Thread-safe.
class Authorizer {
 public:
  virtual ~Authorizer() = default;
  // `method` is the short rpc name ("SubmitJob", "Connect", "DrainWorker", ...).
  // Returns the caller, or UNAUTHENTICATED (no/unknown credentials) /
  // PERMISSION_DENIED (the caller's role may not call `method`).
  virtual absl::StatusOr<Caller> Authorize(
      absl::string_view method, const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
      const std::string& peer) = 0;
};

// Allows everything; caller "anonymous", admin (no auth configured).
class AllowAllAuthorizer final : public Authorizer {
 public:
  absl::StatusOr<Caller> Authorize(absl::string_view,
                                   const std::multimap<grpc::string_ref, grpc::string_ref>&,
                                   const std::string&) override {
    return Caller{"anonymous", true};
  }
};

// Bearer tokens ("authorization: Bearer <token>") from a security::TokenStore,
// and roles:
//   submitter: JobService (its own jobs only) and ListWorkers;
//   admin:     everything, every principal's jobs, DrainWorker, ResumeWorker;
//   worker:    WorkerService.Connect only.
// Missing or unknown token -> UNAUTHENTICATED; wrong role -> PERMISSION_DENIED
// naming the method and role. Tokens are never logged.
class TokenAuthorizer final : public Authorizer {
 public:
  explicit TokenAuthorizer(std::shared_ptr<security::TokenStore> store)
      : store_(std::move(store)) {}
  absl::StatusOr<Caller> Authorize(
      absl::string_view method, const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
      const std::string& peer) override;

 private:
  const std::shared_ptr<security::TokenStore> store_;
};

struct ServerSecurity {
  // Credentials for the listening port (default: insecure); see
  // security::ServerCredentials for TLS / mutual TLS.
  std::function<std::shared_ptr<grpc::ServerCredentials>()> credentials;
  // Called by every handler (default: AllowAllAuthorizer).
  std::shared_ptr<Authorizer> authorizer;
};

struct ServerOptions {
  // HOST:PORT; port 0 picks a free one (see SchedulerServer::port()).
  std::string listen = "127.0.0.1:0";
  Scheduler::Options scheduler;
  ServerSecurity security;
  // How often Scheduler::Tick() runs (deadlines, heartbeats, retention).
  absl::Duration tick_interval = absl::Milliseconds(100);
  // Receives the metrics (may be null).
  std::shared_ptr<prometheus::Registry> registry;
  // Largest gRPC message accepted (RESOURCE_EXHAUSTED beyond); 0 = room for two
  // pictures of scheduler.limits.max_input_bytes and the rest of a spec
  // (MaxMessageBytesFor()).
  int max_message_bytes = 0;
  // --input-root: ImageInput.path is read from here (read-only, confined like the
  // output root). Empty = path inputs are refused.
  std::string input_root;
  // How often the input store (<state-dir>/inputs) is swept of pictures no job
  // references any more, and how long an unreferenced picture is kept after it
  // was last submitted (a submit not yet journaled is not referenced).
  // InfiniteDuration() = never swept by the timer (SweepInputs() still works).
  absl::Duration input_sweep_interval = absl::Minutes(10);
  absl::Duration input_sweep_min_age = absl::Hours(1);
  // Concurrent WatchJob/WatchJobs/GetResult streams per client (its principal,
  // or its IP address when anonymous); 0 = unlimited. RESOURCE_EXHAUSTED beyond.
  int max_streams_per_client = 1024;
  // Unsent events one watch stream may hold for a client that reads too slowly
  // (serialized bytes; past a quarter of it, a PROGRESS event replaces its job's
  // unsent one). Beyond,
  // the stream ends with RESOURCE_EXHAUSTED. 0 = unbounded.
  int64_t max_watch_backlog_bytes = 1 << 20;
};

class SchedulerServer {
 public:
  // Opens the journal (recovering jobs), then starts serving.
  static absl::StatusOr<std::unique_ptr<SchedulerServer>> Start(ServerOptions options,
                                                                Clock* clock = Clock::Real());
  ~SchedulerServer();  // Shutdown().
  SchedulerServer(const SchedulerServer&) = delete;
  SchedulerServer& operator=(const SchedulerServer&) = delete;

  int port() const { return port_; }
  // "127.0.0.1:<port>" style address clients can dial.
  std::string address() const;
  Scheduler* scheduler() { return scheduler_.get(); }
  InputStore* inputs() { return inputs_.get(); }
  // Removes the stored pictures that no job the scheduler still holds references
  // (jobs leave with --retention / --max-finished-jobs) and that were last
  // submitted more than input_sweep_min_age ago. Returns how many were removed.
  // Runs every input_sweep_interval on the timer thread.
  absl::StatusOr<int> SweepInputs();
  grpc::Server* grpc_server() { return server_.get(); }

  // Idempotent: NOT_SERVING, stops accepting, ends streams (waits up to `grace`
  // for unary calls), stops the timer, flushes and closes the journal.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

 private:
  class Services;
  SchedulerServer() = default;
  // Builds and starts the gRPC server on options.listen (health, reflection, the
  // three services, the message size limit).
  absl::Status Listen(const ServerOptions& options);
  // The ticker thread: Scheduler::Tick every `every`, SweepInputs every
  // `sweep_every`, until stop_.
  void TickerLoop(absl::Duration every, absl::Duration sweep_every);

  std::string host_;
  int port_ = 0;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<InputStore> inputs_;
  absl::Duration input_sweep_min_age_;
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  absl::Notification stop_;
  std::thread ticker_;
  bool shut_down_ = false;
};

// The gRPC receive limit that fits a SubmitJob with two pictures of
// `max_input_bytes` each and the rest of its spec: 2 * max_input_bytes + 1 MiB.
int MaxMessageBytesFor(int64_t max_input_bytes);

// Asks grpc.health.v1.Health/Check at `address`; OK if SERVING. `credentials`
// null = insecure (see security::ClientCredentials for TLS).
absl::Status ProbeHealth(const std::string& address, absl::Duration timeout,
                         std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_SERVER_H_
