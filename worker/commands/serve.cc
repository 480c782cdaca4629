// zfarm-worker serve: load and warm the pipeline on one device, then take jobs
// from the scheduler until SIGTERM/SIGINT (finish the current job, hand back
// the rest, exit 0). See worker/runtime/worker.h for the protocol.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "glog/logging.h"
#include "prometheus/registry.h"
#include "proto/base/scheduler_addresses.h"
#include "proto/base/status_macros.h"
#include "proto/flags/flags.h"
#include "proto/http/metrics_server.h"
#include "proto/security/auth.h"
#include "proto/security/tls.h"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"
#include "worker/commands/pipeline_flags.h"
#include "worker/io/model_fingerprint.h"
#include "worker/io/model_folder.h"
#include "worker/pipeline/device_info.h"
#include "worker/pipeline/pipeline.h"
#include "worker/pipeline/pipeline_renderer.h"
#include "worker/runtime/health_server.h"
#include "worker/runtime/lora_catalog.h"
#include "worker/runtime/metrics.h"
#include "worker/runtime/worker.h"

namespace zfarm::worker {
namespace {

using ::zfarm::base::ParseSchedulerAddresses;

constexpr char kCommand[] = "serve";

// Every flag of serve, with its default.
struct ServeFlags {
  std::string scheduler, model, output_root, device = "cpu", name;
  std::string model_name = "z-image-turbo";
  std::string warmup;  // empty: 1024x1024 on CUDA, 256x256 on the CPU
  std::string max_size = "2048x2048";
  int32_t warmup_steps = 2, prefetch = 1;
  int64_t min_free_disk_mb = 512;
  absl::Duration shutdown_grace = absl::Minutes(10);
  std::string health_listen, metrics_listen;
  bool metrics_plaintext = false;
  PipelineFlags pipeline;
  std::string precision, weights_cache, lora_dir, controlnet;
  std::string tls_ca, tls_cert, tls_key, token_file;
  std::string health_tls_cert, health_tls_key, health_tls_client_ca;
};

// The flag list is the help text: one definition per flag.
void DefineFlags(flags::FlagSet* fs, ServeFlags* f) {
  fs->String("scheduler", &f->scheduler,
             "the zfarm-scheduler to take jobs from, or an active one and its standbys, tried in "
             "turn (the only addresses dialled; required)",
             "HOST:PORT[,HOST:PORT...]");
  fs->String("model", &f->model, "model folder (diffusers layout; required)", "DIR");
  fs->String("output-root", &f->output_root,
             "where results go: the mount the scheduler reads (required)", "DIR");
  fs->String("device", &f->device, "cpu or cuda:N; one worker process per GPU", "D");
  fs->String("name", &f->name, "unique worker name (default HOSTNAME/DEVICE)", "NAME");
  fs->String("model-name", &f->model_name, "model name jobs may ask for", "NAME");
  fs->String("warmup", &f->warmup, "warm-up image size (default 1024x1024 on CUDA, 256x256 on cpu)",
             "WxH");
  fs->Int("warmup-steps", &f->warmup_steps, "steps of the warm-up and self-test render (1..50)");
  fs->String("health-listen", &f->health_listen,
             "grpc.health.v1: SERVING when warm, connected and healthy", "HOST:PORT");
  fs->String("metrics-listen", &f->metrics_listen,
             "Prometheus /metrics (HTTPS with --health-tls-cert, unless --metrics-plaintext)",
             "HOST:PORT");
  fs->Bool("metrics-plaintext", &f->metrics_plaintext,
           "serve --metrics-listen over plain HTTP even with --health-tls-cert");
  fs->Int("prefetch", &f->prefetch, "leases held beyond the running one");
  fs->String("max-size", &f->max_size, "largest image accepted", "WxH");
  fs->Int("min-free-disk-mb", &f->min_free_disk_mb,
          "fail a job before rendering when the output root has less free space than N MiB plus "
          "the image");
  fs->Duration("shutdown-grace", &f->shutdown_grace,
               "on SIGTERM, wait this long for the current job");
  DefinePipelineFlags(fs, &f->pipeline);
  fs->String("precision", &f->precision,
             "compute precision (default bf16 on CUDA, fp32 on cpu); fp8: the DiT's attention and "
             "FFN matmuls in e4m3 (needs compute capability >= 8.9; no --lora-dir), reported in "
             "every result",
             "fp8|bf16|fp32");
  fs->String("weights-cache", &f->weights_cache,
             "read the DiT from its bf16 (with fp8: its FP8) copy there when current (written by "
             "`zfarm-worker cache-weights [--precision fp8]`; half / a quarter of the bytes of a "
             "cold start)",
             "DIR");
  fs->String("lora-dir", &f->lora_dir,
             "LoRAs jobs may name: DIR/NAME.safetensors (catalogued with their sha256 for the "
             "scheduler; rescanned at every heartbeat)",
             "DIR");
  fs->String("controlnet", &f->controlnet,
             "a Z-Image-Turbo-Fun-Controlnet-Union (1.0/2.0/2.1, folder or .safetensors) kept "
             "resident for jobs with spec.control (announced as feature \"controlnet\")",
             "DIR|FILE");
  fs->String("tls-ca", &f->tls_ca,
             "CA that signed the scheduler's certificate (TLS to --scheduler)", "FILE");
  fs->String("tls-cert", &f->tls_cert, "client certificate for mutual TLS with the scheduler",
             "FILE");
  fs->String("tls-key", &f->tls_key, "private key of --tls-cert", "FILE");
  fs->String("token-file", &f->token_file,
             "bearer token (role worker) for the scheduler; default $ZFARM_TOKEN", "FILE");
  fs->String("health-tls-cert", &f->health_tls_cert,
             "serve --health-listen and --metrics-listen over TLS (with --health-tls-key)", "FILE");
  fs->String("health-tls-key", &f->health_tls_key, "private key of --health-tls-cert", "FILE");
  fs->String("health-tls-client-ca", &f->health_tls_client_ca,
             "require client certificates signed by it on --health-listen and --metrics-listen",
             "FILE");
}

// The text around the flag list in --help.
void Describe(flags::FlagSet* fs) {
  fs->set_description(
      "Loads and warms the model on one device, then takes jobs from the scheduler until "
      "SIGTERM/SIGINT\n(finishes the current job, hands back the rest, exits 0).");
  fs->set_footer(
      "Exit status: 0 after a clean SIGTERM/SIGINT shutdown, 1 when loading or warm-up "
      "fails\n(the worker then never connects), 2 on usage errors.\n\n"
      "example:\n"
      "  zfarm-worker serve --scheduler sched:50051 --device cuda:0 "
      "--model /models/Z-Image-Turbo \\\n"
      "    --output-root /mnt/renders --health-listen 0.0.0.0:8081 "
      "--metrics-listen 0.0.0.0:9465\n");
  fs->set_show_defaults(true);
}

int Fatal(const std::string& what, const absl::Status& s) {
  std::fprintf(stderr, "zfarm-worker serve: %s: %s\n", what.c_str(), s.ToString().c_str());
  LOG(ERROR) << "event=serve_failed what=\"" << what << "\" status=\"" << s.ToString() << "\"";
  return 1;
}

// What the flags mean once checked: the addresses, the sizes, the precision.
struct ServeSettings {
  std::vector<std::string> schedulers;
  std::pair<int, int> warm, max_size;
  PipelineOptions::Precision precision = PipelineOptions::Precision::kAuto;
};

// INVALID_ARGUMENT with the usage error to print.
absl::StatusOr<ServeSettings> ParseSettings(const ServeFlags& f) {
  ServeSettings s;
  ZFARM_ASSIGN_OR_RETURN(s.schedulers, ParseSchedulerAddresses("--scheduler", f.scheduler));
  const bool cuda = f.device != "cpu";
  ZFARM_ASSIGN_OR_RETURN(s.warm, ParseSize("warmup", !f.warmup.empty() ? f.warmup
                                                     : cuda            ? "1024x1024"
                                                                       : "256x256"));
  ZFARM_ASSIGN_OR_RETURN(s.max_size, ParseSize("max-size", f.max_size));
  if (f.warmup_steps < 1 || f.warmup_steps > 50) {
    return absl::InvalidArgumentError("--warmup-steps: an integer in [1, 50]");
  }
  if (f.min_free_disk_mb < 0) {
    return absl::InvalidArgumentError("--min-free-disk-mb: a non-negative integer");
  }
  if (!f.precision.empty()) {
    ZFARM_ASSIGN_OR_RETURN(s.precision, ParsePrecision(f.precision));
    if (s.precision == PipelineOptions::Precision::kFp8 && !f.lora_dir.empty()) {
      return absl::InvalidArgumentError(
          "--precision fp8 cannot serve --lora-dir (LoRAs apply to bf16 weights only)");
    }
  }
  return s;
}

// Transport security: TLS (and a bearer token) to the scheduler; TLS on the health port.
struct Credentials {
  std::shared_ptr<grpc::ChannelCredentials> channel;
  std::string token;
  security::TlsFlags health_tls;
  std::shared_ptr<grpc::ServerCredentials> health;
};

// 0, or 1 after printing what failed (Fatal).
int LoadCredentials(const ServeFlags& f, Credentials* out) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> channel =
      security::ClientCredentials({.cert = f.tls_cert, .key = f.tls_key, .ca = f.tls_ca});
  if (!channel.ok()) return Fatal("TLS to the scheduler", channel.status());
  absl::StatusOr<std::string> token = security::LoadClientToken(f.token_file);
  if (!token.ok()) return Fatal("--token-file", token.status());
  out->channel = *std::move(channel);
  out->token = *std::move(token);
  out->health_tls = {
      .cert = f.health_tls_cert, .key = f.health_tls_key, .ca = f.health_tls_client_ca};
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> health =
      security::ServerCredentials(out->health_tls);
  if (!health.ok()) return Fatal("TLS on --health-listen", health.status());
  out->health = *std::move(health);
  return 0;
}

// The ports a worker serves besides its scheduler session.
struct Endpoints {
  std::unique_ptr<HealthServer> health;
  std::unique_ptr<http::HttpServer> metrics;
};

// --health-listen and --metrics-listen; 0, or 1 after printing what failed.
int StartEndpoints(const ServeFlags& f, const Credentials& creds,
                   std::shared_ptr<prometheus::Registry> registry, Endpoints* out) {
  if (!f.health_listen.empty()) {
    auto h = HealthServer::Start(f.health_listen, creds.health);
    if (!h.ok()) return Fatal("health endpoint", h.status());
    out->health = *std::move(h);
    std::printf("health: grpc.health.v1 on %s (NOT_SERVING until warm and connected)\n",
                out->health->address().c_str());
  }
  if (!f.metrics_listen.empty()) {
    auto m = http::StartMetricsServer(
        f.metrics_listen, f.metrics_plaintext ? security::TlsFlags() : creds.health_tls, registry);
    if (!m.ok()) return Fatal("metrics endpoint", m.status());
    out->metrics = *std::move(m);
    std::printf("metrics: /metrics on port %d\n", out->metrics->port());
  }
  return 0;
}

PipelineOptions PipelineOptionsFrom(const ServeFlags& f, const ServeSettings& s) {
  PipelineOptions popts;
  popts.model_dir = f.model;
  popts.device = f.device;
  popts.precision = s.precision;
  ApplyPipelineFlags(f.pipeline, &popts);
  if (!f.weights_cache.empty()) popts.weights_cache_dir = f.weights_cache;
  if (!f.controlnet.empty()) popts.controlnet = f.controlnet;
  return popts;
}

// The warm-up render, which is also the self-test of an unhealthy worker.
GenerateRequest WarmupRequest(const ServeFlags& f, const ServeSettings& s) {
  GenerateRequest warmup;
  warmup.prompt = "a warm-up render";
  warmup.width = s.warm.first;
  warmup.height = s.warm.second;
  warmup.steps = f.warmup_steps;
  warmup.seed = 0;
  return warmup;
}

// A pipeline loaded and warmed up, with what the start-up line reports.
struct Loaded {
  std::unique_ptr<Pipeline> pipeline;
  std::string describe;
  double load_s = 0, warm_s = 0;
};

// 0, or 1 after printing what failed.
int LoadAndWarm(const PipelineOptions& popts, const GenerateRequest& warmup, Loaded* out) {
  absl::StatusOr<std::unique_ptr<Pipeline>> pipeline = Pipeline::Create(popts);
  if (!pipeline.ok()) {
    return Fatal(absl::StrCat("cannot load model ", popts.model_dir), pipeline.status());
  }
  out->pipeline = *std::move(pipeline);
  out->describe = out->pipeline->Describe();
  out->load_s = out->pipeline->load_seconds();
  const absl::Time t0 = absl::Now();
  absl::StatusOr<Image> warm_img = out->pipeline->Generate(warmup, nullptr, nullptr);
  if (!warm_img.ok()) return Fatal("warm-up render", warm_img.status());
  out->warm_s = absl::ToDoubleSeconds(absl::Now() - t0);
  return 0;
}

Worker::Options WorkerOptionsFrom(const ServeFlags& f, const ServeSettings& s,
                                  const DeviceInfo& info, const std::string& fingerprint,
                                  const Pipeline& pipeline, const GenerateRequest& warmup) {
  Worker::Options wo;
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  wo.name = !f.name.empty() ? f.name : absl::StrCat(host, "/", f.device);
  wo.device = f.device;
  wo.device_class = info.device_class;
  wo.device_name = info.name;
  wo.model = f.model_name;
  wo.model_fingerprint = fingerprint;
  wo.dtype = PrecisionName(pipeline.compute_dtype());
  wo.output_root = f.output_root;
  wo.max_width_px = s.max_size.first;
  wo.max_height_px = s.max_size.second;
  wo.prefetch = f.prefetch;
  wo.min_free_disk_bytes = f.min_free_disk_mb << 20;
  wo.self_test = warmup;
  return wo;
}

SchedulerLink::Options LinkOptionsFrom(const ServeSettings& s, const Credentials& creds) {
  SchedulerLink::Options lo;
  lo.targets = s.schedulers;
  lo.credentials = creds.channel;
  if (!creds.token.empty()) lo.metadata.emplace_back("authorization", "Bearer " + creds.token);
  return lo;
}

// Until SIGTERM/SIGINT (returned), the probes follow the worker's state.
int WaitForSignal(const sigset_t& signals, Worker& worker, HealthServer* health,
                  WorkerMetrics& metrics) {
  const timespec tick{0, 250 * 1000 * 1000};
  int sig = -1;
  while (sig < 0) {
    sig = sigtimedwait(&signals, nullptr, &tick);
    if (health != nullptr) health->SetServing(worker.Serving());
    metrics.SetServing(worker.Serving());
  }
  return sig;
}

void PrintStats(const std::string& name, const Worker::Stats& st) {
  auto pct = [](std::vector<double> v, double p) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    return 1e3 * v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
  };
  std::printf(
      "worker %s: stopped after %lld images, %lld failures; time between jobs (busy, n=%zu): "
      "p50 %.2f ms, p99 %.2f ms, max %.2f ms; to the next first step: p50 %.1f ms\n",
      name.c_str(), static_cast<long long>(st.images), static_cast<long long>(st.failures),
      st.gap_seconds.size(), pct(st.gap_seconds, 0.5), pct(st.gap_seconds, 0.99),
      pct(st.gap_seconds, 1.0), pct(st.first_step_gap_seconds, 0.5));
}

}  // namespace

