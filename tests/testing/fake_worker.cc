#include "tests/testing/fake_worker.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "proto/base/files.h"
#include "proto/contract/rpc_status.h"
#include "proto/security/auth.h"

namespace zfarm::testing {

namespace v1 = ::zfarm::v1;

absl::StatusOr<std::unique_ptr<FakeWorker>> FakeWorker::Connect(
    std::shared_ptr<grpc::Channel> channel, const Options& o, absl::Duration timeout) {
  std::unique_ptr<FakeWorker> w(new FakeWorker);
  w->stub_ = v1::WorkerService::NewStub(channel);
  w->ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  security::AddBearerToken(&w->ctx_, o.token);
  w->stream_ = w->stub_->Connect(&w->ctx_);
  w->reader_ = std::thread([raw = w.get()] { raw->ReadLoop(); });
  if (!o.send_hello) return w;
  v1::WorkerMessage m;
  auto* h = m.mutable_hello();
  h->set_worker_name(o.name);
  h->set_version("test");
  h->set_device("cpu");
  h->set_device_name("fake");
  h->set_memory_total_bytes(o.memory_total_bytes);
  h->set_memory_free_bytes(o.memory_total_bytes);
  h->set_model(o.model);
  h->set_model_fingerprint("fake-fp");
  h->set_max_width_px(o.max_width_px);
  h->set_max_height_px(o.max_height_px);
  h->set_capacity(o.capacity);
  h->set_dtype(o.dtype);
  for (const auto& l : o.held_leases) *h->add_held_leases() = l;
  for (const auto& f : o.features) h->add_features(f);
  for (const auto& l : o.loras) *h->add_loras() = l;
  if (auto s = w->Send(m); !s.ok()) return s;
  auto welcome = w->NextMessage(v1::SchedulerMessage::kWelcome, timeout);
  if (!welcome.ok()) return welcome.status();
  return w;
}

FakeWorker::~FakeWorker() {
  Disconnect();
  if (reader_.joinable()) reader_.join();
}

void FakeWorker::ReadLoop() {
  v1::SchedulerMessage m;
  while (stream_->Read(&m)) {
    absl::MutexLock lock(&mu_);
    if (m.has_assignment()) {
      for (const auto& l : m.assignment().leases()) leases_.push_back(l);
    } else {
      messages_.push_back(m);
    }
  }
  grpc::Status s = stream_->Finish();
  absl::MutexLock lock(&mu_);
  ended_ = true;
  end_status_ = s;
}

absl::StatusOr<v1::Lease> FakeWorker::NextLease(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !leases_.empty() || ended_; };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (leases_.empty()) {
    return absl::DeadlineExceededError(ended_ ? "stream ended" : "no lease within the timeout");
  }
  v1::Lease l = std::move(leases_.front());
  leases_.pop_front();
  return l;
}

size_t FakeWorker::PendingLeases() {
  absl::MutexLock lock(&mu_);
  return leases_.size();
}

absl::StatusOr<v1::SchedulerMessage> FakeWorker::NextMessage(v1::SchedulerMessage::MsgCase kind,
                                                             absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto find = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto it = messages_.begin(); it != messages_.end(); ++it) {
      if (it->msg_case() == kind) return it;
    }
    return messages_.end();
  };
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return find() != messages_.end() || ended_;
  };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  auto it = find();
  if (it == messages_.end()) {
    return absl::DeadlineExceededError(absl::StrCat(
        "no message of kind ", kind, ended_ ? " (stream ended)" : " within the timeout"));
  }
  v1::SchedulerMessage m = std::move(*it);
  messages_.erase(it);
  return m;
}

absl::Status FakeWorker::Send(const v1::WorkerMessage& m) {
  absl::MutexLock lock(&write_mu_);
  if (writes_done_ || !stream_->Write(m)) return absl::UnavailableError("stream closed");
  return absl::OkStatus();
}

absl::Status FakeWorker::Heartbeat() {
  v1::WorkerMessage m;
  m.mutable_heartbeat()->set_memory_free_bytes(1);
  return Send(m);
}

