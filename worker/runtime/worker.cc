#include "worker/runtime/worker.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "glog/logging.h"
#include "google/protobuf/util/time_util.h"
#include "proto/base/files.h"
#include "proto/base/monotonic_wait.h"
#include "proto/base/plain_name.h"
#include "proto/base/status_macros.h"
#include "proto/base/version.h"
#include "proto/contract/failure_policy.h"
#include "proto/security/paths.h"
#include "worker/io/file_util.h"
#include "worker/io/image_decode.h"
#include "worker/io/image_file.h"
#include "worker/runtime/metrics.h"

namespace zfarm::worker {

namespace v1 = ::zfarm::v1;
using ::zfarm::base::AwaitMonotonic;
using ::zfarm::base::PlainNameProblem;
using ::zfarm::contract::CountsAgainstDevice;
using ::zfarm::contract::IsRetryable;

struct Worker::Output {
  v1::Lease lease;
  Image image;
  GenerateRequest request;
  absl::Time render_start;
};

namespace {

// The file format a job's result is written in (the scheduler refuses unknown values).
ImageFormat FormatOf(v1::OutputFormat f) {
  switch (f) {
    case v1::OUTPUT_FORMAT_JPEG:
      return ImageFormat::kJpeg;
    case v1::OUTPUT_FORMAT_WEBP:
      return ImageFormat::kWebp;
    default:
      return ImageFormat::kPng;
  }
}

// The lease's output path (the scheduler's decision) must stay inside the output
// root (paths.h) and name the format.
absl::Status CheckOutputPath(const std::string& rel, absl::string_view extension) {
  ZFARM_RETURN_IF_ERROR(security::CheckRelativePath("lease.output_path", rel));
  if (!absl::EndsWith(rel, extension)) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease.output_path '", rel, "': must end in ", extension));
  }
  return absl::OkStatus();
}

// The job's LoRAs, resolved by name in the worker's --lora-dir.
absl::Status ResolveLoras(const v1::JobSpec& spec, LoraCatalog* catalog, GenerateRequest* req) {
  for (int i = 0; i < spec.loras_size(); ++i) {
    const v1::LoraRef& ref = spec.loras(i);
    const std::string field = absl::StrCat("spec.loras[", i, "].name");
    if (std::string why = PlainNameProblem(ref.name()); !why.empty() || ref.name().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": ", why.empty() ? "is empty" : why));
    }
    if (catalog == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": LoRA '", ref.name(), "' requested but this worker has no --lora-dir"));
    }
    ZFARM_ASSIGN_OR_RETURN(LoraRequest r,
                           catalog->Resolve(ref.name(), ref.has_scale() ? ref.scale() : 1.0f));
    req->loras.push_back(std::move(r));
  }
  return absl::OkStatus();
}

// One input picture of the lease: its bytes decoded (the scheduler resolves --input-root
// paths into bytes before leasing), with the sha256 of the file for the image metadata.
absl::StatusOr<InputPicture> DecodeInput(const v1::ImageInput& in, const std::string& field) {
  if (in.source_case() != v1::ImageInput::kData) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": the lease carries no picture bytes (", field,
        ".path is resolved by the scheduler; workers only decode ", field, ".data)"));
  }
  ZFARM_ASSIGN_OR_RETURN(DecodedImage d, DecodeImage(in.data(), field));
  return InputPicture{d.width, d.height, std::move(d.rgb), base::Sha256Hex(in.data())};
}

// The job's init_image / mask_image / strength. Size, strength and mask rules are the
// pipeline's (Pipeline::Generate refuses them INVALID_ARGUMENT naming the field).
absl::Status ResolvePictures(const v1::JobSpec& spec, GenerateRequest* req) {
  if (spec.has_init_image()) {
    ZFARM_ASSIGN_OR_RETURN(req->init_image, DecodeInput(spec.init_image(), "spec.init_image"));
  }
  if (spec.has_mask_image()) {
    ZFARM_ASSIGN_OR_RETURN(req->mask_image, DecodeInput(spec.mask_image(), "spec.mask_image"));
  }
  if (spec.has_strength()) req->strength = spec.strength();
  if (spec.has_control()) {
    const v1::ControlInput& c = spec.control();
    ControlRequest cr;
    ZFARM_ASSIGN_OR_RETURN(cr.image, DecodeInput(c.image(), "spec.control.image"));
    if (c.has_conditioning_scale()) cr.scale = c.conditioning_scale();
    if (c.has_start()) cr.start = c.start();
    if (c.has_end()) cr.end = c.end();
    req->control = std::move(cr);
  }
  return absl::OkStatus();
}

