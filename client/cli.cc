#include "client/cli.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/batch_plan.h"
#include "client/deadline.h"
#include "client/exit_codes.h"
#include "client/output.h"
#include "glog/logging.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "proto/base/files.h"
#include "proto/base/job_defaults.h"
#include "proto/base/scheduler_addresses.h"
#include "proto/base/status_macros.h"
#include "proto/base/version.h"
#include "proto/contract/contract.h"
#include "proto/contract/error_details.h"
#include "proto/contract/rpc_status.h"
#include "proto/flags/flags.h"
#include "proto/security/auth.h"
#include "proto/security/tls.h"
#include "worker/io/canny.h"
#include "worker/io/image_decode.h"
#include "worker/io/png.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::client {
namespace {

using ::zfarm::base::kDefaultQuality;
using ::zfarm::base::kDefaultSizePx;
using ::zfarm::base::kDefaultSteps;
using ::zfarm::base::kDefaultStrength;
using ::zfarm::base::ParseSchedulerAddresses;
using ::zfarm::contract::CopyErrorDetails;
using ::zfarm::contract::FromGrpcCall;
using ::zfarm::contract::FromGrpcStatus;
using ::zfarm::contract::IsFinal;
using ::zfarm::contract::RetryDelay;
using ::zfarm::flags::FlagSet;
using zfarm::v1::Job;
using zfarm::v1::JobEvent;
using zfarm::v1::JobSpec;
using zfarm::v1::JobState;

constexpr absl::Duration kPerCallDeadline = absl::Seconds(30);
constexpr absl::Duration kDefaultTimeout = absl::Seconds(30);
constexpr absl::Duration kMaxOutage = absl::Seconds(30);
constexpr int kMaxBatch = 1000;
// SubmitJobs requests stay under this many bytes (the scheduler's default receive
// limit is 33 MiB: two 16 MiB pictures and a spec); a bigger job goes alone.
constexpr size_t kMaxBatchBytes = 24 << 20;

// ---------------------------------------------------------------------------
// Shared options and the connection.

struct Common {
  std::string scheduler;
  security::TlsFlags tls;                         // --tls-ca, --tls-cert, --tls-key
  std::string token_file;                         // --token-file (else $ZFARM_TOKEN)
  absl::Duration timeout = absl::ZeroDuration();  // 0 = command default
  bool json = false;
  bool quiet = false;  // no progress bar or lines, no informational stderr lines
};

// The flags AddCommon() defines: accepted before the subcommand too
// (`zfarm --scheduler X submit ...`); true = takes a value.
constexpr std::pair<const char*, bool> kCommonFlags[] = {
    {"scheduler", true}, {"timeout", true},  {"json", false},     {"quiet", false},
    {"tls-ca", true},    {"tls-cert", true}, {"tls-key", true},   {"token-file", true}};

void AddSecurity(FlagSet* flags, Common* c) {
  flags->String("tls-ca", &c->tls.ca,
                "CA bundle (PEM) that signed the scheduler's certificate; "
                "enables TLS",
                "FILE");
  flags->String("tls-cert", &c->tls.cert, "client certificate (PEM) for mutual TLS", "FILE");
  flags->String("tls-key", &c->tls.key, "private key (PEM) of --tls-cert", "FILE");
  flags->String("token-file", &c->token_file,
                "file holding the bearer token (default $ZFARM_TOKEN)", "FILE");
}

void AddCommon(FlagSet* flags, Common* c) {
  flags->String("scheduler", &c->scheduler,
                "scheduler address, or an active one and its standbys tried in turn "
                "(default $ZFARM_SCHEDULER, else localhost:50051)",
                "HOST:PORT[,HOST:PORT...]");
  flags->Duration("timeout", &c->timeout,
                  "give up after this long (exit 4); default 30s, no limit "
                  "while waiting with --wait");
  flags->Bool("json", &c->json, "print one JSON object per line");
  flags->Bool("quiet", &c->quiet, "no progress output (bar on a TTY, lines in a log)");
  AddSecurity(flags, c);
}

// A failure with its exit code.
struct Failure {
  int code;
  std::string message;
};

class Session {
 public:
  Session(const CliIo& io, const Common& common, bool waiting)
      : io_(io), json_(common.json), quiet_(common.quiet) {
    address_ = common.scheduler;
    if (address_.empty() && io.getenv) {
      if (const char* env = io.getenv("ZFARM_SCHEDULER"); env && *env) {
        address_ = env;
      }
    }
    if (address_.empty()) address_ = "localhost:50051";
    absl::Duration t = common.timeout;
    if (t == absl::ZeroDuration()) {
      deadline_ = waiting ? absl::InfiniteFuture() : absl::Now() + kDefaultTimeout;
    } else {
      deadline_ = absl::Now() + t;
    }
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    // TLS and the bearer token (common/tls.h, common/auth.h).
    std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
    if (auto c = security::ClientCredentials(common.tls); c.ok()) {
      creds = *std::move(c);
    } else {
      init_ = c.status();
    }
    if (!common.token_file.empty()) {
      auto t = security::LoadClientToken(common.token_file);
      if (t.ok()) {
        token_ = *std::move(t);
      } else if (init_.ok()) {
        init_ = t.status();
      }
    } else if (io.getenv) {
      if (const char* env = io.getenv("ZFARM_TOKEN"); env && *env) token_ = env;
    }
    // One channel per address (an active scheduler and its standbys).
    absl::StatusOr<std::vector<std::string>> addresses =
        ParseSchedulerAddresses("--scheduler", address_);
    if (!addresses.ok()) {
      if (init_.ok()) init_ = addresses.status();
      addresses = std::vector<std::string>{address_};  // never dialled: init_ fails first
    }
    for (const std::string& a : *addresses) {
      Endpoint e;
      e.address = a;
      e.channel = grpc::CreateCustomChannel(a, creds, args);
      e.jobs = zfarm::v1::JobService::NewStub(e.channel);
      e.admin = zfarm::v1::AdminService::NewStub(e.channel);
      endpoints_.push_back(std::move(e));
    }
  }

  // --scheduler as given (one address or the list).
  const std::string& address() const { return address_; }
  absl::Time deadline() const { return deadline_; }
  // The stubs of the current address.
  zfarm::v1::JobService::Stub* jobs() { return endpoints_[current_].jobs.get(); }
  zfarm::v1::AdminService::Stub* admin() { return endpoints_[current_].admin.get(); }
  // After UNAVAILABLE from the current address (down, or a standby): moves on to the
  // next one. True once every address has failed in a row, i.e. when the caller
  // should back off before the next try.
  bool MoveToNextAddress() {
    ++unavailable_in_row_;
    current_ = (current_ + 1) % endpoints_.size();
    return unavailable_in_row_ % endpoints_.size() == 0;
  }
  // A call went through: the current address is the one to stay with.
  void Reached() { unavailable_in_row_ = 0; }
  bool json() const { return json_; }
  std::ostream& out() { return *io_.out; }
  std::ostream& err() { return *io_.err; }
  bool tty() const { return io_.out_is_tty && !json_; }
  // Adds the bearer token (if any) to a call.
  void Prepare(grpc::ClientContext* ctx) const { security::AddBearerToken(ctx, token_); }

