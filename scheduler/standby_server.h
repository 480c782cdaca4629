#ifndef ZFARM_SCHEDULER_STANDBY_SERVER_H_
#define ZFARM_SCHEDULER_STANDBY_SERVER_H_

// What a standby zfarm-scheduler serves on --listen while another one holds the
// lease: grpc.health.v1 NOT_SERVING (so a Kubernetes readiness probe or the REST
// gateway's /readyz fails) and, for every other method (JobService,
// WorkerService, AdminService, ...), UNAVAILABLE "scheduler <name> is a standby;
// the active one is <holder>", so clients and workers with a list of addresses
// try the next one. It redirects nothing and holds no state.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"

namespace zfarm::scheduler {

class StandbyServer {
 public:
  // Listens on `listen` (HOST:PORT, port 0 = any free port).
  static absl::StatusOr<std::unique_ptr<StandbyServer>> Start(
      const std::string& listen, std::shared_ptr<grpc::ServerCredentials> credentials);
  ~StandbyServer();  // Shutdown().

  // This scheduler's name and the holder of the lease, as the answers say them
  // ("" = not known yet).
  void SetName(const std::string& name);
  void SetActive(const std::string& holder);
  std::string Message() const;
  int port() const { return port_; }
  grpc::Server* grpc_server() { return server_.get(); }
  // Stops at once (a takeover: the active server binds the port next).
  void Shutdown();

 private:
  class Unavailable;
  StandbyServer() = default;
  int port_ = 0;
  mutable absl::Mutex mu_;
  std::string name_ ABSL_GUARDED_BY(mu_);
  std::string active_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Unavailable> service_;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_STANDBY_SERVER_H_