GenerateRequest RequestFor(const v1::JobSpec& spec) {
  GenerateRequest req;
  req.prompt = spec.prompt();
  req.negative_prompt = spec.negative_prompt();
  req.width = spec.width_px();
  req.height = spec.height_px();
  req.steps = spec.steps();
  req.seed = spec.seed();
  req.guidance = spec.guidance_scale();
  return req;
}

std::string HumanBytes(int64_t b) {
  if (b < (int64_t{1} << 20)) return absl::StrCat(b >> 10, " KiB");
  if (b < (int64_t{1} << 30)) return absl::StrFormat("%.1f MiB", b / 1048576.0);
  return absl::StrFormat("%.1f GiB", b / 1073741824.0);
}

bool SameLease(const v1::LeaseId& a, const v1::LeaseId& b) {
  return a.job_id() == b.job_id() && a.attempt() == b.attempt();
}

// The commit request for `file`, written as `temp_name` beside the lease's output path.
v1::CommitRequest CommitRequestFor(const v1::Lease& lease, const std::string& temp_name,
                                   const std::string& file, ImageFormat format, double render_s,
                                   const Worker::Options& o) {
  v1::CommitRequest req;
  *req.mutable_lease() = lease.lease();
  const std::string& final_rel = lease.output_path();
  const std::string rel_dir = std::filesystem::path(final_rel).parent_path().string();
  req.set_temp_path(rel_dir.empty() ? temp_name : absl::StrCat(rel_dir, "/", temp_name));
  // result.path stays empty: the path is the lease's, which the scheduler decided.
  auto* r = req.mutable_result();
  r->set_size_bytes(static_cast<int64_t>(file.size()));
  r->set_sha256(base::Sha256Hex(file));
  r->set_media_type(std::string(ImageMediaType(format)));
  r->set_device_class(o.device_class);
  r->set_dtype(o.dtype);
  r->set_model_fingerprint(o.model_fingerprint);
  r->set_render_time_ms(static_cast<int64_t>(render_s * 1000));
  return req;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(Options options,
                                                       std::unique_ptr<Renderer> renderer,
                                                       SchedulerLink::Options link) {
  if (options.name.empty()) return absl::InvalidArgumentError("--name: must not be empty");
  if (options.output_root.empty()) {
    return absl::InvalidArgumentError("--output-root: required");
  }
  std::error_code ec;
  if (!std::filesystem::is_directory(options.output_root, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--output-root ", options.output_root, ": not a directory"));
  }
  if (::access(options.output_root.c_str(), W_OK) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("--output-root ", options.output_root, ": not writable by this user"));
  }
  if (options.prefetch < 0 || options.prefetch > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("--prefetch: ", options.prefetch, " is outside [0, 8]"));
  }
  if (renderer == nullptr) return absl::InvalidArgumentError("renderer: null");
  if (link.targets.empty()) return absl::InvalidArgumentError("--scheduler: required");
  std::unique_ptr<Worker> w(new Worker(std::move(options), std::move(renderer)));
  w->link_ = std::make_unique<SchedulerLink>(std::move(link), w.get());
  return w;
}

Worker::Worker(Options options, std::unique_ptr<Renderer> renderer)
    : options_(std::move(options)), renderer_(std::move(renderer)) {
  memory_ = renderer_->Memory();
}

Worker::~Worker() { Shutdown(absl::ZeroDuration()); }

void Worker::Start() {
  if (metrics_ != nullptr) {
    metrics_->SetMemory(memory_);
    metrics_->SetServing(false);
  }
  inference_thread_ = std::thread([this] { InferenceLoop(); });
  output_thread_ = std::thread([this] { OutputLoop(); });
  link_->Start();
}

bool Worker::Serving() {
  absl::MutexLock lock(&mu_);
  return connected_ && healthy_ && !draining_ && !stopping_;
}

Worker::Stats Worker::stats() {
  absl::MutexLock lock(&mu_);
  Stats s = stats_;
  s.healthy = healthy_;
  s.connected = connected_;
  s.draining = draining_;
  return s;
}

// ------------------------------------------------------------------ session

