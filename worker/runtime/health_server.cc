#include "worker/runtime/health_server.h"

#include "absl/strings/str_cat.h"
#include "grpcpp/health_check_service_interface.h"

namespace zfarm::worker {

class HealthServer::Unimplemented : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
    class Reactor : public grpc::ServerGenericBidiReactor {
     public:
      Reactor() { Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "health and metrics only")); }
      void OnDone() override { delete this; }
    };
    return new Reactor;
  }
};

absl::StatusOr<std::unique_ptr<HealthServer>> HealthServer::Start(
    const std::string& address, std::shared_ptr<grpc::ServerCredentials> credentials) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 >= address.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--health-listen '", address, "': expected HOST:PORT"));
  }
  std::unique_ptr<HealthServer> h(new HealthServer);
  grpc::EnableDefaultHealthCheckService(true);
  h->generic_ = std::make_unique<Unimplemented>();
  grpc::ServerBuilder b;
  b.RegisterCallbackGenericService(h->generic_.get());
  b.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a busy port is an error
  int port = 0;
  b.AddListeningPort(address, credentials ? credentials : grpc::InsecureServerCredentials(),
                     &port);
  h->server_ = b.BuildAndStart();
  if (h->server_ == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("--health-listen ", address, ": cannot bind"));
  }
  h->address_ = absl::StrCat(address.substr(0, colon), ":", port);
  h->SetServing(false);
  return h;
}

HealthServer::~HealthServer() {
  if (server_) server_->Shutdown();
}

void HealthServer::SetServing(bool serving) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  health->SetServingStatus("", serving);
  health->SetServingStatus(kLivenessService, true);
}

}  // namespace zfarm::worker
