#ifndef ZFARM_WORKER_RUNTIME_HEALTH_SERVER_H_
#define ZFARM_WORKER_RUNTIME_HEALTH_SERVER_H_

// The worker's probe endpoints: grpc.health.v1 on --health-listen (SERVING only
// while the worker is warm, connected and healthy — what Kubernetes' native gRPC
// probes check) and Prometheus /metrics over HTTP on --metrics-listen.
//
//   ZFARM_ASSIGN_OR_RETURN(auto h, HealthServer::Start("0.0.0.0:8081", nullptr));
//   h->SetServing(worker->Serving());
//
// Thread-safe.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/grpcpp.h"

namespace zfarm::worker {

// The service name a liveness probe asks for: SERVING for as long as the process answers gRPC,
// whatever the readiness state. The empty name ("") carries readiness (SERVING only when warm,
// connected and healthy), so a drained or warming worker is taken out of rotation, never killed.
inline constexpr char kLivenessService[] = "zfarm.v1.Liveness";

class HealthServer {
 public:
  // Binds `address` (HOST:PORT; port 0 picks one). `credentials` null = plaintext.
  static absl::StatusOr<std::unique_ptr<HealthServer>> Start(
      const std::string& address, std::shared_ptr<grpc::ServerCredentials> credentials);
  ~HealthServer();
  HealthServer(const HealthServer&) = delete;
  HealthServer& operator=(const HealthServer&) = delete;

  // Sets readiness (the "" service); kLivenessService stays SERVING.
  void SetServing(bool serving);
  // The bound address, e.g. "127.0.0.1:43121".
  const std::string& address() const { return address_; }

 private:
  HealthServer() = default;
  // Answers any other method UNIMPLEMENTED; makes this a callback-API server.
  class Unimplemented;
  std::unique_ptr<Unimplemented> generic_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_RUNTIME_HEALTH_SERVER_H_