  // Runs a unary call, retrying UNAVAILABLE with backoff (same request) until
  // the command deadline or kMaxOutage of continuous outage, and RESOURCE_EXHAUSTED
  // that carries a retry delay (a full queue, a per-principal limit) after that
  // delay while it ends before the same bound.
  template <typename Fn>
  absl::Status Call(absl::string_view what, Fn fn) {
    absl::Duration backoff = absl::Milliseconds(100);
    const absl::Time outage_end = std::min(deadline_, absl::Now() + kMaxOutage);
    if (!init_.ok()) return init_;  // bad --tls-* / --token-file
    while (true) {
      grpc::ClientContext ctx;
      Prepare(&ctx);
      ctx.set_deadline(absl::ToChronoTime(std::min(deadline_, absl::Now() + kPerCallDeadline)));
      grpc::Status s = fn(&ctx);
      if (s.ok()) {
        Reached();
        return absl::OkStatus();
      }
      if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
          endpoints_[current_].channel->GetState(false) != GRPC_CHANNEL_READY &&
          absl::Now() < outage_end) {
        // Deadline hit while connecting: treat as an outage.
        s = grpc::Status(grpc::StatusCode::UNAVAILABLE, "connect timed out");
      }
      if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        absl::Status exhausted = FromGrpcCall(s, ctx);
        std::optional<absl::Duration> delay = RetryDelay(exhausted);
        if (!delay || absl::Now() + *delay >= outage_end) return Annotate(what, exhausted);
        LOG(INFO) << "event=retry rpc=" << what
                  << " code=RESOURCE_EXHAUSTED delay_ms=" << absl::ToInt64Milliseconds(*delay);
        absl::SleepFor(*delay);
        continue;
      }
      if (s.error_code() != grpc::StatusCode::UNAVAILABLE) {
        return Annotate(what, FromGrpcCall(s, ctx));
      }
      if (absl::Now() + backoff >= outage_end) {
        return Annotate(what, absl::UnavailableError(s.error_message()));
      }
      const std::string tried = endpoints_[current_].address;
      if (!MoveToNextAddress()) {
        LOG(INFO) << "event=retry rpc=" << what << " code=UNAVAILABLE address=" << tried
                  << " next=" << endpoints_[current_].address;
        continue;
      }
      LOG(INFO) << "event=retry rpc=" << what << " code=UNAVAILABLE address=" << tried
                << " backoff_ms=" << absl::ToInt64Milliseconds(backoff);
      absl::SleepFor(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(2));
    }
  }

  absl::Status Annotate(absl::string_view what, absl::Status s) {
    if (s.code() == absl::StatusCode::kUnavailable) {
      return absl::UnavailableError(
          absl::StrCat("scheduler unavailable at ", address_, " (", what, "): ", s.message()));
    }
    if (s.code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, " to ", address_, ": timed out: ", s.message()));
    }
    return CopyErrorDetails(s, absl::Status(s.code(), absl::StrCat(what, ": ", s.message())));
  }

  // Prints a job (JSON or human line), ending a progress line first.
  void PrintJob(const Job& job, const std::string& local_path = "") {
    EndProgress();
    out() << (json_ ? JobJsonLine(job, local_path) : JobHumanLine(job, local_path)) << "\n";
    out().flush();
  }

  bool quiet() const { return quiet_; }

  // Progress in a log that is not a terminal (and not --json): per job, a line at
  // most every 10 % of its steps or 5 s, and at each state change, on stderr.
  void LogProgress(const Job& job) {
    if (tty() || json_ || quiet_) return;
    if (std::string line = progress_log_.Observe(job, absl::Now()); !line.empty()) {
      *io_.err << line << "\n";
      io_.err->flush();
    }
  }

  void Progress(const std::string& line) {
    if (!tty() || quiet_) return;
    out() << "\r" << line << "\033[K";
    out().flush();
    progress_shown_ = true;
  }
  void EndProgress() {
    if (progress_shown_) out() << "\n";
    progress_shown_ = false;
  }

  std::string OutputRoot(const std::string& flag) const {
    if (!flag.empty()) return flag;
    if (io_.getenv) {
      if (const char* env = io_.getenv("ZFARM_OUTPUT_ROOT"); env && *env) {
        return env;
      }
    }
    return "";
  }

 private:
  const CliIo& io_;
  bool json_;
  std::string address_;
  std::string token_;  // never logged
  absl::Status init_;  // a bad --tls-* or --token-file
  absl::Time deadline_;
  const bool quiet_;
  ProgressLog progress_log_;
  struct Endpoint {
    std::string address;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<zfarm::v1::JobService::Stub> jobs;
    std::unique_ptr<zfarm::v1::AdminService::Stub> admin;
  };
  std::vector<Endpoint> endpoints_;  // at least one
  size_t current_ = 0;
  size_t unavailable_in_row_ = 0;
  bool progress_shown_ = false;
};

int Fail(const CliIo& io, const absl::Status& s) {
  *io.err << "zfarm: " << s.message() << "\n";
  // A deadline the scheduler finds already past (clock skew) is a deadline, not a usage error.
  if (absl::IsInvalidArgument(s) && absl::StrContains(s.message(), "spec.deadline: is in the past")) {
    return kExitTimeout;
  }
  return ExitCodeForStatus(s);
}

int Usage(const CliIo& io, const FlagSet& flags, absl::string_view message) {
  *io.err << "zfarm: " << message << "\nusage: " << flags.usage()
          << "\n(run with --help for details)\n";
  return kExitUsage;
}

// Exit code for a set of final jobs: any failed -> 1 (4 when every failure
// is a passed deadline), else any cancelled -> 5 (4 for deadlines), else 0.
int ExitCodeForJobs(const std::vector<Job>& jobs) {
  bool failed = false, cancelled = false, deadline = false;
  for (const Job& j : jobs) {
    if (j.error().reason() == zfarm::v1::FAILURE_REASON_DEADLINE_EXCEEDED &&
        j.state() != zfarm::v1::JOB_STATE_SUCCEEDED) {
      deadline = true;
    } else if (j.state() == zfarm::v1::JOB_STATE_FAILED) {
      failed = true;
    } else if (j.state() == zfarm::v1::JOB_STATE_CANCELLED) {
      cancelled = true;
    }
  }
  if (failed) return kExitJobFailed;
  if (deadline) return kExitTimeout;
  if (cancelled) return kExitCancelled;
  return kExitOk;
}

// ---------------------------------------------------------------------------
// Spec flags shared by submit and batch.

struct SpecFlags {
  std::string prompt, negative_prompt, output_name, model, webhook_url, output_format;
  // 0 = not given: kDefaultSizePx, or with an init image the scheduler takes the
  // picture's.
  int64_t width = 0, height = 0, steps = kDefaultSteps, priority = 0, quality = 0;
  int64_t seed = -1;
  double guidance = 0.0;
  std::string deadline;  // a duration from now or an RFC 3339 time; "" = none
  std::vector<std::string> labels;
  // Image-to-image / inpainting: local files (sent as bytes) or --input-root paths.
  std::string init_image, init_image_path, mask, mask_path;
  double strength = std::numeric_limits<double>::quiet_NaN();  // NaN = not given
  std::vector<std::string> loras;  // NAME[:SCALE]
  // ControlNet: the control picture (sent or under --input-root), scale and step fractions.
  std::string control_image, control_image_path;
  double control_scale = std::numeric_limits<double>::quiet_NaN();
  double control_start = std::numeric_limits<double>::quiet_NaN();
  double control_end = std::numeric_limits<double>::quiet_NaN();
  bool canny = false;  // send the Canny edges of --control-image instead of the picture
};