absl::Status FakeWorker::HeartbeatActive(const std::vector<std::string>& active_loras) {
  v1::WorkerMessage m;
  m.mutable_heartbeat()->set_memory_free_bytes(1);
  for (const auto& name : active_loras) m.mutable_heartbeat()->add_active_loras(name);
  return Send(m);
}

absl::Status FakeWorker::Started(const v1::LeaseId& lease) {
  v1::WorkerMessage m;
  *m.mutable_started()->mutable_lease() = lease;
  return Send(m);
}

absl::Status FakeWorker::Progress(const v1::LeaseId& lease, int step, int total) {
  v1::WorkerMessage m;
  *m.mutable_progress()->mutable_lease() = lease;
  m.mutable_progress()->set_step(step);
  m.mutable_progress()->set_total_steps(total);
  return Send(m);
}

absl::Status FakeWorker::Fail(const v1::LeaseId& lease, v1::FailureReason reason, bool retryable,
                              const std::string& message) {
  v1::WorkerMessage m;
  *m.mutable_failure()->mutable_lease() = lease;
  m.mutable_failure()->mutable_error()->set_reason(reason);
  m.mutable_failure()->mutable_error()->set_retryable(retryable);
  m.mutable_failure()->mutable_error()->set_message(message);
  return Send(m);
}

absl::StatusOr<bool> FakeWorker::Commit(const v1::Lease& lease, const std::string& output_root,
                                        bool send_finalized) {
  namespace fs = std::filesystem;
  const std::string tmp_rel =
      absl::StrCat(lease.lease().job_id(), ".", lease.lease().attempt(), ".tmp");
  const fs::path tmp = fs::path(output_root) / tmp_rel;
  const fs::path final_path = fs::path(output_root) / lease.output_path();
  std::error_code ec;
  fs::create_directories(final_path.parent_path(), ec);
  {
    std::ofstream f(tmp, std::ios::binary);
    f << "\x89PNG\r\n\x1a\n" << lease.lease().job_id();
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", tmp.string()));
  }
  v1::WorkerMessage m;
  *m.mutable_commit()->mutable_lease() = lease.lease();
  m.mutable_commit()->set_temp_path(tmp_rel);
  absl::StatusOr<base::FileDigest> digest = base::DigestFile(tmp.string());
  if (!digest.ok()) return digest.status();
  m.mutable_commit()->mutable_result()->set_size_bytes(digest->size_bytes);
  m.mutable_commit()->mutable_result()->set_sha256(digest->sha256);
  m.mutable_commit()->mutable_result()->set_device_class("cpu");
  m.mutable_commit()->mutable_result()->set_dtype("float32");
  if (auto s = Send(m); !s.ok()) return s;
  auto reply = NextMessage(v1::SchedulerMessage::kCommitReply);
  if (!reply.ok()) return reply.status();
  if (!reply->commit_reply().accepted()) {
    fs::remove(tmp, ec);
    return false;
  }
  fs::rename(tmp, final_path, ec);
  if (ec) return absl::InternalError(absl::StrCat("rename: ", ec.message()));
  if (send_finalized) {
    v1::WorkerMessage f;
    *f.mutable_finalized()->mutable_lease() = lease.lease();
    if (auto s = Send(f); !s.ok()) return s;
  }
  return true;
}

absl::Status FakeWorker::RunToSuccess(const v1::Lease& lease, const std::string& output_root) {
  if (auto s = Started(lease.lease()); !s.ok()) return s;
  for (int i = 1; i <= lease.spec().steps(); ++i) {
    if (auto s = Progress(lease.lease(), i, lease.spec().steps()); !s.ok()) return s;
  }
  auto ok = Commit(lease, output_root);
  if (!ok.ok()) return ok.status();
  return *ok ? absl::OkStatus() : absl::AbortedError("commit refused");
}

void FakeWorker::Disconnect() {
  {
    absl::MutexLock lock(&write_mu_);
    if (!writes_done_ && stream_) stream_->WritesDone();
    writes_done_ = true;
  }
  ctx_.TryCancel();
}

grpc::Status FakeWorker::WaitForEnd(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ended = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return ended_; };
  if (!mu_.AwaitWithTimeout(absl::Condition(&ended), timeout)) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "stream did not end");
  }
  return end_status_;
}

}  // namespace zfarm::testing
