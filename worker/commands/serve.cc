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

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "glog/logging.h"
#include "prometheus/registry.h"
#include "proto/base/scheduler_addresses.h"
#include "proto/base/status_macros.h"
#include "proto/http/metrics_server.h"
#include "proto/security/auth.h"
#include "proto/security/tls.h"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"
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

constexpr char kUsage[] =
    "usage: zfarm-worker serve --scheduler HOST:PORT --model DIR --output-root DIR\n"
    "                          [--device cpu|cuda:N] [--name NAME] [--warmup WxH]\n"
    "                          [--health-listen HOST:PORT] [--metrics-listen HOST:PORT]\n"
    "  --scheduler HOST:PORT[,HOST:PORT...]\n"
    "                            the zfarm-scheduler to take jobs from, or an active one and its\n"
    "                            standbys, tried in turn (the only addresses dialled)\n"
    "  --model DIR               model folder (diffusers layout)\n"
    "  --output-root DIR         where PNGs go: the mount the scheduler reads\n"
    "  --device D                cpu (default) or cuda:N; one worker process per GPU\n"
    "  --name NAME               unique worker name (default HOSTNAME/DEVICE)\n"
    "  --model-name NAME         model name jobs may ask for (default z-image-turbo)\n"
    "  --warmup WxH              warm-up image size (default 1024x1024 on CUDA, 256x256 on cpu)\n"
    "  --warmup-steps N          steps of the warm-up and self-test render (default 2)\n"
    "  --health-listen HOST:PORT grpc.health.v1: SERVING when warm, connected and healthy\n"
    "  --metrics-listen HOST:PORT Prometheus /metrics (HTTPS with --health-tls-cert, unless\n"
    "                            --metrics-plaintext)\n"
    "  --prefetch N              leases held beyond the running one (default 1)\n"
    "  --max-size WxH            largest image accepted (default 2048x2048)\n"
    "  --min-free-disk-mb N      fail a job before rendering when the output root has less\n"
    "                            free space than N MiB plus the image (default 512)\n"
    "  --shutdown-grace DUR      on SIGTERM, wait this long for the current job (default 10m)\n"
    "  --offload-text-encoder    keep the text encoder on the CPU and run it there\n"
    "  --no-cuda-graphs          run each DiT step eagerly (no graph memory pools)\n"
    "  --reference-ops           the reference ATen ops instead of the fused kernels\n"
    "  --vae-tiling              decode in tiles (less memory at large sizes)\n"
    "  --vae-fp32                run the VAE in float32\n"
    "  --precision fp8|bf16|fp32 compute precision (default bf16 on CUDA, fp32 on cpu); fp8:\n"
    "                            the DiT's attention and FFN matmuls in e4m3 (needs compute\n"
    "                            capability >= 8.9; no --lora-dir), reported in every result\n"
    "  --weights-cache DIR       read the DiT from its bf16 (with fp8: its FP8) copy there when\n"
    "                            current (written by `zfarm-worker cache-weights [--precision\n"
    "                            fp8]`; half / a quarter of the bytes of a cold start)\n"
    "  --lora-dir DIR            LoRAs jobs may name: DIR/NAME.safetensors (catalogued with their\n"
    "                            sha256 for the scheduler; rescanned at every heartbeat)\n"
    "  --controlnet DIR|FILE     a Z-Image-Turbo-Fun-Controlnet-Union (1.0/2.0/2.1, folder or\n"
    "                            .safetensors) kept resident for jobs with spec.control\n"
    "                            (announced as feature \"controlnet\")\n"
    "  --tls-ca FILE             CA that signed the scheduler's certificate (TLS to --scheduler)\n"
    "  --tls-cert/--tls-key FILE client certificate for mutual TLS with the scheduler\n"
    "  --token-file FILE         bearer token (role worker) for the scheduler; default $ZFARM_TOKEN\n"
    "  --health-tls-cert/--health-tls-key FILE  serve --health-listen and --metrics-listen\n"
    "                                           over TLS\n"
    "  --health-tls-client-ca FILE              and require client certificates signed by it\n"
    "Exit status: 0 after a clean SIGTERM/SIGINT shutdown, 1 when loading or warm-up fails\n"
    "(the worker then never connects), 2 on usage errors.\n";

const std::vector<std::string> kBoolFlags = {"offload-text-encoder", "vae-tiling", "vae-fp32",
                                             "no-cuda-graphs", "reference-ops",
                                             "metrics-plaintext", "help"};
const std::vector<std::string> kValueFlags = {
    "scheduler",      "model",         "output-root",   "device",
    "name",           "model-name",    "warmup",        "warmup-steps",
    "health-listen",  "metrics-listen", "prefetch",     "max-size",
    "min-free-disk-mb", "shutdown-grace", "tls-ca",         "tls-cert",
    "tls-key",          "token-file",     "health-tls-cert", "health-tls-key",
    "health-tls-client-ca", "weights-cache", "lora-dir", "controlnet", "precision"};