v1::WorkerHello Worker::MakeHello() {
  std::vector<LoraCatalog::Item> loras;
  if (options_.loras != nullptr) {
    options_.loras->Refresh();  // the hello carries the whole catalogue
    loras = options_.loras->List();
  }
  absl::MutexLock lock(&mu_);
  v1::WorkerHello h;
  for (const LoraCatalog::Item& l : loras) {
    v1::LoraInfo* info = h.add_loras();
    info->set_name(l.name);
    info->set_sha256(l.sha256);
  }
  h.set_worker_name(options_.name);
  h.set_version(ZFARM_VERSION);
  h.set_device(options_.device);
  h.set_device_name(options_.device_name);
  h.set_memory_total_bytes(memory_.total);
  h.set_memory_free_bytes(memory_.free);
  h.set_model(options_.model);
  h.set_model_fingerprint(options_.model_fingerprint);
  h.set_max_width_px(options_.max_width_px);
  h.set_max_height_px(options_.max_height_px);
  h.set_capacity(1 + options_.prefetch);
  h.set_dtype(options_.dtype);
  // Job kinds beyond text-to-image: the pipeline renders both; LoRAs need a --lora-dir.
  h.add_features("img2img");
  h.add_features("inpaint");
  if (options_.loras != nullptr) h.add_features("lora");
  if (!options_.controlnet.empty()) h.add_features("controlnet");
  if (running_) *h.add_held_leases() = *running_;
  for (const auto& [id, c] : commits_) *h.add_held_leases() = c.request.lease();
  return h;
}

void Worker::OnWelcome(const v1::Welcome& welcome) {
  absl::MutexLock lock(&mu_);
  // Replay under mu_ so that no progress of the running job overtakes its Started.
  if (running_) {
    v1::WorkerMessage m;
    *m.mutable_started()->mutable_lease() = *running_;
    link_->Send(m);
  }
  for (const auto& [id, c] : commits_) {
    v1::WorkerMessage m;
    *m.mutable_commit() = c.request;
    link_->Send(m);
  }
  if (!healthy_) {
    v1::WorkerMessage m;
    m.mutable_status()->set_healthy(false);
    m.mutable_status()->set_message("unhealthy since before this session");
    link_->Send(m);
  }
  connected_ = true;
  LOG(INFO) << "event=worker_welcomed worker=" << options_.name
            << " session=" << welcome.session_id() << " held=" << (running_ ? 1 : 0) << "+"
            << commits_.size();
  if (metrics_ != nullptr) metrics_->SetServing(healthy_ && !draining_);
}

void Worker::OnDisconnected(const absl::Status& why) {
  absl::MutexLock lock(&mu_);
  connected_ = false;
  if (metrics_ != nullptr) metrics_->SetServing(false);
  // Unstarted leases are requeued by the scheduler when it loses us.
  if (!pending_.empty()) {
    LOG(WARNING) << "event=prefetched_dropped count=" << pending_.size() << " why=\""
                 << why.ToString() << "\"";
    pending_.clear();
  }
}

v1::WorkerHeartbeat Worker::MakeHeartbeat() {
  v1::WorkerHeartbeat hb;
  if (options_.loras != nullptr && options_.loras->Refresh()) {
    for (const LoraCatalog::Item& l : options_.loras->List()) {
      v1::LoraInfo* info = hb.mutable_lora_catalog()->add_loras();
      info->set_name(l.name);
      info->set_sha256(l.sha256);
    }
    LOG(INFO) << "event=lora_catalog_changed loras=" << hb.lora_catalog().loras_size();
  }
  absl::MutexLock lock(&mu_);
  for (const std::string& name : active_loras_) hb.add_active_loras(name);
  hb.set_memory_free_bytes(memory_.free);
  hb.set_memory_peak_bytes(memory_.peak);
  return hb;
}

void Worker::OnMessage(const v1::SchedulerMessage& msg) {
  switch (msg.msg_case()) {
    case v1::SchedulerMessage::kAssignment:
      OnAssignment(msg.assignment());
      break;
    case v1::SchedulerMessage::kCancel:
      OnCancel(msg.cancel());
      break;
    case v1::SchedulerMessage::kCommitReply:
      PostOutput([this, reply = msg.commit_reply()] { HandleCommitReply(reply); });
      break;
    case v1::SchedulerMessage::kDrain:
      OnDrain();
      break;
    case v1::SchedulerMessage::kResume:
      OnResume();
      break;
    case v1::SchedulerMessage::kWelcome:
    case v1::SchedulerMessage::MSG_NOT_SET:
      LOG(WARNING) << "event=unexpected_scheduler_message case=" << msg.msg_case();
      break;
  }
}