void AddSpecFlags(FlagSet* f, SpecFlags* s, bool with_prompt) {
  if (with_prompt) f->String("prompt", &s->prompt, "the prompt (required)");
  f->String("negative-prompt", &s->negative_prompt, "negative prompt");
  f->Int("width", &s->width,
         absl::StrCat("image width in pixels, multiple of 16 (", kDefaultSizePx,
                      "; with an init image: its width)"));
  f->Int("height", &s->height,
         absl::StrCat("image height in pixels, multiple of 16 (", kDefaultSizePx,
                      "; with an init image: its height)"));
  f->Int("steps", &s->steps, absl::StrCat("transformer evaluations, 1..50 (", kDefaultSteps, ")"));
  f->Int("seed", &s->seed, "noise seed (default: the scheduler picks one)");
  f->Double("guidance", &s->guidance, "guidance scale, 0..20 (0)");
  f->Int("priority", &s->priority, "higher runs first (0)");
  f->Repeated("label", &s->labels, "label k=v (repeatable)", "K=V");
  f->String("output-name", &s->output_name, "output file name stem");
  f->String("model", &s->model, "model name (default: any worker's)");
  f->String("deadline", &s->deadline,
            "cancel the job if not finished by then: a duration (90s, 1h) or an RFC 3339 "
            "time; one already past exits 4",
            "WHEN");
  f->String("webhook-url", &s->webhook_url,
            "POST the final state here (must be on the scheduler allow-list)", "URL");
  f->String("output-format", &s->output_format, "result file format: png, jpeg or webp (png)",
            "FORMAT");
  f->Int("quality", &s->quality,
         absl::StrCat("jpeg/webp quality, 1..100 (", kDefaultQuality, ")"));
  f->String("init-image", &s->init_image, "image-to-image: start from this PNG/JPEG (sent)",
            "FILE");
  f->String("init-image-path", &s->init_image_path,
            "image-to-image: a picture under the scheduler's --input-root", "PATH");
  f->Double("strength", &s->strength,
            absl::StrCat("how far from the init image, (0, 1] (", kDefaultStrength, ")"));
  f->String("mask", &s->mask, "inpainting: white = repaint, black = keep (sent)", "FILE");
  f->String("mask-path", &s->mask_path, "inpainting: a mask under the scheduler's --input-root",
            "PATH");
  f->Repeated("lora", &s->loras, "apply a LoRA of the workers' --lora-dir (repeatable)",
              "NAME[:SCALE]");
  f->String("control-image", &s->control_image,
            "ControlNet: the control picture (canny, depth, pose...; sent)", "FILE");
  f->String("control-image-path", &s->control_image_path,
            "ControlNet: a control picture under the scheduler's --input-root", "PATH");
  f->Double("control-scale", &s->control_scale, "ControlNet conditioning scale, [0, 2] (0.75)");
  f->Double("control-start", &s->control_start, "ControlNet from this fraction of the steps (0)");
  f->Double("control-end", &s->control_end, "ControlNet up to this fraction of the steps (1)");
  f->Bool("canny", &s->canny,
          "send the Canny edge map of --control-image (OpenCV, thresholds 100/200) instead");
}

// One picture flag pair: --NAME FILE (read here, sent as bytes) or --NAME-path.
// The Canny edge map (worker/io/canny.h) of a PNG/JPEG file's bytes, as a PNG.
absl::StatusOr<std::string> CannyPng(const std::string& bytes, const std::string& what) {
  ZFARM_ASSIGN_OR_RETURN(zfarm::worker::DecodedImage img, zfarm::worker::DecodeImage(bytes, what));
  ZFARM_ASSIGN_OR_RETURN(std::vector<uint8_t> edges,
                         zfarm::worker::CannyRgb(img.rgb, img.width, img.height));
  return zfarm::worker::EncodePng(edges, img.width, img.height, {});
}

absl::Status ImageFlag(const std::string& file, const std::string& path, absl::string_view flag,
                       zfarm::v1::ImageInput* out) {
  if (!file.empty() && !path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " and --", flag, "-path: give one of them"));
  }
  if (!path.empty()) {
    out->set_path(path);
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> bytes = ReadLocalFile(file);
  if (!bytes.ok()) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", bytes.status().message()));
  out->set_data(*std::move(bytes));
  return absl::OkStatus();
}

absl::StatusOr<JobSpec> BuildSpec(const SpecFlags& s) {
  JobSpec spec;
  spec.set_prompt(s.prompt);
  spec.set_negative_prompt(s.negative_prompt);
  auto int32 = [](int64_t v, absl::string_view name) -> absl::StatusOr<int32_t> {
    if (v < INT32_MIN || v > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " out of range"));
    }
    return static_cast<int32_t>(v);
  };
  ZFARM_ASSIGN_OR_RETURN(int32_t w, int32(s.width, "width"));
  ZFARM_ASSIGN_OR_RETURN(int32_t h, int32(s.height, "height"));
  ZFARM_ASSIGN_OR_RETURN(int32_t st, int32(s.steps, "steps"));
  ZFARM_ASSIGN_OR_RETURN(int32_t p, int32(s.priority, "priority"));
  ZFARM_ASSIGN_OR_RETURN(int32_t q, int32(s.quality, "quality"));
  if (!s.output_format.empty()) {
    ZFARM_ASSIGN_OR_RETURN(zfarm::v1::OutputFormat f,
                           ParseOutputFormat(s.output_format, "--output-format"));
    spec.set_output_format(f);
  }
  spec.set_quality(q);
  spec.set_width_px(w);
  spec.set_height_px(h);
  spec.set_steps(st);
  spec.set_priority(p);
  spec.set_guidance_scale(static_cast<float>(s.guidance));
  if (s.seed >= 0) spec.set_seed(static_cast<uint64_t>(s.seed));
  spec.set_output_name(s.output_name);
  spec.set_model(s.model);
  spec.set_webhook_url(s.webhook_url);
  for (const std::string& l : s.labels) {
    size_t eq = l.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("--label '", l, "' must be key=value"));
    }
    (*spec.mutable_labels())[l.substr(0, eq)] = l.substr(eq + 1);
  }
  if (!s.deadline.empty()) {
    ZFARM_ASSIGN_OR_RETURN(absl::Time t, ParseDeadlineFlag(s.deadline, absl::Now()));
    const int64_t seconds = absl::ToUnixSeconds(t);
    spec.mutable_deadline()->set_seconds(seconds);
    spec.mutable_deadline()->set_nanos(
        static_cast<int32_t>(absl::ToInt64Nanoseconds(t - absl::FromUnixSeconds(seconds))));
  }
  if (!s.init_image.empty() || !s.init_image_path.empty()) {
    ZFARM_RETURN_IF_ERROR(
        ImageFlag(s.init_image, s.init_image_path, "init-image", spec.mutable_init_image()));
  }
  if (!s.mask.empty() || !s.mask_path.empty()) {
    ZFARM_RETURN_IF_ERROR(ImageFlag(s.mask, s.mask_path, "mask", spec.mutable_mask_image()));
  }
  if (!std::isnan(s.strength)) spec.set_strength(static_cast<float>(s.strength));
  const bool control_picture = !s.control_image.empty() || !s.control_image_path.empty();
  if (control_picture) {
    zfarm::v1::ControlInput* c = spec.mutable_control();
    ZFARM_RETURN_IF_ERROR(
        ImageFlag(s.control_image, s.control_image_path, "control-image", c->mutable_image()));
    if (s.canny) {
      if (!s.control_image_path.empty()) {
        return absl::InvalidArgumentError(
            "--canny needs --control-image (a local file; the scheduler's files are not read here)");
      }
      ZFARM_ASSIGN_OR_RETURN(std::string edges,
                             CannyPng(c->image().data(), "--control-image " + s.control_image));
      c->mutable_image()->set_data(std::move(edges));
    }
    if (!std::isnan(s.control_scale)) c->set_conditioning_scale(static_cast<float>(s.control_scale));
    if (!std::isnan(s.control_start)) c->set_start(static_cast<float>(s.control_start));
    if (!std::isnan(s.control_end)) c->set_end(static_cast<float>(s.control_end));
  } else if (!std::isnan(s.control_scale) || !std::isnan(s.control_start) ||
             !std::isnan(s.control_end) || s.canny) {
    return absl::InvalidArgumentError(
        "--control-scale, --control-start, --control-end and --canny need --control-image");
  }
  for (const std::string& l : s.loras) {
    absl::StatusOr<zfarm::v1::LoraRef> ref = ParseLoraRef(l);
    if (!ref.ok()) return absl::InvalidArgumentError(absl::StrCat("--lora ", ref.status().message()));
    *spec.add_loras() = *std::move(ref);
  }
  return spec;
}

std::string RandomPrefix() {
  std::random_device rd;
  return absl::StrFormat("zfarm-%08x%08x", rd(), rd());
}

std::string RequestIdPrefix(const CliIo& io, const std::string& flag) {
  if (!flag.empty()) return flag;
  return DefaultRequestIdPrefix(io.getenv ? io.getenv("BUILD_TAG") : nullptr, RandomPrefix());
}

// ---------------------------------------------------------------------------
// Results.

