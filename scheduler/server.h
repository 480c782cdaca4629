#ifndef ZFARM_SCHEDULER_SERVER_H_
#define ZFARM_SCHEDULER_SERVER_H_

// The zfarm-scheduler gRPC server: JobService, WorkerService, AdminService (all on
// the callback API), grpc.health.v1 (SERVING once the journal is open) and server
// reflection, around one Scheduler core.
//
// Security plugs in at ONE place, ServerSecurity: the credentials factory used for
// the listening port, and an Authorizer every handler calls with its method name
// and the caller's metadata before doing anything. The defaults are insecure
// credentials and allow-all with owner "anonymous"; TLS and tokens (issue 11)
// replace them without touching service code.
//
//   ServerOptions o;
//   o.listen = "127.0.0.1:0";
//   o.scheduler.state_dir = dir;
//   ZFARM_ASSIGN_OR_RETURN(auto server, SchedulerServer::Start(o));
//   ... server->port() ...
//   server->Shutdown();   // stop accepting, cancel streams, flush the journal

#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/support/string_ref.h"
#include "scheduler/clock.h"
#include "scheduler/scheduler.h"

namespace zfarm::scheduler {

// Decides whether a call may proceed and who its owner is. Thread-safe.
class Authorizer {
 public:
  virtual ~Authorizer() = default;
  // `method` is the short rpc name ("SubmitJob", "Connect", "DrainWorker", ...).
  // Returns the owner recorded on jobs, or PERMISSION_DENIED / UNAUTHENTICATED.
  virtual absl::StatusOr<std::string> Authorize(
      absl::string_view method, const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
      const std::string& peer) = 0;
};

// Allows everything; owner "anonymous".
class AllowAllAuthorizer final : public Authorizer {
 public:
  absl::StatusOr<std::string> Authorize(absl::string_view,
                                        const std::multimap<grpc::string_ref, grpc::string_ref>&,
                                        const std::string&) override {
    return std::string("anonymous");
  }
};

struct ServerSecurity {
  // Credentials for the listening port (default: insecure).
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
  grpc::Server* grpc_server() { return server_.get(); }

  // Idempotent: NOT_SERVING, stops accepting, ends streams (waits up to `grace`
  // for unary calls), stops the timer, flushes and closes the journal.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

 private:
  class Services;
  SchedulerServer() = default;

  std::string host_;
  int port_ = 0;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  absl::Notification stop_;
  std::thread ticker_;
  bool shut_down_ = false;
};

// Asks grpc.health.v1.Health/Check at `address` (insecure); OK if SERVING.
absl::Status ProbeHealth(const std::string& address, absl::Duration timeout);

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_SERVER_H_
