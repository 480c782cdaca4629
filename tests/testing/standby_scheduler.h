#ifndef ZFARM_TESTS_TESTING_STANDBY_SCHEDULER_H_
#define ZFARM_TESTS_TESTING_STANDBY_SCHEDULER_H_

// A stand-in for a standby scheduler on loopback: every RPC (JobService,
// AdminService, WorkerService.Connect) is refused with UNAVAILABLE naming it a
// standby, and grpc.health.v1 answers NOT_SERVING. It counts what it refused, so a
// test can show that a client or a worker tried it and moved on to the next address.
//
//   testing::StandbyScheduler standby;
//   Run({"submit", "--prompt", "x", "--scheduler", standby.address() + "," + live});
//
// Thread-safe.

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"

namespace zfarm::testing {

class StandbyScheduler {
 public:
  StandbyScheduler() {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterCallbackGenericService(&refuser_);
    server_ = builder.BuildAndStart();
    server_->GetHealthCheckService()->SetServingStatus(false);
    address_ = absl::StrCat("127.0.0.1:", port);
  }
  ~StandbyScheduler() {
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
  }
  StandbyScheduler(const StandbyScheduler&) = delete;
  StandbyScheduler& operator=(const StandbyScheduler&) = delete;

  const std::string& address() const { return address_; }
  // RPCs refused so far (health checks not counted).
  int refused() const { return refuser_.refused.load(); }

 private:
  struct Refuser final : grpc::CallbackGenericService {
    grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
      ++refused;
      struct Refusal final : grpc::ServerGenericBidiReactor {
        Refusal() {
          Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "scheduler standby-0 is a standby; the active one is elsewhere"));
        }
        void OnDone() override { delete this; }
      };
      return new Refusal;
    }
    std::atomic<int> refused{0};
  };

  Refuser refuser_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_STANDBY_SCHEDULER_H_