int Usage(const std::string& why) {
  std::fprintf(stderr, "zfarm-worker serve: %s\n%s", why.c_str(), kUsage);
  return 2;
}

int Fatal(const std::string& what, const absl::Status& s) {
  std::fprintf(stderr, "zfarm-worker serve: %s: %s\n", what.c_str(), s.ToString().c_str());
  LOG(ERROR) << "event=serve_failed what=\"" << what << "\" status=\"" << s.ToString() << "\"";
  return 1;
}

// The flags that are numbers, sizes and durations, checked.
struct ServeSettings {
  std::string device;
  std::vector<std::string> schedulers;
  std::pair<int, int> warm, max_size;
  int warmup_steps = 2, prefetch = 1;
  int64_t min_free_mb = 512;
  absl::Duration grace = absl::Minutes(10);
  PipelineOptions::Precision precision = PipelineOptions::Precision::kAuto;
};

// INVALID_ARGUMENT with the usage error to print.
absl::StatusOr<ServeSettings> ParseSettings(const ParsedFlags& f) {
  ServeSettings s;
  ZFARM_ASSIGN_OR_RETURN(s.schedulers, ParseSchedulerAddresses("--scheduler", f.Get("scheduler")));
  s.device = f.Get("device", "cpu");
  const bool cuda = s.device != "cpu";
  ZFARM_ASSIGN_OR_RETURN(s.warm,
                         ParseSize("warmup", f.Get("warmup", cuda ? "1024x1024" : "256x256")));
  ZFARM_ASSIGN_OR_RETURN(s.max_size, ParseSize("max-size", f.Get("max-size", "2048x2048")));
  if (!absl::SimpleAtoi(f.Get("warmup-steps", "2"), &s.warmup_steps) || s.warmup_steps < 1 ||
      s.warmup_steps > 50) {
    return absl::InvalidArgumentError("--warmup-steps: an integer in [1, 50]");
  }
  if (!absl::SimpleAtoi(f.Get("prefetch", "1"), &s.prefetch)) {
    return absl::InvalidArgumentError("--prefetch: an integer");
  }
  if (!absl::SimpleAtoi(f.Get("min-free-disk-mb", "512"), &s.min_free_mb) || s.min_free_mb < 0) {
    return absl::InvalidArgumentError("--min-free-disk-mb: a non-negative integer");
  }
  if (f.Has("shutdown-grace") && !absl::ParseDuration(f.Get("shutdown-grace"), &s.grace)) {
    return absl::InvalidArgumentError("--shutdown-grace: a duration such as 90s or 10m");
  }
  if (f.Has("precision")) {
    ZFARM_ASSIGN_OR_RETURN(s.precision, ParsePrecision(f.Get("precision")));
    if (s.precision == PipelineOptions::Precision::kFp8 && f.Has("lora-dir")) {
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
int LoadCredentials(const ParsedFlags& f, Credentials* out) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> channel = security::ClientCredentials(
      {.cert = f.Get("tls-cert"), .key = f.Get("tls-key"), .ca = f.Get("tls-ca")});
  if (!channel.ok()) return Fatal("TLS to the scheduler", channel.status());
  absl::StatusOr<std::string> token = security::LoadClientToken(f.Get("token-file"));
  if (!token.ok()) return Fatal("--token-file", token.status());
  out->channel = *std::move(channel);
  out->token = *std::move(token);
  out->health_tls = {.cert = f.Get("health-tls-cert"),
                     .key = f.Get("health-tls-key"),
                     .ca = f.Get("health-tls-client-ca")};
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
int StartEndpoints(const ParsedFlags& f, const Credentials& creds,
                   std::shared_ptr<prometheus::Registry> registry, Endpoints* out) {
  if (f.Has("health-listen")) {
    auto h = HealthServer::Start(f.Get("health-listen"), creds.health);
    if (!h.ok()) return Fatal("health endpoint", h.status());
    out->health = *std::move(h);
    std::printf("health: grpc.health.v1 on %s (NOT_SERVING until warm and connected)\n",
                out->health->address().c_str());
  }
  if (f.Has("metrics-listen")) {
    auto m = http::StartMetricsServer(
        f.Get("metrics-listen"),
        f.True("metrics-plaintext") ? security::TlsFlags() : creds.health_tls, registry);
    if (!m.ok()) return Fatal("metrics endpoint", m.status());
    out->metrics = *std::move(m);
    std::printf("metrics: /metrics on port %d\n", out->metrics->port());
  }
  return 0;
}

PipelineOptions PipelineOptionsFrom(const ParsedFlags& f, const ServeSettings& s) {
  PipelineOptions popts;
  popts.model_dir = f.Get("model");
  popts.device = s.device;
  popts.precision = s.precision;
  popts.offload_text_encoder = f.True("offload-text-encoder");
  popts.vae_tiling = f.True("vae-tiling");
  popts.cuda_graphs = !f.True("no-cuda-graphs");
  popts.fused_ops = !f.True("reference-ops");
  popts.vae_fp32 = f.True("vae-fp32");
  if (f.Has("weights-cache")) popts.weights_cache_dir = f.Get("weights-cache");
  if (f.Has("controlnet")) popts.controlnet = f.Get("controlnet");
  return popts;
}

// The warm-up render, which is also the self-test of an unhealthy worker.
GenerateRequest WarmupRequest(const ServeSettings& s) {
  GenerateRequest warmup;
  warmup.prompt = "a warm-up render";
  warmup.width = s.warm.first;
  warmup.height = s.warm.second;
  warmup.steps = s.warmup_steps;
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

Worker::Options WorkerOptionsFrom(const ParsedFlags& f, const ServeSettings& s,
                                  const DeviceInfo& info, const std::string& fingerprint,
                                  const Pipeline& pipeline, const GenerateRequest& warmup) {
  Worker::Options wo;
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  wo.name = f.Get("name", absl::StrCat(host, "/", s.device));
  wo.device = s.device;
  wo.device_class = info.device_class;
  wo.device_name = info.name;
  wo.model = f.Get("model-name", "z-image-turbo");
  wo.model_fingerprint = fingerprint;
  wo.dtype = PrecisionName(pipeline.compute_dtype());
  wo.output_root = f.Get("output-root");
  wo.max_width_px = s.max_size.first;
  wo.max_height_px = s.max_size.second;
  wo.prefetch = s.prefetch;
  wo.min_free_disk_bytes = s.min_free_mb << 20;
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
  ParsedFlags f;
  if (std::optional<int> rc =
          ParseCommandFlags("serve", kUsage, argc, argv, kBoolFlags, kValueFlags, &f)) {
    return *rc;
  }
  for (const char* required : {"scheduler", "model", "output-root"}) {
    if (!f.Has(required)) return Usage(absl::StrCat("--", required, " is required"));
  }
  absl::StatusOr<ServeSettings> settings = ParseSettings(f);
  if (!settings.ok()) return Usage(std::string(settings.status().message()));
  const std::string& device = settings->device;

  // Signals are taken synchronously by this thread (sigtimedwait); block them
  // before any other thread starts so they all inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<DeviceInfo> info = QueryDevice(device);
  if (!info.ok()) return Fatal("device", info.status());
  absl::StatusOr<std::string> fingerprint = ModelFingerprint(f.Get("model"));
  if (!fingerprint.ok()) {
    return Fatal(absl::StrCat("--model ", f.Get("model")), fingerprint.status());
  }
  Credentials creds;
  if (int rc = LoadCredentials(f, &creds); rc != 0) return rc;
  auto registry = std::make_shared<prometheus::Registry>();
  WorkerMetrics metrics(registry);
  Endpoints endpoints;
  if (int rc = StartEndpoints(f, creds, registry, &endpoints); rc != 0) return rc;

  std::shared_ptr<LoraCatalog> loras;
  if (f.Has("lora-dir")) {
    absl::StatusOr<std::unique_ptr<LoraCatalog>> c = LoraCatalog::Open(f.Get("lora-dir"));
    if (!c.ok()) return Fatal("--lora-dir", c.status());
    loras = *std::move(c);
    std::printf("loras: %zu in %s\n", loras->List().size(), loras->dir().c_str());
  }
  const PipelineOptions popts = PipelineOptionsFrom(f, *settings);
  std::printf("loading %s on %s (%s)...\n", popts.model_dir.c_str(), device.c_str(),
              info->name.c_str());
  std::fflush(stdout);
  const GenerateRequest warmup = WarmupRequest(*settings);
  Loaded loaded;
  if (int rc = LoadAndWarm(popts, warmup, &loaded); rc != 0) return rc;

  Worker::Options wo =
      WorkerOptionsFrom(f, *settings, *info, *fingerprint, *loaded.pipeline, warmup);
  wo.loras = loras;
  if (f.Has("controlnet")) wo.controlnet = ControlNetName(f.Get("controlnet"));
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
              absl::FormatDuration(settings->grace).c_str());
  std::fflush(stdout);
  LOG(INFO) << "event=worker_shutdown worker=" << wo.name << " signal=" << sig;
  if (endpoints.health) endpoints.health->SetServing(false);
  (*worker)->Shutdown(settings->grace);
  PrintStats(wo.name, (*worker)->stats());
  return 0;
}

}  // namespace zfarm::worker