void Worker::OnAssignment(const v1::Assignment& assignment) {
  std::vector<v1::LeaseId> refused;
  {
    absl::MutexLock lock(&mu_);
    for (const v1::Lease& l : assignment.leases()) {
      if (draining_ || stopping_ || !healthy_) {
        refused.push_back(l.lease());
      } else {
        pending_.emplace_back(l, absl::Now());
      }
    }
  }
  for (const auto& l : refused) {
    Fail(l, v1::FAILURE_REASON_WORKER_LOST, true, "worker is draining or unhealthy");
  }
}

void Worker::OnCancel(const v1::CancelLease& c) {
  const v1::FailureReason reason = c.reason().reason() == v1::FAILURE_REASON_UNSPECIFIED
                                       ? v1::FAILURE_REASON_CANCELLED_BY_CLIENT
                                       : c.reason().reason();
  bool was_pending = false;
  {
    absl::MutexLock lock(&mu_);
    if (running_ && SameLease(*running_, c.lease())) {
      running_cancel_reason_ = reason;
      running_cancel_->Cancel();
    }
    for (auto it = pending_.begin(); it != pending_.end(); ++it) {
      if (SameLease(it->first.lease(), c.lease())) {
        pending_.erase(it);
        was_pending = true;
        break;
      }
    }
  }
  LOG(INFO) << "event=cancel_received job=" << c.lease().job_id()
            << " attempt=" << c.lease().attempt() << " pending=" << was_pending;
  if (was_pending) Fail(c.lease(), reason, false, "cancelled before it started");
}

void Worker::OnDrain() {
  std::deque<std::pair<v1::Lease, absl::Time>> back;
  {
    absl::MutexLock lock(&mu_);
    drain_requested_ = draining_ = true;
    back.swap(pending_);
    if (metrics_ != nullptr) metrics_->SetServing(false);
  }
  LOG(INFO) << "event=drain_received worker=" << options_.name << " handed_back=" << back.size();
  for (const auto& [l, t] : back) {
    Fail(l.lease(), v1::FAILURE_REASON_WORKER_LOST, true, "worker draining");
  }
}

void Worker::OnResume() {
  absl::MutexLock lock(&mu_);
  if (!drain_requested_ || shutting_down_) return;  // a shutdown is not undone
  drain_requested_ = draining_ = false;
  if (metrics_ != nullptr) metrics_->SetServing(connected_ && healthy_);
  LOG(INFO) << "event=resume_received worker=" << options_.name;
}

void Worker::Fail(const v1::LeaseId& lease, v1::FailureReason reason, bool retryable,
                  const std::string& message, int64_t memory_required) {
  LOG(WARNING) << "event=job_failed job=" << lease.job_id() << " attempt=" << lease.attempt()
               << " reason=" << v1::FailureReason_Name(reason) << " retryable=" << retryable
               << " message=\"" << message << "\"";
  v1::WorkerMessage m;
  auto* f = m.mutable_failure();
  *f->mutable_lease() = lease;
  f->mutable_error()->set_reason(reason);
  f->mutable_error()->set_message(message);
  f->mutable_error()->set_retryable(retryable);
  f->set_memory_required_bytes(memory_required);
  link_->Send(m);  // lost if disconnected: the scheduler then requeues (worker lost)
}

void Worker::SendStatus(bool healthy, const std::string& message) {
  v1::WorkerMessage m;
  m.mutable_status()->set_healthy(healthy);
  m.mutable_status()->set_message(message);
  link_->Send(m);
}

void Worker::CountFailure(v1::FailureReason reason) {
  if (metrics_ != nullptr) metrics_->CountFailure(v1::FailureReason_Name(reason));
  if (reason == v1::FAILURE_REASON_CANCELLED_BY_CLIENT ||
      reason == v1::FAILURE_REASON_DEADLINE_EXCEEDED) {
    return;
  }
  std::deque<std::pair<v1::Lease, absl::Time>> back;
  {
    absl::MutexLock lock(&mu_);
    ++stats_.failures;
    if (!CountsAgainstDevice(reason)) return;
    if (++consecutive_failures_ < options_.unhealthy_after_failures || !healthy_) return;
    healthy_ = false;
    back.swap(pending_);
    if (metrics_ != nullptr) metrics_->SetServing(false);
  }
  LOG(ERROR) << "event=worker_unhealthy worker=" << options_.name
             << " failures_in_a_row=" << options_.unhealthy_after_failures;
  SendStatus(false, absl::StrCat(options_.unhealthy_after_failures, " failures in a row"));
  for (const auto& [l, t] : back) {
    Fail(l.lease(), v1::FAILURE_REASON_WORKER_LOST, true, "worker unhealthy");
  }
}

