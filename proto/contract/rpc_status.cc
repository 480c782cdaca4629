#include "proto/contract/rpc_status.h"

#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "proto/contract/error_details.h"

namespace zfarm::contract {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

void AddErrorTrailers(grpc::ServerContextBase* ctx, const absl::Status& status) {
  if (std::string details = SerializeErrorDetails(status); !details.empty()) {
    ctx->AddTrailingMetadata(kErrorDetailsTrailer, details);
  }
  if (std::optional<absl::Duration> delay = RetryDelay(status)) {
    ctx->AddTrailingMetadata("retry-after-ms", absl::StrCat(absl::ToInt64Milliseconds(*delay)));
  }
}

absl::Status FromGrpcCall(const grpc::Status& status, const grpc::ClientContext& ctx) {
  absl::Status s = FromGrpcStatus(status);
  if (s.ok()) return s;
  const auto& trailers = ctx.GetServerTrailingMetadata();
  auto it = trailers.find(kErrorDetailsTrailer);
  if (it == trailers.end()) return s;
  return WithSerializedErrorDetails(std::move(s),
                                    absl::string_view(it->second.data(), it->second.size()));
}

}  // namespace zfarm::contract
