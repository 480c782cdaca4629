#include "proto/contract/error_details.h"

#include <cstdint>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "zfarm/v1/error_details.pb.h"

namespace zfarm::contract {
namespace {

// Payload type URLs: each payload is the serialized message the URL names.
constexpr char kRetryInfoUrl[] = "type.googleapis.com/zfarm.v1.RetryInfo";
constexpr char kConflictUrl[] = "type.googleapis.com/zfarm.v1.RequestIdConflict";

template <typename Message>
std::optional<Message> Payload(const absl::Status& status, absl::string_view url) {
  auto bytes = status.GetPayload(url);  // absl::optional (Debian builds absl as C++14)
  if (!bytes) return std::nullopt;
  Message m;
  if (!m.ParseFromString(std::string(*bytes))) return std::nullopt;
  return m;
}

template <typename Message>
void SetPayload(absl::Status& status, absl::string_view url, const Message& m) {
  status.SetPayload(url, absl::Cord(m.SerializeAsString()));
}

}  // namespace

absl::Status WithRetryDelay(absl::Status status, absl::Duration delay) {
  if (status.ok()) return status;
  v1::RetryInfo info;
  info.set_retry_delay_ms(absl::ToInt64Milliseconds(delay));
  SetPayload(status, kRetryInfoUrl, info);
  return status;
}

absl::Status RetryLater(absl::string_view what, absl::Duration delay) {
  return WithRetryDelay(
      absl::ResourceExhaustedError(
          absl::StrCat(what, "; retry after ", absl::ToInt64Milliseconds(delay), " ms")),
      delay);
}

std::optional<absl::Duration> RetryDelay(const absl::Status& status) {
  std::optional<v1::RetryInfo> info = Payload<v1::RetryInfo>(status, kRetryInfoUrl);
  if (!info) return std::nullopt;
  return absl::Milliseconds(info->retry_delay_ms());
}

absl::Status RequestIdConflictError(absl::string_view field, const RequestIdConflict& conflict) {
  absl::Status status = absl::InvalidArgumentError(
      absl::StrCat(field, "request_id: \"", conflict.request_id, "\" was already used for job ",
                   conflict.job_id, " with a different spec"));
  v1::RequestIdConflict m;
  m.set_request_id(conflict.request_id);
  m.set_job_id(conflict.job_id);
  SetPayload(status, kConflictUrl, m);
  return status;
}

std::optional<RequestIdConflict> FindRequestIdConflict(const absl::Status& status) {
  std::optional<v1::RequestIdConflict> m = Payload<v1::RequestIdConflict>(status, kConflictUrl);
  if (!m) return std::nullopt;
  return RequestIdConflict{m->request_id(), m->job_id()};
}

absl::Status CopyErrorDetails(const absl::Status& from, absl::Status to) {
  if (to.ok()) return to;
  for (absl::string_view url : {kRetryInfoUrl, kConflictUrl}) {
    if (auto p = from.GetPayload(url)) to.SetPayload(url, *std::move(p));
  }
  return to;
}

std::string SerializeErrorDetails(const absl::Status& status) {
  v1::ErrorDetails details;
  if (auto info = Payload<v1::RetryInfo>(status, kRetryInfoUrl)) {
    *details.mutable_retry_info() = *std::move(info);
  }
  if (auto conflict = Payload<v1::RequestIdConflict>(status, kConflictUrl)) {
    *details.mutable_request_id_conflict() = *std::move(conflict);
  }
  return details.ByteSizeLong() == 0 ? std::string() : details.SerializeAsString();
}

absl::Status WithSerializedErrorDetails(absl::Status status, absl::string_view serialized) {
  v1::ErrorDetails details;
  if (status.ok() || serialized.empty() ||
      !details.ParseFromArray(serialized.data(), static_cast<int>(serialized.size()))) {
    return status;
  }
  if (details.has_retry_info()) SetPayload(status, kRetryInfoUrl, details.retry_info());
  if (details.has_request_id_conflict()) {
    SetPayload(status, kConflictUrl, details.request_id_conflict());
  }
  return status;
}

}  // namespace zfarm::contract