// ---------------------------------------------------------------- inference

void Worker::InferenceLoop() {
  int self_tests = 0;
  // When the next self-test of an unhealthy worker is due (monotonic clock:
  // a wall-clock step must not postpone or hurry it); max() = none planned.
  using Steady = std::chrono::steady_clock;
  Steady::time_point self_test_at = Steady::time_point::max();
  for (;;) {
    v1::Lease lease;
    absl::Time queued;
    bool self_test = false;
    {
      absl::MutexLock lock(&mu_);
      if (!healthy_ && self_test_at == Steady::time_point::max()) {
        self_test_at = Steady::now() + absl::ToChronoNanoseconds(options_.self_test_delay *
                                                                 (1 << std::min(self_tests, 5)));
      }
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || (healthy_ && !pending_.empty());
      };
      AwaitMonotonic(&mu_, absl::Condition(&ready),
                     healthy_ ? absl::InfiniteDuration()
                              : absl::FromChrono(std::max(self_test_at - Steady::now(),
                                                          Steady::duration::zero())));
      if (stopping_) return;
      if (!healthy_) {
        if (Steady::now() < self_test_at) continue;
        self_test = true;
      } else {
        self_tests = 0;
        self_test_at = Steady::time_point::max();
        lease = std::move(pending_.front().first);
        queued = pending_.front().second;
        pending_.pop_front();
      }
    }
    if (self_test) {
      ++self_tests;
      self_test_at = Steady::time_point::max();
      RunSelfTest();
      continue;
    }
    RenderLease(lease, queued);
  }
}

void Worker::RunSelfTest() {
  CancelToken never;
  absl::StatusOr<Image> img = renderer_->Render(options_.self_test, nullptr, &never);
  if (!img.ok()) {
    LOG(ERROR) << "event=self_test_failed worker=" << options_.name << " status=\""
               << img.status().ToString() << "\"";
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    healthy_ = true;
    consecutive_failures_ = 0;
    memory_ = renderer_->Memory();
    active_loras_ = renderer_->ActiveLoras();
    if (metrics_ != nullptr) metrics_->SetServing(connected_ && !draining_);
  }
  LOG(INFO) << "event=self_test_passed worker=" << options_.name;
  SendStatus(true, "self-test passed");
}

// A render the inference thread runs now, as its step callback sees it.
struct Worker::RunningRender {
  v1::LeaseId id;
  absl::Time deadline = absl::InfiniteFuture();
  std::shared_ptr<CancelToken> cancel;
  // The previous image's end when this lease was already waiting for it (busy), else
  // InfiniteFuture: the start of the first-step gap.
  absl::Time busy_since = absl::InfiniteFuture();
  absl::Time last_step;
};

void Worker::FailLease(const v1::LeaseId& lease, v1::FailureReason reason, bool retryable,
                       const std::string& message) {
  Fail(lease, reason, retryable, message);
  CountFailure(reason);
}

std::optional<GenerateRequest> Worker::RequestForLease(const v1::Lease& lease) {
  const v1::LeaseId& id = lease.lease();
  const v1::JobSpec& spec = lease.spec();
  const absl::string_view extension = ImageFormatExtension(FormatOf(spec.output_format()));
  if (absl::Status s = CheckOutputPath(lease.output_path(), extension); !s.ok()) {
    FailLease(id, v1::FAILURE_REASON_INVALID_REQUEST, false, std::string(s.message()));
    return std::nullopt;
  }
  if (absl::Status s = CheckFreeSpace(spec); !s.ok()) {
    FailLease(id, v1::FAILURE_REASON_OUTPUT_ERROR, true, std::string(s.message()));
    return std::nullopt;
  }
  GenerateRequest req = RequestFor(spec);
  absl::Status s = ResolveLoras(spec, options_.loras.get(), &req);
  if (s.ok()) s = ResolvePictures(spec, &req);
  if (!s.ok()) {
    FailLease(id, v1::FAILURE_REASON_INVALID_REQUEST, false, std::string(s.message()));
    return std::nullopt;
  }
  return req;
}