// Copies the job's PNG to `dest` from the shared mount when `output_root`
// has it, else streams it through GetResult. Verifies the sha256 when known.
// Returns the local file's sha256.
absl::StatusOr<std::string> FetchResult(Session& session, const Job& job,
                                        const std::string& output_root, const std::string& dest) {
  const std::string& expected = job.result().sha256();
  if (!output_root.empty() && !job.result().path().empty()) {
    std::string src = absl::StrCat(output_root, "/", job.result().path());
    struct stat st;
    if (stat(src.c_str(), &st) == 0) {
      ZFARM_RETURN_IF_ERROR(base::CopyFileAtomically(src, dest));
      ZFARM_ASSIGN_OR_RETURN(std::string got, base::Sha256OfFile(dest));
      if (!expected.empty() && got != expected) {
        std::remove(dest.c_str());
        return absl::DataLossError(absl::StrCat("sha256 mismatch for ", src));
      }
      return got;
    }
  }
  std::string data;
  std::string sha_from_server;
  absl::Status s = session.Call("GetResult", [&](grpc::ClientContext* ctx) {
    data.clear();
    zfarm::v1::GetResultRequest req;
    req.set_job_id(job.job_id());
    auto reader = session.jobs()->GetResult(ctx, req);
    zfarm::v1::ResultChunk chunk;
    while (reader->Read(&chunk)) {
      if (chunk.offset() != static_cast<int64_t>(data.size())) {
        return grpc::Status(grpc::StatusCode::DATA_LOSS, "chunk out of order");
      }
      data += chunk.data();
      if (!chunk.sha256().empty()) sha_from_server = chunk.sha256();
    }
    return reader->Finish();
  });
  ZFARM_RETURN_IF_ERROR(s);
  std::string got = base::Sha256Hex(data);
  const std::string& want = expected.empty() ? sha_from_server : expected;
  if (!want.empty() && got != want) {
    return absl::DataLossError(absl::StrCat("sha256 mismatch for job ", job.job_id()));
  }
  ZFARM_RETURN_IF_ERROR(base::WriteFileAtomically(dest, data));
  return got;
}

// ---------------------------------------------------------------------------
// Watching.

// Follows `job_ids` through one WatchJobs(batch) stream (or WatchJob for a
// single job without batch) until every job is final. Reconnects (the server
// sends current state first) on UNAVAILABLE or a per-stream deadline.
// Reads one watch stream until it ends or nothing is pending: each of our jobs updated
// in *jobs, finals taken off *pending, progress shown. True if any event arrived.
bool ReadEvents(Session& session, grpc::ClientReader<JobEvent>& reader,
                const std::vector<std::string>& job_ids, std::set<std::string>* pending,
                std::map<std::string, Job>* jobs, int* last_done) {
  JobEvent event;
  bool got_any = false;
  while (!pending->empty() && reader.Read(&event)) {
    got_any = true;
    const Job& j = event.job();
    auto it = jobs->find(j.job_id());
    if (it == jobs->end()) continue;  // not ours (e.g. other chunk)
    it->second = j;
    session.LogProgress(j);
    if (IsFinal(j.state()) && pending->erase(j.job_id()) > 0 && !session.json() &&
        session.tty()) {
      session.PrintJob(j);
    }
    int done = static_cast<int>(job_ids.size() - pending->size());
    if (job_ids.size() == 1 && j.progress().total_steps() > 0) {
      session.Progress(ProgressBar(j.progress().step(), j.progress().total_steps(),
                                   absl::StrCat(j.job_id(), " ", StateName(j.state()))));
    } else if (done != *last_done) {
      session.Progress(ProgressBar(done, static_cast<int>(job_ids.size()), "jobs final"));
      *last_done = done;
    }
  }
  return got_any;
}