// The start-up reads as the order it must happen in: flags, signals blocked before
// any thread, device, model, credentials, ports, load + warm-up, connect, wait, drain.
int RunServe(int argc, char** argv) {
  ServeFlags f;
  flags::FlagSet fs(
      "zfarm-worker serve --scheduler HOST:PORT --model DIR --output-root DIR [flags]");
  Describe(&fs);
  DefineFlags(&fs, &f);
  if (std::optional<int> rc = ParseCommandFlags(kCommand, fs, argc, argv)) return *rc;
  for (const char* required : {"scheduler", "model", "output-root"}) {
    if (!fs.Given(required)) {
      return UsageError(kCommand, fs, absl::StrCat("--", required, " is required"));
    }
  }
  absl::StatusOr<ServeSettings> settings = ParseSettings(f);
  if (!settings.ok()) return UsageError(kCommand, fs, settings.status().message());
  const std::string& device = f.device;

  // Signals are taken synchronously by this thread (sigtimedwait); block them
  // before any other thread starts so they all inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<DeviceInfo> info = QueryDevice(device);
  if (!info.ok()) return Fatal("device", info.status());
  absl::StatusOr<std::string> fingerprint = ModelFingerprint(f.model);
  if (!fingerprint.ok()) {
    return Fatal(absl::StrCat("--model ", f.model), fingerprint.status());
  }
  Credentials creds;
  if (int rc = LoadCredentials(f, &creds); rc != 0) return rc;
  auto registry = std::make_shared<prometheus::Registry>();
  WorkerMetrics metrics(registry);
  Endpoints endpoints;
  if (int rc = StartEndpoints(f, creds, registry, &endpoints); rc != 0) return rc;

  std::shared_ptr<LoraCatalog> loras;
  if (!f.lora_dir.empty()) {
    absl::StatusOr<std::unique_ptr<LoraCatalog>> c = LoraCatalog::Open(f.lora_dir);
    if (!c.ok()) return Fatal("--lora-dir", c.status());
    loras = *std::move(c);
    std::printf("loras: %zu in %s\n", loras->List().size(), loras->dir().c_str());
  }
  const PipelineOptions popts = PipelineOptionsFrom(f, *settings);
  std::printf("loading %s on %s (%s)...\n", popts.model_dir.c_str(), device.c_str(),
              info->name.c_str());
  std::fflush(stdout);
  const GenerateRequest warmup = WarmupRequest(f, *settings);
  Loaded loaded;
  if (int rc = LoadAndWarm(popts, warmup, &loaded); rc != 0) return rc;

  Worker::Options wo =
      WorkerOptionsFrom(f, *settings, *info, *fingerprint, *loaded.pipeline, warmup);
  wo.loras = loras;
  if (!f.controlnet.empty()) wo.controlnet = ControlNetName(f.controlnet);
  const SchedulerLink::Options lo = LinkOptionsFrom(*settings, creds);
  auto worker = Worker::Create(
      wo, std::make_unique<PipelineRenderer>(std::move(loaded.pipeline), device), lo);
  if (!worker.ok()) return Fatal("worker", worker.status());
  (*worker)->set_metrics(&metrics);
  std::printf(
      "worker %s: loaded in %.2f s (%s), warm-up %dx%d in %.2f s, model %s; "
      "connecting to %s\n",
      wo.name.c_str(), loaded.load_s, loaded.describe.c_str(), warmup.width, warmup.height,
      loaded.warm_s, wo.model_fingerprint.c_str(), absl::StrJoin(lo.targets, ",").c_str());
  std::fflush(stdout);
  LOG(INFO) << "event=worker_ready worker=" << wo.name << " device=" << device
            << " load_s=" << loaded.load_s << " warmup_s=" << loaded.warm_s
            << " fingerprint=" << wo.model_fingerprint;
  (*worker)->Start();

  const int sig = WaitForSignal(signals, **worker, endpoints.health.get(), metrics);
  std::printf("worker %s: signal %d: finishing the current job (grace %s)\n", wo.name.c_str(), sig,
              absl::FormatDuration(f.shutdown_grace).c_str());
  std::fflush(stdout);
  LOG(INFO) << "event=worker_shutdown worker=" << wo.name << " signal=" << sig;
  if (endpoints.health) endpoints.health->SetServing(false);
  (*worker)->Shutdown(f.shutdown_grace);
  PrintStats(wo.name, (*worker)->stats());
  return 0;
}

}  // namespace zfarm::worker