absl::Status Worker::CheckFreeSpace(const v1::JobSpec& spec) const {
  // The raw image size is a safe upper bound for the encoded file.
  const int64_t raw = int64_t{spec.width_px()} * spec.height_px() * 3;
  struct statvfs vfs {};
  if (::statvfs(options_.output_root.c_str(), &vfs) != 0) return absl::OkStatus();
  const int64_t avail = static_cast<int64_t>(vfs.f_bavail) * static_cast<int64_t>(vfs.f_frsize);
  if (avail >= options_.min_free_disk_bytes + raw) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("output disk full: ", options_.output_root, " has ", HumanBytes(avail),
                   " free, below --min-free-disk-mb ", options_.min_free_disk_bytes >> 20,
                   " MiB plus the image's ", HumanBytes(raw)));
}

void Worker::BeginRender(RunningRender& run, absl::Time queued_since) {
  absl::MutexLock lock(&mu_);
  running_ = run.id;
  running_cancel_ = run.cancel;
  running_cancel_reason_ = v1::FAILURE_REASON_CANCELLED_BY_CLIENT;
  // Busy: this lease was already here when the previous image came out.
  if (queued_since <= last_image_done_) {
    run.busy_since = last_image_done_;
    const double gap = absl::ToDoubleSeconds(run.last_step - last_image_done_);
    stats_.gap_seconds.push_back(gap);
    if (metrics_ != nullptr) metrics_->ObserveGap(gap);
  }
  v1::WorkerMessage m;
  *m.mutable_started()->mutable_lease() = run.id;
  if (connected_) link_->Send(m);
}

void Worker::PrepareNextCaption() {
  // Once per pending job: the device is ours between two of this job's steps.
  std::optional<v1::JobSpec> next;
  {
    absl::MutexLock lock(&mu_);
    if (!pending_.empty() && pending_.front().first.lease().job_id() != prepared_job_) {
      prepared_job_ = pending_.front().first.lease().job_id();
      next = pending_.front().first.spec();
    }
  }
  if (!next) return;
  absl::Status ps = renderer_->Prepare(RequestFor(*next));
  if (!ps.ok()) LOG(WARNING) << "event=prepare_failed status=\"" << ps.ToString() << "\"";
}

void Worker::OnStep(RunningRender& run, int step, int total) {
  const absl::Time now = absl::Now();
  if (metrics_ != nullptr && step > 1) {
    metrics_->ObserveStep(absl::ToDoubleSeconds(now - run.last_step));
  }
  run.last_step = now;
  PrepareNextCaption();
  absl::MutexLock lock(&mu_);
  if (step == 1 && run.busy_since != absl::InfiniteFuture()) {
    stats_.first_step_gap_seconds.push_back(absl::ToDoubleSeconds(now - run.busy_since));
  }
  if (now >= run.deadline && !run.cancel->cancelled()) {
    running_cancel_reason_ = v1::FAILURE_REASON_DEADLINE_EXCEEDED;
    run.cancel->Cancel();
  }
  if (!connected_) return;
  v1::WorkerMessage m;
  auto* p = m.mutable_progress();
  *p->mutable_lease() = run.id;
  p->set_step(step);
  p->set_total_steps(total);
  link_->Send(m);
}

v1::FailureReason Worker::EndRender(bool rendered) {
  const DeviceMemory mem = renderer_->Memory();
  std::vector<std::string> active = renderer_->ActiveLoras();
  v1::FailureReason cancel_reason;
  {
    absl::MutexLock lock(&mu_);
    memory_ = mem;
    active_loras_ = std::move(active);
    cancel_reason = running_cancel_reason_;
    if (rendered) {
      last_image_done_ = absl::Now();
      ++outputs_in_flight_;
    }
    running_.reset();
    running_cancel_.reset();
  }
  if (metrics_ != nullptr) metrics_->SetMemory(mem);
  return cancel_reason;
}

Worker::RenderFailure Worker::FailureOf(const absl::Status& s, v1::FailureReason cancel_reason) {
  v1::FailureReason reason = v1::FAILURE_REASON_MODEL_ERROR;
  switch (s.code()) {
    case absl::StatusCode::kCancelled:
      reason = cancel_reason;
      break;
    case absl::StatusCode::kResourceExhausted:
      reason = v1::FAILURE_REASON_OUT_OF_MEMORY;
      break;
    case absl::StatusCode::kInvalidArgument:
      reason = v1::FAILURE_REASON_INVALID_REQUEST;
      break;
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnavailable:
      reason = v1::FAILURE_REASON_INTERNAL;
      break;
    default:
      break;
  }
  // Internal errors are transient (another attempt may succeed); the rest is policy.
  return {reason, IsRetryable(reason, reason == v1::FAILURE_REASON_INTERNAL)};
}