absl::Status WaitForJobs(Session& session, const std::string& batch_id,
                         const std::vector<std::string>& job_ids,
                         std::map<std::string, Job>* jobs) {
  std::set<std::string> pending;
  for (const std::string& id : job_ids) {
    if (!IsFinal((*jobs)[id].state())) pending.insert(id);
  }
  absl::Duration backoff = absl::Milliseconds(100);
  absl::Time outage_start = absl::InfiniteFuture();
  int last_done = -1;
  while (!pending.empty()) {
    if (absl::Now() >= session.deadline()) {
      return absl::DeadlineExceededError(
          absl::StrCat("timed out waiting for ", pending.size(), " job(s) on ", session.address()));
    }
    grpc::ClientContext ctx;
    session.Prepare(&ctx);
    ctx.set_deadline(
        absl::ToChronoTime(std::min(session.deadline(), absl::Now() + absl::Hours(1))));
    std::unique_ptr<grpc::ClientReader<JobEvent>> reader;
    if (!batch_id.empty()) {
      zfarm::v1::WatchJobsRequest req;
      req.set_batch_id(batch_id);
      reader = session.jobs()->WatchJobs(&ctx, req);
    } else {
      zfarm::v1::WatchJobRequest req;
      req.set_job_id(job_ids.front());
      reader = session.jobs()->WatchJob(&ctx, req);
    }
    const bool got_any = ReadEvents(session, *reader, job_ids, &pending, jobs, &last_done);
    if (got_any) session.Reached();
    if (pending.empty()) {
      ctx.TryCancel();
      reader->Finish();
      break;
    }
    grpc::Status s = reader->Finish();
    if (got_any) {
      outage_start = absl::InfiniteFuture();
      backoff = absl::Milliseconds(100);
    }
    if (s.ok() || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      continue;  // stream ended early or its own deadline: reconnect
    }
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE) {
      return session.Annotate("WatchJobs", FromGrpcStatus(s));
    }
    if (outage_start == absl::InfiniteFuture()) outage_start = absl::Now();
    if (absl::Now() - outage_start > kMaxOutage) {
      return session.Annotate("WatchJobs", absl::UnavailableError(s.error_message()));
    }
    LOG(INFO) << "event=watch_reconnect batch=" << batch_id << " pending=" << pending.size();
    if (!session.MoveToNextAddress()) continue;  // the next address at once
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
  session.EndProgress();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Subcommands.

struct Command {
  const char* name;
  const char* usage;
  const char* summary;
  const char* examples;
  int (*run)(const std::vector<std::string>&, const CliIo&, const Command&);
};

// Parses flags, handling --help and usage errors. Returns -1 to continue.
int ParseOrExit(FlagSet& flags, const Command& cmd, const std::vector<std::string>& args,
                const CliIo& io, std::vector<std::string>* positional, size_t min_pos,
                size_t max_pos) {
  bool help = false;
  absl::StatusOr<std::vector<std::string>> pos = flags.Parse(args, &help);
  if (help) {
    *io.out << cmd.summary << "\n\n" << flags.Help() << "\nexamples:\n" << cmd.examples;
    return kExitOk;
  }
  if (!pos.ok()) return Usage(io, flags, pos.status().message());
  if (pos->size() < min_pos) {
    return Usage(io, flags, absl::StrCat("missing argument (usage: ", cmd.usage, ")"));
  }
  if (pos->size() > max_pos) {
    return Usage(io, flags, absl::StrCat("unexpected argument '", (*pos)[max_pos], "'"));
  }
  *positional = std::move(*pos);
  return -1;
}

// Its length is the flag list: flags, spec, one SubmitJob, then wait/print.
int RunSubmit(const std::vector<std::string>& args, const CliIo& io, const Command& cmd) {
  Common common;
  SpecFlags sf;
  bool wait = false;
  std::string request_id, prefix, out_file, output_root;
  FlagSet flags(cmd.usage);
  AddSpecFlags(&flags, &sf, true);
  flags.Bool("wait", &wait, "block until the job is final (progress bar on a TTY)");
  flags.String("request-id", &request_id, "idempotency key (default: derived)");
  flags.String("request-id-prefix", &prefix,
               "prefix of the derived request id (default $BUILD_TAG)");
  flags.String("out", &out_file, "with --wait: copy the image here", "FILE");
  flags.String("output-root", &output_root,
               "shared mount with the results (default $ZFARM_OUTPUT_ROOT)", "DIR");
  AddCommon(&flags, &common);
  std::vector<std::string> pos;
  if (int rc = ParseOrExit(flags, cmd, args, io, &pos, 0, 0); rc >= 0) return rc;
  if (sf.prompt.empty()) return Usage(io, flags, "--prompt is required");
  if (!out_file.empty() && !wait) return Usage(io, flags, "--out needs --wait");
  absl::StatusOr<JobSpec> spec = BuildSpec(sf);
  if (absl::IsDeadlineExceeded(spec.status())) return Fail(io, spec.status());
  if (!spec.ok()) return Usage(io, flags, spec.status().message());
  FillSizeDefaults(&*spec);
  PlannedJob planned{1, 0, *spec, request_id};
  if (planned.request_id.empty()) {
    planned.request_id = DeriveRequestId(RequestIdPrefix(io, prefix), planned);
  }
  Session session(io, common, wait);
  zfarm::v1::SubmitJobRequest req;
  req.set_request_id(planned.request_id);
  *req.mutable_spec() = planned.spec;
  zfarm::v1::SubmitJobResponse resp;
  absl::Status s = session.Call("SubmitJob", [&](grpc::ClientContext* ctx) {
    return session.jobs()->SubmitJob(ctx, req, &resp);
  });
  if (!s.ok()) return Fail(io, s);
  LOG(INFO) << "event=submit job=" << resp.job().job_id() << " request=" << planned.request_id
            << " created=" << resp.created();
  if (!wait) {
    session.PrintJob(resp.job());
    return kExitOk;
  }
  std::map<std::string, Job> jobs{{resp.job().job_id(), resp.job()}};
  if (!session.json() && !session.quiet()) {
    *io.err << "submitted job=" << resp.job().job_id() << (resp.created() ? "" : " (existing)")
            << "\n";
  }
  s = WaitForJobs(session, "", {resp.job().job_id()}, &jobs);
  if (!s.ok()) return Fail(io, s);
  Job& job = jobs.begin()->second;
  std::string local;
  if (!out_file.empty() && job.state() == zfarm::v1::JOB_STATE_SUCCEEDED) {
    absl::StatusOr<std::string> sha =
        FetchResult(session, job, session.OutputRoot(output_root), out_file);
    if (!sha.ok()) return Fail(io, sha.status());
    local = out_file;
    if (job.result().sha256().empty()) {
      jobs.begin()->second.mutable_result()->set_sha256(*sha);
    }
  }
  session.PrintJob(job, local);
  return ExitCodeForJobs({job});
}

// The jobs of a batch as the scheduler answered them, in the order planned.
struct Submitted {
  std::vector<std::string> job_ids;
  std::map<std::string, Job> jobs;
  int created = 0;  // new jobs (the others existed under their request ids)
};

// The planned jobs in SubmitJobs calls of at most kMaxBatch jobs and kMaxBatchBytes
// each; *batch_id becomes the scheduler's.
absl::StatusOr<Submitted> SubmitPlanned(Session& session, const std::vector<PlannedJob>& planned,
                                        std::string* batch_id) {
  Submitted out;
  for (size_t start = 0, end = 0; start < planned.size(); start = end) {
    zfarm::v1::SubmitJobsRequest req;
    req.set_batch_id(*batch_id);
    size_t bytes = 0;
    for (end = start; end < planned.size() && end - start < kMaxBatch; ++end) {
      const size_t job_bytes = planned[end].spec.ByteSizeLong();
      if (end > start && bytes + job_bytes > kMaxBatchBytes) break;
      bytes += job_bytes;
      zfarm::v1::SubmitJobRequest* r = req.add_jobs();
      r->set_request_id(planned[end].request_id);
      *r->mutable_spec() = planned[end].spec;
    }
    zfarm::v1::SubmitJobsResponse resp;
    absl::Status s = session.Call("SubmitJobs", [&](grpc::ClientContext* ctx) {
      return session.jobs()->SubmitJobs(ctx, req, &resp);
    });
    if (!s.ok()) return s;
    for (const zfarm::v1::SubmitJobResponse& r : resp.jobs()) {
      out.job_ids.push_back(r.job().job_id());
      out.jobs[r.job().job_id()] = r.job();
      if (r.created()) ++out.created;
    }
    if (!resp.batch_id().empty()) *batch_id = resp.batch_id();
  }
  return out;
}

// With --wait, once every job is final: each printed, with --out-dir its image copied
// there as NNNN.png (.jpg, .webp) and listed in manifest.json. The exit status.
int ReportFinals(Session& session, const CliIo& io, const Submitted& sub,
                 const std::string& out_dir, const std::string& root) {
  std::vector<ManifestEntry> manifest;
  std::vector<Job> finals;
  if (!out_dir.empty()) {
    mkdir(out_dir.c_str(), 0755);
    struct stat st;
    if (stat(out_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return Fail(io, absl::InvalidArgumentError(
                          absl::StrCat("--out-dir '", out_dir, "' is not a directory")));
    }
  }
  int fetch_failed = 0;
  for (size_t i = 0; i < sub.job_ids.size(); ++i) {
    const Job& job = sub.jobs.at(sub.job_ids[i]);
    finals.push_back(job);
    ManifestEntry entry{static_cast<int>(i) + 1, job, "", ""};
    if (!out_dir.empty() && job.state() == zfarm::v1::JOB_STATE_SUCCEEDED) {
      // The extension of the result (".png", ".jpg", ".webp") follows its format.
      const std::string& rp = job.result().path();
      const size_t dot = rp.rfind('.');
      const bool has_ext = dot != std::string::npos && rp.find('/', dot) == std::string::npos;
      entry.file = absl::StrFormat("%04d%s", entry.index, has_ext ? rp.substr(dot) : ".png");
      absl::StatusOr<std::string> sha =
          FetchResult(session, job, root, absl::StrCat(out_dir, "/", entry.file));
      if (sha.ok()) {
        entry.sha256 = *sha;
        if (entry.job.result().sha256().empty()) {
          entry.job.mutable_result()->set_sha256(*sha);
        }
      } else {
        ++fetch_failed;
        *io.err << "zfarm: job " << job.job_id() << ": " << sha.status().message() << "\n";
        entry.file.clear();
      }
    }
    session.PrintJob(entry.job, entry.file.empty() ? "" : absl::StrCat(out_dir, "/", entry.file));
    manifest.push_back(std::move(entry));
  }
  if (!out_dir.empty()) {
    if (absl::Status m = WriteManifest(out_dir, manifest); !m.ok()) {
      return Fail(io, m);
    }
  }
  int rc = ExitCodeForJobs(finals);
  if (rc == kExitOk && fetch_failed > 0) rc = kExitJobFailed;
  return rc;
}

// Its length is the flag list; the work is in SubmitPlanned, WaitForJobs, ReportFinals.
int RunBatch(const std::vector<std::string>& args, const CliIo& io, const Command& cmd) {
  Common common;
  SpecFlags sf;
  bool wait = false;
  std::string prompts, seeds_text, prefix, batch_id, out_dir, output_root;
  int64_t variants = 1;
  FlagSet flags(cmd.usage);
  flags.String("prompts", &prompts, "prompts file (required)", "FILE");
  flags.String("seeds", &seeds_text, "seed sweep: one job per seed per line", "1,2,3");
  flags.Int("variants", &variants,
            "N jobs per line (seeds --seed, --seed+1, ... or picked by the "
            "scheduler)");
  AddSpecFlags(&flags, &sf, false);
  flags.Bool("wait", &wait, "block until every job is final (one WatchJobs stream)");
  flags.String("out-dir", &out_dir,
               "with --wait: copy the images as 0001.png (.jpg, .webp), ... plus manifest.json",
               "DIR");
  flags.String("output-root", &output_root,
               "shared mount with the results (default $ZFARM_OUTPUT_ROOT)", "DIR");
  flags.String("request-id-prefix", &prefix,
               "prefix of derived request ids (default $BUILD_TAG, else random)");
  flags.String("batch-id", &batch_id, "batch id (default: derived)");
  AddCommon(&flags, &common);
  std::vector<std::string> pos;
  if (int rc = ParseOrExit(flags, cmd, args, io, &pos, 0, 0); rc >= 0) return rc;
  if (prompts.empty()) return Usage(io, flags, "--prompts is required");
  if (!out_dir.empty() && !wait) return Usage(io, flags, "--out-dir needs --wait");
  sf.prompt = "";
  absl::StatusOr<JobSpec> defaults = BuildSpec(sf);
  if (absl::IsDeadlineExceeded(defaults.status())) return Fail(io, defaults.status());
  if (!defaults.ok()) return Usage(io, flags, defaults.status().message());
  SweepOptions sweep;
  sweep.variants = static_cast<int>(std::clamp<int64_t>(variants, 0, 100000));
  if (!seeds_text.empty()) {
    absl::StatusOr<std::vector<uint64_t>> seeds = ParseSeedList(seeds_text);
    if (!seeds.ok()) return Usage(io, flags, seeds.status().message());
    sweep.seeds = *seeds;
  }
  absl::StatusOr<std::vector<PlannedJob>> planned = LoadPromptsFile(prompts, *defaults, sweep);
  if (!planned.ok()) {
    *io.err << "zfarm: " << planned.status().message() << "\nnothing was submitted\n";
    return kExitUsage;
  }
  const std::string id_prefix = RequestIdPrefix(io, prefix);
  AssignRequestIds(id_prefix, &*planned);
  if (batch_id.empty()) batch_id = DeriveBatchId(id_prefix, *planned);

  Session session(io, common, wait);
  absl::StatusOr<Submitted> sub = SubmitPlanned(session, *planned, &batch_id);
  if (!sub.ok()) return Fail(io, sub.status());
  LOG(INFO) << "event=batch_submit batch=" << batch_id << " jobs=" << sub->job_ids.size()
            << " created=" << sub->created;
  if (!session.json() && !session.quiet()) {
    *io.err << "batch=" << batch_id << " jobs=" << sub->job_ids.size()
            << " submitted=" << sub->created << " existing=" << sub->job_ids.size() - sub->created
            << "\n";
  }
  if (!wait) {
    for (const std::string& id : sub->job_ids) session.PrintJob(sub->jobs[id]);
    return kExitOk;
  }
  absl::Status s = WaitForJobs(session, batch_id, sub->job_ids, &sub->jobs);
  if (!s.ok()) return Fail(io, s);
  return ReportFinals(session, io, *sub, out_dir, session.OutputRoot(output_root));
}

int RunWatch(const std::vector<std::string>& args, const CliIo& io, const Command& cmd) {
  Common common;
  FlagSet flags(cmd.usage);
  AddCommon(&flags, &common);
  std::vector<std::string> pos;
  if (int rc = ParseOrExit(flags, cmd, args, io, &pos, 1, 1); rc >= 0) return rc;
  Session session(io, common, /*waiting=*/true);
  std::map<std::string, Job> jobs{{pos[0], Job()}};
  jobs[pos[0]].set_job_id(pos[0]);
  absl::Status s = WaitForJobs(session, "", {pos[0]}, &jobs);
  if (!s.ok()) return Fail(io, s);
  session.PrintJob(jobs[pos[0]]);
  return ExitCodeForJobs({jobs[pos[0]]});
}

int RunStatus(const std::vector<std::string>& args, const CliIo& io, const Command& cmd) {
  Common common;
  FlagSet flags(cmd.usage);
  AddCommon(&flags, &common);
  std::vector<std::string> pos;
  if (int rc = ParseOrExit(flags, cmd, args, io, &pos, 1, 1); rc >= 0) return rc;
  Session session(io, common, false);
  zfarm::v1::GetJobRequest req;
  req.set_job_id(pos[0]);
  Job job;
  absl::Status s = session.Call(
      "GetJob", [&](grpc::ClientContext* ctx) { return session.jobs()->GetJob(ctx, req, &job); });
  if (!s.ok()) return Fail(io, s);
  session.PrintJob(job);
  return kExitOk;
}

int RunGet(const std::vector<std::string>& args, const CliIo& io, const Command& cmd) {
  Common common;
  std::string out_file, output_root;
  FlagSet flags(cmd.usage);
  flags.String("out", &out_file, "destination file (required)", "FILE");
  flags.String("output-root", &output_root,
               "shared mount with the results (default $ZFARM_OUTPUT_ROOT); "
               "without it the PNG streams through GetResult",
               "DIR");
  AddCommon(&flags, &common);
  std::vector<std::string> pos;
  if (int rc = ParseOrExit(flags, cmd, args, io, &pos, 1, 1); rc >= 0) return rc;
  if (out_file.empty()) return Usage(io, flags, "--out is required");
  Session session(io, common, false);
  zfarm::v1::GetJobRequest req;
  req.set_job_id(pos[0]);
  Job job;
  absl::Status s = session.Call(
      "GetJob", [&](grpc::ClientContext* ctx) { return session.jobs()->GetJob(ctx, req, &job); });
  if (!s.ok()) return Fail(io, s);
  if (job.state() != zfarm::v1::JOB_STATE_SUCCEEDED) {
    session.PrintJob(job);
    *io.err << "zfarm: job " << job.job_id() << " is " << StateName(job.state()) << ", no image\n";
    return job.state() == zfarm::v1::JOB_STATE_CANCELLED ? kExitCancelled : kExitJobFailed;
  }
  absl::StatusOr<std::string> sha =
      FetchResult(session, job, session.OutputRoot(output_root), out_file);
  if (!sha.ok()) return Fail(io, sha.status());
  if (job.result().sha256().empty()) job.mutable_result()->set_sha256(*sha);
  session.PrintJob(job, out_file);
  return kExitOk;
}

int RunCancel(const std::vector<std::string>& args, const CliIo& io, const Command& cmd) {
  Common common;
  std::string batch, label;
  FlagSet flags(cmd.usage);
  flags.String("batch", &batch, "cancel every job of this batch", "ID");
  flags.String("label", &label, "cancel every job with this label", "K=V");
  AddCommon(&flags, &common);
  std::vector<std::string> pos;
  if (int rc = ParseOrExit(flags, cmd, args, io, &pos, 0, 1); rc >= 0) return rc;
  int selectors = static_cast<int>(pos.size()) + !batch.empty() + !label.empty();
  if (selectors != 1) {
    return Usage(io, flags, "give exactly one of JOB, --batch ID, --label K=V");
  }
  zfarm::v1::CancelJobRequest req;
  if (!pos.empty()) req.set_job_id(pos[0]);
  if (!batch.empty()) req.set_batch_id(batch);
  if (!label.empty()) req.set_label(label);
  Session session(io, common, false);
  zfarm::v1::CancelJobResponse resp;
  absl::Status s = session.Call("CancelJob", [&](grpc::ClientContext* ctx) {
    return session.jobs()->CancelJob(ctx, req, &resp);
  });
  if (!s.ok()) return Fail(io, s);
  for (const std::string& id : resp.job_ids()) {
    if (session.json()) {
      *io.out << nlohmann::json{{"job", id}, {"cancel", "requested"}}.dump() << "\n";
    } else {
      *io.out << "job=" << id << " cancel=requested\n";
    }
  }
  if (!session.json()) *io.err << resp.job_ids_size() << " job(s) cancelling\n";
  return kExitOk;
}

absl::StatusOr<JobState> ParseState(absl::string_view name) {
  for (int i = zfarm::v1::JOB_STATE_QUEUED; i <= zfarm::v1::JOB_STATE_CANCELLED; ++i) {
    if (StateName(static_cast<JobState>(i)) == absl::AsciiStrToLower(name)) {
      return static_cast<JobState>(i);
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--state: unknown state '", name,
                   "' (queued, assigned, running, succeeded, failed, cancelled)"));
}

int RunList(const std::vector<std::string>& args, const CliIo& io, const Command& cmd) {
  Common common;
  std::vector<std::string> states;
  std::string label, batch;
  int64_t limit = 100;
  FlagSet flags(cmd.usage);
  flags.Repeated("state", &states, "only these states (repeatable or comma list)", "STATE");
  flags.String("label", &label, "only jobs with this label", "K=V");
  flags.String("batch", &batch, "only jobs of this batch", "ID");
  flags.Int("limit", &limit, "at most this many jobs, 0 = all (100)");
  AddCommon(&flags, &common);
  std::vector<std::string> pos;
  if (int rc = ParseOrExit(flags, cmd, args, io, &pos, 0, 0); rc >= 0) return rc;
  zfarm::v1::ListJobsRequest req;
  for (const std::string& s : states) {
    for (absl::string_view one : absl::StrSplit(s, ',', absl::SkipEmpty())) {
      absl::StatusOr<JobState> st = ParseState(one);
      if (!st.ok()) return Usage(io, flags, st.status().message());
      req.add_states(*st);
    }
  }
  req.set_label(label);
  req.set_batch_id(batch);
  Session session(io, common, false);
  int64_t printed = 0;
  do {
    req.set_page_size(
        static_cast<int32_t>(limit > 0 ? std::min<int64_t>(limit - printed, 500) : 500));
    zfarm::v1::ListJobsResponse resp;
    absl::Status s = session.Call("ListJobs", [&](grpc::ClientContext* ctx) {
      return session.jobs()->ListJobs(ctx, req, &resp);
    });
    if (!s.ok()) return Fail(io, s);
    for (const Job& j : resp.jobs()) {
      if (limit > 0 && printed >= limit) break;
      session.PrintJob(j);
      ++printed;
    }
    req.set_page_token(resp.next_page_token());
  } while (!req.page_token().empty() && (limit == 0 || printed < limit));
  return kExitOk;
}

std::string WorkerStateName(zfarm::v1::WorkerState s) {
  std::string n = zfarm::v1::WorkerState_Name(s);
  if (absl::StartsWith(n, "WORKER_STATE_")) n = n.substr(13);
  return absl::AsciiStrToLower(n);
}

std::string WorkerLine(const zfarm::v1::WorkerInfo& w, bool json) {
  if (json) {
    nlohmann::json j{{"worker", w.worker_name()},
                     {"device", w.device()},
                     {"device_name", w.device_name()},
                     {"state", WorkerStateName(w.state())},
                     {"current_jobs", w.current_job_ids()},
                     {"jobs_done", w.jobs_done()},
                     {"jobs_failed", w.jobs_failed()},
                     {"capacity", w.capacity()},
                     {"model", w.model()},
                     {"version", w.version()},
                     {"last_seen_unix", w.last_seen_time().seconds()}};
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  return absl::StrCat("worker=", w.worker_name(), " device=", w.device(),
                      " state=", WorkerStateName(w.state()), " jobs=", w.current_job_ids_size(),
                      "/", w.capacity(), " done=", w.jobs_done(), " failed=", w.jobs_failed());
}

int RunWorkers(const std::vector<std::string>& args, const CliIo& io, const Command& cmd) {
  Common common;
  FlagSet flags(cmd.usage);
  AddCommon(&flags, &common);
  std::vector<std::string> pos;
  if (int rc = ParseOrExit(flags, cmd, args, io, &pos, 0, 0); rc >= 0) return rc;
  Session session(io, common, false);
  zfarm::v1::ListWorkersRequest req;
  zfarm::v1::ListWorkersResponse resp;
  absl::Status s = session.Call("ListWorkers", [&](grpc::ClientContext* ctx) {
    return session.admin()->ListWorkers(ctx, req, &resp);
  });
  if (!s.ok()) return Fail(io, s);
  for (const auto& w : resp.workers()) {
    *io.out << WorkerLine(w, session.json()) << "\n";
  }
  return kExitOk;
}

// drain / undrain: sets or clears one worker's draining flag (AdminService.DrainWorker /
// ResumeWorker). A call that changes nothing (already draining, not draining) says so on
// stderr and exits 0; an unknown worker is NOT_FOUND from the scheduler: exit 1, named.
int RunDrainOrUndrain(bool drain, const std::vector<std::string>& args, const CliIo& io,
                      const Command& cmd) {
  Common common;
  FlagSet flags(cmd.usage);
  AddCommon(&flags, &common);
  std::vector<std::string> pos;
  if (int rc = ParseOrExit(flags, cmd, args, io, &pos, 1, 1); rc >= 0) return rc;
  Session session(io, common, false);
  zfarm::v1::WorkerInfo worker;
  bool changed = false;
  absl::Status s;
  if (drain) {
    zfarm::v1::DrainWorkerRequest req;
    req.set_worker_name(pos[0]);
    zfarm::v1::DrainWorkerResponse resp;
    s = session.Call("DrainWorker", [&](grpc::ClientContext* ctx) {
      return session.admin()->DrainWorker(ctx, req, &resp);
    });
    worker = resp.worker();
    changed = resp.changed();
  } else {
    zfarm::v1::ResumeWorkerRequest req;
    req.set_worker_name(pos[0]);
    zfarm::v1::ResumeWorkerResponse resp;
    s = session.Call("ResumeWorker", [&](grpc::ClientContext* ctx) {
      return session.admin()->ResumeWorker(ctx, req, &resp);
    });
    worker = resp.worker();
    changed = resp.changed();
  }
  if (!s.ok()) return Fail(io, s);
  if (!changed) {
    *io.err << "zfarm: worker " << pos[0]
            << (drain ? " is already draining" : " is not draining") << ": nothing changed\n";
  }
  if (session.json()) {
    nlohmann::json j = nlohmann::json::parse(WorkerLine(worker, true));
    j["changed"] = changed;
    *io.out << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    *io.out << WorkerLine(worker, false) << " changed=" << (changed ? "yes" : "no") << "\n";
  }
  return kExitOk;
}

int RunDrain(const std::vector<std::string>& args, const CliIo& io, const Command& cmd) {
  return RunDrainOrUndrain(true, args, io, cmd);
}

int RunUndrain(const std::vector<std::string>& args, const CliIo& io, const Command& cmd) {
  return RunDrainOrUndrain(false, args, io, cmd);
}

// grpc.health.v1.Health/Check on one address: its serving status (1 = SERVING,
// 2 = NOT_SERVING, ...), or the call's error.
absl::StatusOr<int> CheckHealth(const std::string& address,
                                const std::shared_ptr<grpc::ChannelCredentials>& creds,
                                const std::string& service, absl::Duration timeout) {
  auto channel = grpc::CreateChannel(address, creds);
  grpc::GenericStub stub(channel);
  // grpc.health.v1.HealthCheckRequest{service = 1} by hand: no generated code
  // for health.proto ships with Debian's gRPC.
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    request.push_back(static_cast<char>(service.size()));  // < 128 bytes
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer req_buf(&slice, 1), resp_buf;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  ctx.set_wait_for_ready(true);
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req_buf, &resp_buf,
                 [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) return FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  resp_buf.Dump(&slices);
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  // HealthCheckResponse{status = 1}.
  return bytes.size() >= 2 && bytes[0] == 0x08 ? bytes[1] : 0;
}

// One straight story: flags, the health rpc per address, then the report and its
// exit status (0 when one address is SERVING: the active scheduler of a list).
int RunHealth(const std::vector<std::string>& args, const CliIo& io, const Command& cmd) {
  Common common;
  std::string service;
  FlagSet flags(cmd.usage);
  flags.String("service", &service, "service name to check (default: server)", "NAME");
  flags.Duration("timeout", &common.timeout, "give up after this long (5s)");
  flags.String("scheduler", &common.scheduler,
               "address(es) when ADDR is not given (default $ZFARM_SCHEDULER)",
               "HOST:PORT[,HOST:PORT...]");
  AddSecurity(&flags, &common);
  std::vector<std::string> pos;
  if (int rc = ParseOrExit(flags, cmd, args, io, &pos, 0, 1); rc >= 0) return rc;
  if (pos.empty()) {
    if (common.scheduler.empty() && io.getenv) {
      if (const char* env = io.getenv("ZFARM_SCHEDULER"); env && *env) {
        common.scheduler = env;
      }
    }
    if (common.scheduler.empty()) return Usage(io, flags, "missing ADDR");
    pos.push_back(common.scheduler);
  }
  absl::StatusOr<std::vector<std::string>> addresses = ParseSchedulerAddresses("ADDR", pos[0]);
  if (!addresses.ok()) return Usage(io, flags, std::string(addresses.status().message()));
  const absl::Duration timeout =
      common.timeout == absl::ZeroDuration() ? absl::Seconds(5) : common.timeout;
  auto creds = security::ClientCredentials(common.tls);
  if (!creds.ok()) return Usage(io, flags, std::string(creds.status().message()));
  int code = kExitJobFailed;
  for (const std::string& address : *addresses) {
    absl::StatusOr<int> serving = CheckHealth(address, *creds, service, timeout);
    if (!serving.ok()) {
      *io.err << "zfarm: health " << address << ": " << serving.status().message() << "\n";
      if (code != kExitOk) {
        code = absl::IsDeadlineExceeded(serving.status()) ? kExitUnavailable
                                                         : ExitCodeForStatus(serving.status());
      }
      continue;
    }
    const char* names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
    *io.out << address << " " << (*serving >= 0 && *serving <= 3 ? names[*serving] : "UNKNOWN")
            << "\n";
    if (*serving == 1) {
      code = kExitOk;
    } else if (code != kExitOk) {
      code = kExitJobFailed;
    }
  }
  return code;
}

const Command kCommands[] = {
    {"submit", "zfarm submit --prompt TEXT [flags] [--wait]",
     "Submit one job. With --wait, block until it is final.",
     "  zfarm submit --prompt 'a red fox in snow' --seed 42\n"
     "  zfarm submit --prompt 'logo, flat' --width 768 --height 768 --wait "
     "--out fox.png\n"
     "  zfarm --json submit --prompt 'x' --request-id build-17-x\n",
     RunSubmit},
    {"batch",
     "zfarm batch --prompts FILE [--seeds 1,2,3 | --variants N] "
     "[--wait [--out-dir DIR]] [flags]",
     "Submit every line of a prompts file as one batch (all or nothing).\n"
     "Lines are plain prompts or JSON objects: {\"prompt\": \"...\", "
     "\"seed\": 7, \"width\": 768}.\n"
     "Re-running with the same --request-id-prefix (default $BUILD_TAG) "
     "submits nothing new.",
     "  zfarm batch --prompts prompts.txt --wait --out-dir renders/\n"
     "  zfarm batch --prompts p.jsonl --seeds 1,2,3,4 --json\n"
     "  BUILD_TAG=jenkins-site-42 zfarm batch --prompts p.txt --variants 4 "
     "--seed 100 --wait\n",
     RunBatch},
    {"watch", "zfarm watch JOB [flags]",
     "Follow one job until it is final (progress bar on a TTY).",
     "  zfarm watch j-0001\n  zfarm watch j-0001 --json --timeout 10m\n", RunWatch},
    {"status", "zfarm status JOB [flags]", "Print one job's current state.",
     "  zfarm status j-0001\n  zfarm status j-0001 --json\n", RunStatus},
    {"get", "zfarm get JOB --out FILE [--output-root DIR] [flags]",
     "Copy a finished job's PNG (from the shared mount, else over gRPC).",
     "  zfarm get j-0001 --out fox.png\n"
     "  ZFARM_OUTPUT_ROOT=/mnt/renders zfarm get j-0001 --out fox.png\n",
     RunGet},
    {"cancel", "zfarm cancel JOB | --batch ID | --label K=V [flags]",
     "Cancel a job, a batch or every job with a label.",
     "  zfarm cancel j-0001\n  zfarm cancel --batch jenkins-42-batch-ab12\n"
     "  zfarm cancel --label campaign=spring\n",
     RunCancel},
    {"list", "zfarm list [--state S] [--label K=V] [--batch ID] [--limit N]",
     "List jobs, newest first as the scheduler orders them.",
     "  zfarm list --state queued,running\n"
     "  zfarm list --label campaign=spring --json --limit 0\n",
     RunList},
    {"workers", "zfarm workers [flags]", "List the connected workers.",
     "  zfarm workers\n  zfarm workers --json\n", RunWorkers},
    {"drain", "zfarm drain WORKER [flags]",
     "Stop giving new jobs to a worker; running ones finish.", "  zfarm drain gpu-host-3/cuda:1\n",
     RunDrain},
    {"undrain", "zfarm undrain WORKER [flags]",
     "Give a drained worker jobs again (undoes drain).", "  zfarm undrain gpu-host-3/cuda:1\n",
     RunUndrain},
    {"health", "zfarm health [HOST:PORT[,HOST:PORT...]] [--service NAME] [--timeout D]",
     "Exit 0 when the grpc.health.v1 check says SERVING (1 not serving, 3 "
     "unreachable).",
     "  zfarm health localhost:50051\n"
     "  HEALTHCHECK CMD zfarm health 127.0.0.1:50051 --timeout 2s\n",
     RunHealth},
};

std::string MainHelp() {
  std::string out =
      "zfarm: the zfarm render farm CLI\n\nusage: zfarm [common flags] COMMAND [flags]\n\n"
      "commands:\n";
  for (const Command& c : kCommands) {
    absl::StrAppendFormat(&out, "  %-9s %s\n", c.name,
                          std::string(c.summary).substr(0, std::string(c.summary).find('\n')));
  }
  out +=
      "\ncommon flags (before or after COMMAND): --scheduler HOST:PORT (or $ZFARM_SCHEDULER), "
      "--timeout D, --json, --quiet, --tls-ca/--tls-cert/--tls-key FILE, --token-file FILE\n"
      "progress: a bar on a terminal; in a log, one line per job at most every 10 % or 5 s\n"
      "exit codes: 0 ok, 1 a job failed, 2 usage, 3 scheduler unavailable, "
      "4 timeout or deadline, 5 cancelled\n"
      "run 'zfarm COMMAND --help' for a command's flags and examples.\n";
  return out;
}

}  // namespace

int RunCli(const std::vector<std::string>& args, const CliIo& io) {
  if (args.empty()) {
    *io.err << MainHelp();
    return kExitUsage;
  }
  const std::string& name = args[0];
  if (name == "--help" || name == "-h" || name == "help") {
    *io.out << MainHelp();
    return kExitOk;
  }
  if (name == "--version" || name == "version") {
    *io.out << "zfarm " << ZFARM_VERSION << "\n";
    return kExitOk;
  }
  // Common flags before the subcommand (as kubectl, docker and gh take them) go in
  // front of its own arguments, so a repeat after the subcommand wins.
  std::vector<std::string> common;
  size_t i = 0;
  while (i < args.size() && absl::StartsWith(args[i], "--")) {
    const std::string flag = args[i].substr(2, args[i].find('=') - 2);
    const auto* known = std::find_if(std::begin(kCommonFlags), std::end(kCommonFlags),
                                     [&](const auto& f) { return flag == f.first; });
    if (known == std::end(kCommonFlags)) {
      *io.err << "zfarm: '" << args[i] << "' before the command is not a common flag ("
              << "--scheduler, --timeout, --json, --quiet, --tls-*, --token-file)\n"
              << "usage: zfarm [common flags] COMMAND [flags] (run zfarm --help)\n";
      return kExitUsage;
    }
    common.push_back(args[i]);
    if (known->second && args[i].find('=') == std::string::npos) {
      if (i + 1 >= args.size()) {
        *io.err << "zfarm: flag '" << args[i] << "' needs a value\n";
        return kExitUsage;
      }
      common.push_back(args[++i]);
    }
    ++i;
  }
  if (i >= args.size()) {
    *io.err << MainHelp();
    return kExitUsage;
  }
  const std::string& command = args[i];
  for (const Command& c : kCommands) {
    if (command == c.name) {
      common.insert(common.end(), args.begin() + i + 1, args.end());
      return c.run(common, io, c);
    }
  }
  *io.err << "zfarm: unknown command '" << command << "'\n"
          << "usage: zfarm COMMAND [flags] (run zfarm --help)\n";
  return kExitUsage;
}

}  // namespace zfarm::client
