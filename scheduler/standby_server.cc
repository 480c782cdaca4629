#include "scheduler/standby_server.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"

namespace zfarm::scheduler {

// Finishes every call with UNAVAILABLE and the standby message.
class StandbyServer::Unavailable final : public grpc::CallbackGenericService {
 public:
  explicit Unavailable(const StandbyServer* owner) : owner_(owner) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
    class Reactor final : public grpc::ServerGenericBidiReactor {
     public:
      explicit Reactor(std::string message) {
        Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, std::move(message)));
      }
      void OnDone() override { delete this; }
    };
    return new Reactor(owner_->Message());
  }

 private:
  const StandbyServer* owner_;
};

absl::StatusOr<std::unique_ptr<StandbyServer>> StandbyServer::Start(
    const std::string& listen, std::shared_ptr<grpc::ServerCredentials> credentials) {
  std::unique_ptr<StandbyServer> s(new StandbyServer);
  s->service_ = std::make_unique<Unavailable>(s.get());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(listen, std::move(credentials), &s->port_);
  builder.RegisterCallbackGenericService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("--listen: cannot listen on ", listen));
  }
  s->server_->GetHealthCheckService()->SetServingStatus(false);
  return s;
}

StandbyServer::~StandbyServer() { Shutdown(); }

void StandbyServer::SetName(const std::string& name) {
  absl::MutexLock lock(&mu_);
  name_ = name;
}

void StandbyServer::SetActive(const std::string& holder) {
  absl::MutexLock lock(&mu_);
  active_ = holder;
}

std::string StandbyServer::Message() const {
  absl::MutexLock lock(&mu_);
  return absl::StrCat("scheduler ", name_, " is a standby; the active one is ",
                      active_.empty() ? "not known yet" : active_);
}

void StandbyServer::Shutdown() {
  if (!server_) return;
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
  server_.reset();
}

}  // namespace zfarm::scheduler