void Worker::RenderLease(const v1::Lease& lease, absl::Time queued_since) {
  std::optional<GenerateRequest> req = RequestForLease(lease);
  if (!req) return;
  const v1::JobSpec& spec = lease.spec();
  RunningRender run;
  run.id = lease.lease();
  if (spec.has_deadline()) {
    run.deadline = absl::FromUnixMicros(
        google::protobuf::util::TimeUtil::TimestampToMicroseconds(spec.deadline()));
  }
  run.cancel = std::make_shared<CancelToken>();
  const absl::Time start = absl::Now();
  run.last_step = start;
  BeginRender(run, queued_since);
  LOG(INFO) << "event=render_start job=" << run.id.job_id() << " attempt=" << run.id.attempt()
            << " size=" << req->width << "x" << req->height << " steps=" << req->steps
            << " request=" << lease.request_id();
  if (absl::Now() >= run.deadline) run.cancel->Cancel();
  absl::StatusOr<Image> img = renderer_->Render(
      *req, [&](int step, int total) { OnStep(run, step, total); }, run.cancel.get());
  const v1::FailureReason cancel_reason = EndRender(img.ok());
  if (img.ok()) {
    Output out{lease, *std::move(img), *std::move(req), start};
    PostOutput([this, out = std::move(out)]() mutable { WriteAndCommit(std::move(out)); });
    return;
  }
  const RenderFailure f = FailureOf(img.status(), cancel_reason);
  FailLease(run.id, f.reason, f.retryable, std::string(img.status().message()));
}

// ------------------------------------------------------------------ output

void Worker::PostOutput(absl::AnyInvocable<void() &&> task) {
  absl::MutexLock lock(&mu_);
  output_tasks_.push_back(std::move(task));
}

void Worker::OutputLoop() {
  for (;;) {
    absl::AnyInvocable<void() &&> task;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return output_stopping_ || !output_tasks_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (output_tasks_.empty()) return;  // stopping and nothing left
      task = std::move(output_tasks_.front());
      output_tasks_.pop_front();
    }
    std::move(task)();
  }
}

void Worker::WriteAndCommit(Output out) {
  const v1::LeaseId& id = out.lease.lease();
  auto done = [this] {
    absl::MutexLock lock(&mu_);
    --outputs_in_flight_;
  };
  ImageParameters p = ImageParametersOf(out.request, out.image);
  p.model = options_.model;
  p.device = options_.device_class;
  const ImageFormat format = FormatOf(out.lease.spec().output_format());
  absl::StatusOr<std::string> png =
      EncodeImage(out.image.rgb, p, format, out.lease.spec().quality());
  if (!png.ok()) {
    // A bad quality is the request's fault (the scheduler validates it; an old one may not).
    const bool bad_request = absl::IsInvalidArgument(png.status());
    const v1::FailureReason reason =
        bad_request ? v1::FAILURE_REASON_INVALID_REQUEST : v1::FAILURE_REASON_INTERNAL;
    FailLease(id, reason, !bad_request, std::string(png.status().message()));
    done();
    return;
  }
  const std::filesystem::path final_abs =
      std::filesystem::path(options_.output_root) / out.lease.output_path();
  const std::filesystem::path dir = final_abs.parent_path();
  const std::string temp_name = absl::StrCat(id.job_id(), ".", id.attempt(), ".tmp");
  const std::filesystem::path temp_abs = dir / temp_name;
  const std::string rel_dir =
      std::filesystem::path(out.lease.output_path()).parent_path().string();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  absl::Status w =
      ec ? absl::InternalError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()))
         : absl::OkStatus();
  if (w.ok() && !rel_dir.empty()) {
    // The folder as it is now: a symlink in the output root must not lead out of it.
    w = security::ResolveBeneath(options_.output_root, rel_dir).status();
  }
  if (w.ok()) w = base::WriteNewFileSynced(temp_abs.string(), *png);
  if (!w.ok()) {
    ::unlink(temp_abs.string().c_str());
    FailLease(id, v1::FAILURE_REASON_OUTPUT_ERROR, true, std::string(w.message()));
    done();
    return;
  }
  base::SyncDir(dir.string()).IgnoreError();  // best effort: the rename is synced too
  const double render_s = absl::ToDoubleSeconds(absl::Now() - out.render_start);
  PendingCommit c;
  c.request = CommitRequestFor(out.lease, temp_name, *png, format, render_s, options_);
  c.output_path = out.lease.output_path();
  c.temp_abs = temp_abs.string();
  c.final_abs = final_abs.string();
  if (metrics_ != nullptr) metrics_->ObserveRender(render_s);
  {
    absl::MutexLock lock(&mu_);
    --outputs_in_flight_;
    v1::WorkerMessage m;
    *m.mutable_commit() = c.request;
    commits_[id.job_id()] = std::move(c);
    // While disconnected, OnWelcome re-sends it.
    if (connected_) link_->Send(m);
  }
}

void Worker::HandleCommitReply(const v1::CommitReply& reply) {
  PendingCommit c;
  {
    absl::MutexLock lock(&mu_);
    auto it = commits_.find(reply.lease().job_id());
    if (it == commits_.end() || !SameLease(it->second.request.lease(), reply.lease())) {
      LOG(WARNING) << "event=unexpected_commit_reply job=" << reply.lease().job_id();
      return;
    }
    c = std::move(it->second);
    commits_.erase(it);
  }
  const v1::LeaseId& id = c.request.lease();
  if (!reply.accepted()) {
    ::unlink(c.temp_abs.c_str());
    LOG(WARNING) << "event=commit_refused job=" << id.job_id() << " attempt=" << id.attempt()
                 << " reason=\"" << reply.reason() << "\" temp_deleted=" << c.temp_abs;
    absl::MutexLock lock(&mu_);
    ++stats_.commits_refused;
    if (metrics_ != nullptr) metrics_->CountCommitRefused();
    return;
  }
  // Never replaces a file: another job's result at this path survives, and this job
  // fails (not retried: every attempt would find the path taken).
  if (absl::Status s = base::RenameNoReplace(c.temp_abs, c.final_abs); !s.ok()) {
    ::unlink(c.temp_abs.c_str());
    const bool taken = absl::IsAlreadyExists(s);
    const std::string why =
        taken ? absl::StrCat("output path ", c.output_path,
                             " already exists (another job's result); it was not replaced")
              : std::string(s.message());
    LOG(WARNING) << "event=rename_failed job=" << id.job_id() << " attempt=" << id.attempt()
                 << " error=\"" << why << "\"";
    FailLease(id, v1::FAILURE_REASON_OUTPUT_ERROR, !taken, why);
    return;
  }
  base::SyncDir(std::filesystem::path(c.final_abs).parent_path().string()).IgnoreError();
  v1::WorkerMessage m;
  *m.mutable_finalized()->mutable_lease() = id;
  link_->Send(m);  // if lost, the scheduler sees the final file when it loses us
  LOG(INFO) << "event=job_done job=" << id.job_id() << " attempt=" << id.attempt()
            << " path=" << c.output_path << " bytes=" << c.request.result().size_bytes()
            << " render_ms=" << c.request.result().render_time_ms();
  absl::MutexLock lock(&mu_);
  ++stats_.images;
  consecutive_failures_ = 0;
  if (metrics_ != nullptr) metrics_->CountImage();
}

// ---------------------------------------------------------------- lifecycle

bool Worker::WaitDrained(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto drained = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return drain_requested_ && !running_ && outputs_in_flight_ == 0 && output_tasks_.empty() &&
           commits_.empty();
  };
  return AwaitMonotonic(&mu_, absl::Condition(&drained), timeout);
}

void Worker::Shutdown(absl::Duration grace) {
  std::deque<std::pair<v1::Lease, absl::Time>> back;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    draining_ = shutting_down_ = true;
    back.swap(pending_);
    if (metrics_ != nullptr) metrics_->SetServing(false);
  }
  for (const auto& [l, t] : back) {
    Fail(l.lease(), v1::FAILURE_REASON_WORKER_LOST, true, "worker shutting down");
  }
  {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !running_ && outputs_in_flight_ == 0 && output_tasks_.empty() && commits_.empty();
    };
    if (!AwaitMonotonic(&mu_, absl::Condition(&idle), grace)) {
      LOG(WARNING) << "event=shutdown_grace_expired worker=" << options_.name
                   << " running=" << (running_ ? running_->job_id() : "")
                   << " uncommitted=" << commits_.size();
      if (running_cancel_) running_cancel_->Cancel();
    }
    stopping_ = true;
  }
  if (inference_thread_.joinable()) inference_thread_.join();
  {
    absl::MutexLock lock(&mu_);
    output_stopping_ = true;
  }
  if (output_thread_.joinable()) output_thread_.join();
  link_->Stop();
  LOG(INFO) << "event=worker_stopped worker=" << options_.name;
}

}  // namespace zfarm::worker
