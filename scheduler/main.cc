// zfarm-scheduler: parses flags and runs SchedulerServer until SIGTERM/SIGINT.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "glog/logging.h"
#include "grpcpp/support/channel_arguments.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "proto/base/monotonic_wait.h"
#include "proto/base/version.h"
#include "proto/http/metrics_server.h"
#include "proto/security/auth.h"
#include "proto/security/tls.h"
#include "scheduler/http/rest_gateway.h"
#include "scheduler/http/webhook_sender.h"
#include "scheduler/server.h"
#include "scheduler/validation.h"
#if ZFARM_HAVE_LIBPQ
#include "scheduler/leader_lease.h"
#include "scheduler/pg_conn.h"
#include "scheduler/postgres_journal.h"
#include "scheduler/standby_server.h"
#endif

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "gRPC address HOST:PORT (port 0 = any free port)");
ABSL_FLAG(std::string, state_dir, "",
          "Directory of the job journal (journal.db); must be on a local disk (required unless "
          "--journal names PostgreSQL; with it, only the input pictures and thumbnails live here, "
          "and a private temporary folder is used when empty)");
ABSL_FLAG(std::string, journal, "",
          "Where the journal lives: empty = SQLite in --state-dir (one scheduler); "
          "postgres://USER@HOST:PORT/DB?sslmode=verify-full&... = a PostgreSQL database shared by "
          "active/standby schedulers (libpq URL parameters; no password in it)");
ABSL_FLAG(std::string, journal_password_file, "",
          "File holding the PostgreSQL password of --journal (surrounding whitespace ignored); "
          "empty = libpq's PGPASSFILE / ~/.pgpass");
ABSL_FLAG(std::string, name, "",
          "This scheduler's name in the leader lease and in a standby's answers (PostgreSQL "
          "journal); empty = HOSTNAME:PORT of --listen");
ABSL_FLAG(absl::Duration, leader_lease, absl::Seconds(6),
          "PostgreSQL journal: how long the active scheduler's lease lasts without a renewal; a "
          "standby takes over within about --leader-lease + --leader-renew of the active one's "
          "death");
ABSL_FLAG(absl::Duration, leader_renew, absl::Seconds(2),
          "PostgreSQL journal: how often the active scheduler renews its lease, and how often a "
          "standby tries to take it");
ABSL_FLAG(std::string, output_root, "",
          "Shared output root where workers write PNGs; read-only here, used by GetResult and "
          "commit checks (required)");
ABSL_FLAG(std::string, metrics_listen, "",
          "HOST:PORT for Prometheus /metrics (empty = no metrics endpoint); HTTPS with "
          "--tls-cert unless --metrics-plaintext");
ABSL_FLAG(bool, metrics_plaintext, false,
          "Serve --metrics-listen over plain HTTP even with --tls-cert (scrapers without TLS)");
ABSL_FLAG(std::string, http_listen, "",
          "HOST:PORT for the REST/JSON gateway (/v1/jobs...); HTTPS (mutual TLS with "
          "--tls-client-ca) with --tls-cert; empty = no gateway");
ABSL_FLAG(absl::Duration, http_images_timeout, absl::Minutes(10),
          "How long POST /v1/images/generations waits for its images before 504 (the jobs go "
          "on; a retry with the same Idempotency-Key waits for them again)");
ABSL_FLAG(int32_t, http_max_connections, 1024,
          "Open connections the REST gateway accepts; beyond it new ones are closed (plain "
          "HTTP: after a 503 answer)");
ABSL_FLAG(int32_t, http_max_connections_per_ip, 128,
          "Open REST gateway connections per client address; beyond it as --http-max-connections");
ABSL_FLAG(absl::Duration, http_request_timeout, absl::Seconds(10),
          "Time a REST client has for a whole request (TLS handshake, headers and body), from "
          "its first byte; slower connections are closed");
ABSL_FLAG(int32_t, max_queued_jobs, 100000,
          "QUEUED jobs beyond which submits fail with RESOURCE_EXHAUSTED");
ABSL_FLAG(absl::Duration, retry_after, absl::Seconds(1),
          "Retry delay sent with RESOURCE_EXHAUSTED (typed zfarm-error-details-bin and "
          "retry-after-ms trailers, the message; REST: Retry-After)");
ABSL_FLAG(int32_t, max_attempts, 3,
          "Attempts (leases that reached RUNNING) before a job is FAILED");
ABSL_FLAG(absl::Duration, retention, absl::Hours(24 * 7),
          "Finished jobs are pruned from the journal after this long (PNGs are never deleted)");
ABSL_FLAG(int64_t, max_finished_jobs, 100000,
          "Finished jobs kept for status/list (about 4.5 KB of memory each); beyond it the "
          "oldest-ended are pruned before --retention (request ids stay idempotent); 0 = no cap");
ABSL_FLAG(int64_t, max_tombstones, 1000000,
          "Idempotency tombstones of pruned jobs kept (about 1 KB each); beyond it the oldest "
          "go before --tombstone-ttl; 0 = no cap");
ABSL_FLAG(absl::Duration, tombstone_ttl, absl::Hours(24),
          "Minimum time a request_id stays deduplicated (at least 24h recommended)");
ABSL_FLAG(absl::Duration, heartbeat_interval, absl::Seconds(5),
          "Heartbeat interval asked of workers");
ABSL_FLAG(absl::Duration, lease_timeout, absl::Seconds(30),
          "A worker silent this long is lost and its leases expire");
ABSL_FLAG(double, aging_per_minute, 1.0,
          "Priority points a queued job gains per minute of waiting (anti-starvation)");
ABSL_FLAG(int32_t, min_size_px, 256, "Smallest accepted width/height");
ABSL_FLAG(int32_t, max_size_px, 2048, "Largest accepted width/height");
ABSL_FLAG(int32_t, max_prompt_bytes, 4000, "Largest prompt / negative prompt in UTF-8 bytes");
ABSL_FLAG(int32_t, max_steps, 50, "Largest accepted steps");
ABSL_FLAG(int32_t, max_batch_jobs, 1000, "Largest SubmitJobs batch");
ABSL_FLAG(int32_t, max_labels, 32, "Most labels per job");
ABSL_FLAG(std::string, webhook_allow, "",
          "Comma-separated webhook allow-list: host:port entries (exact) or URL prefixes "
          "(http://host:port/path); a job's webhook_url must match one. Empty = webhooks off");
ABSL_FLAG(std::string, webhook_secret_file, "",
          "File holding the HMAC-SHA256 key for X-Zfarm-Signature (required with "
          "--webhook-allow; surrounding whitespace is ignored)");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain: serve TLS on --listen, --http-listen (HTTPS) and "
          "--metrics-listen (with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require client certificates signed by it (mutual TLS) on --listen, "
          "--http-listen and --metrics-listen; "
          "with --probe: the CA of the probed server");
ABSL_FLAG(std::string, token_file, "",
          "Bearer tokens, one per line: '<token> <principal> <role>' (role submitter|admin|"
          "worker); reloaded when the file changes. Empty = no authentication (everyone admin)");
ABSL_FLAG(int32_t, max_queued_per_principal, 0,
          "QUEUED jobs per principal beyond which its submits get RESOURCE_EXHAUSTED (0 = off)");
ABSL_FLAG(double, submit_rate_per_principal, 0,
          "Submit calls per second per principal (token bucket; 0 = off)");
ABSL_FLAG(int32_t, submit_burst_per_principal, 0,
          "Burst of --submit-rate-per-principal (0 = max(1, rate))");
ABSL_FLAG(int32_t, max_watchers_per_job, 256,
          "Concurrent watch streams per job, batch or label selector");
ABSL_FLAG(int32_t, max_streams_per_client, 1024,
          "Concurrent watch/result streams per client (principal, or IP when anonymous); 0 = off");
ABSL_FLAG(int64_t, max_watch_backlog_bytes, 1 << 20,
          "Unsent events (bytes) a watch stream may hold for a client that reads too slowly; "
          "beyond, the stream ends with RESOURCE_EXHAUSTED (0 = unbounded)");
ABSL_FLAG(int32_t, max_message_bytes, 0,
          "Largest gRPC request message accepted; 0 = 3 x --max-input-bytes + 1 MiB (a submit "
          "with an init image, a mask and a control picture)");
ABSL_FLAG(int64_t, max_input_bytes, 16 << 20,
          "Largest init_image / mask_image / control.image in bytes (in the request or read "
          "from --input-root)");
ABSL_FLAG(std::string, input_root, "",
          "Read-only folder that ImageInput.path is relative to (confined like --output-root); "
          "empty = path inputs are refused");
ABSL_FLAG(absl::Duration, lora_affinity_wait, absl::Seconds(10),
          "How long a job may wait for a worker that already has its LoRA set applied before "
          "any capable worker takes it");
ABSL_FLAG(std::string, probe, "",
          "Do not serve: check grpc.health.v1 at this HOST:PORT, exit 0 if SERVING, 1 otherwise");
ABSL_FLAG(absl::Duration, probe_timeout, absl::Seconds(2), "Timeout of --probe");
ABSL_FLAG(bool, version, false, "Print the version and exit");

namespace {

namespace http = ::zfarm::scheduler::http;
using zfarm::scheduler::kMaxPicturesPerJob;
using zfarm::scheduler::ServerOptions;

std::string VersionString() { return std::string("zfarm-scheduler ") + ZFARM_VERSION; }

// A startup failure: the message for stderr and the exit status (2 = bad flags,
// 1 = a server that could not start).
struct Failure {
  int exit_code;
  std::string message;
};
Failure BadFlag(std::string message) { return Failure{2, std::move(message)}; }

void SetUsage() {
  absl::FlagsUsageConfig uc;
  uc.version_string = [] { return VersionString() + "\n"; };
  uc.contains_help_flags = [](absl::string_view f) {
    return f.find("scheduler/main.cc") != absl::string_view::npos;
  };
  absl::SetFlagsUsageConfig(uc);
  absl::SetProgramUsageMessage(
      "zfarm-scheduler: the zfarm job scheduler (JobService, WorkerService, AdminService,\n"
      "grpc.health.v1, reflection).\n"
      "  zfarm-scheduler --listen 127.0.0.1:50051 --state-dir DIR --output-root DIR "
      "[--metrics-listen 127.0.0.1:9464]\n"
      "SIGTERM/SIGINT: stop accepting, flush the journal, exit 0.\n"
      "Flags may be spelled with dashes or underscores (--state-dir = --state_dir).");
}

// Flags are spelled with dashes (--state-dir); absl names use underscores.
void ParseFlags(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  std::vector<char*> fixed;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string& a = args[i];
    if (i > 0 && a.rfind("--", 0) == 0) {
      for (size_t k = 2; k < a.size() && a[k] != '='; ++k) {
        if (a[k] == '-') a[k] = '_';
      }
    }
    fixed.push_back(a.data());
  }
  absl::ParseCommandLine(static_cast<int>(fixed.size()), fixed.data());
}

zfarm::security::TlsFlags TlsFromFlags() {
  zfarm::security::TlsFlags tls;
  tls.cert = absl::GetFlag(FLAGS_tls_cert);
  tls.key = absl::GetFlag(FLAGS_tls_key);
  tls.ca = absl::GetFlag(FLAGS_tls_client_ca);
  return tls;
}

// --probe: a client of another scheduler's health service (--tls-client-ca names
// its CA here). The exit status.
int Probe(const zfarm::security::TlsFlags& tls) {
  auto creds = zfarm::security::ClientCredentials(tls);
  if (!creds.ok()) {
    std::cerr << "zfarm-scheduler: " << creds.status().message() << "\n";
    return 2;
  }
  absl::Status s = zfarm::scheduler::ProbeHealth(absl::GetFlag(FLAGS_probe),
                                                 absl::GetFlag(FLAGS_probe_timeout), *creds);
  std::cout << (s.ok() ? "SERVING" : std::string(s.ToString())) << "\n";
  return s.ok() ? 0 : 1;
}

// Scheduler::Options from the flags, checked.
std::optional<Failure> SchedulerOptionsFromFlags(zfarm::scheduler::Scheduler::Options* so) {
  so->state_dir = absl::GetFlag(FLAGS_state_dir);
  so->output_root = absl::GetFlag(FLAGS_output_root);
  so->max_queued_jobs = absl::GetFlag(FLAGS_max_queued_jobs);
  so->retry_after = absl::GetFlag(FLAGS_retry_after);
  so->max_attempts = absl::GetFlag(FLAGS_max_attempts);
  so->retention = absl::GetFlag(FLAGS_retention);
  so->tombstone_ttl = absl::GetFlag(FLAGS_tombstone_ttl);
  so->max_finished_jobs = absl::GetFlag(FLAGS_max_finished_jobs);
  so->max_tombstones = absl::GetFlag(FLAGS_max_tombstones);
  so->heartbeat_interval = absl::GetFlag(FLAGS_heartbeat_interval);
  so->lease_timeout = absl::GetFlag(FLAGS_lease_timeout);
  so->aging_per_minute = absl::GetFlag(FLAGS_aging_per_minute);
  so->max_queued_per_principal = absl::GetFlag(FLAGS_max_queued_per_principal);
  so->submit_rate_per_principal = absl::GetFlag(FLAGS_submit_rate_per_principal);
  so->submit_burst_per_principal = absl::GetFlag(FLAGS_submit_burst_per_principal);
  so->max_watchers_per_job = absl::GetFlag(FLAGS_max_watchers_per_job);
  so->limits.min_size_px = absl::GetFlag(FLAGS_min_size_px);
  so->limits.max_size_px = absl::GetFlag(FLAGS_max_size_px);
  so->limits.max_prompt_bytes = absl::GetFlag(FLAGS_max_prompt_bytes);
  so->limits.max_steps = absl::GetFlag(FLAGS_max_steps);
  so->limits.max_batch_jobs = absl::GetFlag(FLAGS_max_batch_jobs);
  so->limits.max_labels = absl::GetFlag(FLAGS_max_labels);
  so->limits.max_input_bytes = absl::GetFlag(FLAGS_max_input_bytes);
  so->lora_affinity_wait = absl::GetFlag(FLAGS_lora_affinity_wait);
  if (so->limits.max_input_bytes < 1 || so->limits.max_input_bytes > (int64_t{1} << 30)) {
    return BadFlag(absl::StrCat("--max-input-bytes: ", so->limits.max_input_bytes,
                                " is outside [1, 1073741824]"));
  }
  if (so->lora_affinity_wait < absl::ZeroDuration()) {
    return BadFlag("--lora-affinity-wait: must not be negative");
  }
  return std::nullopt;
}

// ServerOptions from the flags: credentials, tokens, limits, the scheduler's options.
std::optional<Failure> ServerOptionsFromFlags(const zfarm::security::TlsFlags& tls,
                                              ServerOptions* o) {
  o->listen = absl::GetFlag(FLAGS_listen);
  auto creds = zfarm::security::ServerCredentials(tls);
  if (!creds.ok()) return BadFlag(std::string(creds.status().message()));
  o->security.credentials = [c = *creds] { return c; };
  if (!absl::GetFlag(FLAGS_token_file).empty()) {
    auto store = zfarm::security::TokenStore::Open(absl::GetFlag(FLAGS_token_file));
    if (!store.ok()) return BadFlag(std::string(store.status().message()));
    o->security.authorizer = std::make_shared<zfarm::scheduler::TokenAuthorizer>(
        std::shared_ptr<zfarm::security::TokenStore>(*std::move(store)));
  }
  o->max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  o->max_streams_per_client = absl::GetFlag(FLAGS_max_streams_per_client);
  o->max_watch_backlog_bytes = absl::GetFlag(FLAGS_max_watch_backlog_bytes);
  o->input_root = absl::GetFlag(FLAGS_input_root);
  if (std::optional<Failure> f = SchedulerOptionsFromFlags(&o->scheduler)) return f;
  o->registry = std::make_shared<prometheus::Registry>();
  return std::nullopt;
}

// Webhooks (--webhook-allow; null when off): validated at submit against the
// allow-list, sent after the final transition is durable (Scheduler::Options::
// on_final), never under its lock. Hooks them into `so`.
std::optional<Failure> StartWebhooks(zfarm::scheduler::Scheduler::Options* so,
                                     std::unique_ptr<http::WebhookSender>* out) {
  if (absl::GetFlag(FLAGS_webhook_allow).empty()) return std::nullopt;
  http::WebhookSender::Options wo;
  for (absl::string_view a :
       absl::StrSplit(absl::GetFlag(FLAGS_webhook_allow), ',', absl::SkipWhitespace())) {
    wo.allow.emplace_back(absl::StripAsciiWhitespace(a));
  }
  const std::string secret_file = absl::GetFlag(FLAGS_webhook_secret_file);
  if (!secret_file.empty()) {
    std::ifstream f(secret_file);
    std::stringstream ss;
    ss << f.rdbuf();
    if (!f) return BadFlag(absl::StrCat("--webhook-secret-file: cannot read ", secret_file));
    wo.secret = std::string(absl::StripAsciiWhitespace(ss.str()));
    if (wo.secret.empty()) {
      return BadFlag(absl::StrCat("--webhook-secret-file: ", secret_file, " is empty"));
    }
  }
  auto sender = http::WebhookSender::Create(wo);
  if (!sender.ok()) return BadFlag(std::string(sender.status().message()));
  *out = *std::move(sender);
  so->limits.webhook_validator = [w = out->get()](const std::string& url) {
    return w->Validate(url);
  };
  so->on_final = [w = out->get()](const zfarm::v1::Job& job) { w->Enqueue(job); };
  return std::nullopt;
}

// Prometheus /metrics (--metrics-listen; null when off).
std::optional<Failure> StartMetrics(const zfarm::security::TlsFlags& tls,
                                    std::shared_ptr<prometheus::Registry> registry,
                                    std::unique_ptr<zfarm::http::HttpServer>* out) {
  if (absl::GetFlag(FLAGS_metrics_listen).empty()) return std::nullopt;
  auto m = zfarm::http::StartMetricsServer(
      absl::GetFlag(FLAGS_metrics_listen),
      absl::GetFlag(FLAGS_metrics_plaintext) ? zfarm::security::TlsFlags() : tls,
      std::move(registry));
  if (!m.ok()) {
    LOG(ERROR) << "event=startup_failed error=\"" << m.status().message() << "\"";
    return Failure{1, std::string(m.status().message())};
  }
  *out = *std::move(m);
  std::cout << "zfarm-scheduler metrics on port " << (*out)->port() << std::endl;
  return std::nullopt;
}

// The REST gateway (--http-listen; null when off) on `server`, on `http_port`
// when positive. It calls JobService in process, so it shares validation and auth.
std::optional<Failure> StartGateway(const zfarm::security::TlsFlags& tls,
                                    const zfarm::scheduler::Limits& limits,
                                    const std::string& state_dir, grpc::Server* server,
                                    int http_port, std::unique_ptr<http::RestGateway>* out) {
  if (absl::GetFlag(FLAGS_http_listen).empty()) return std::nullopt;
  http::RestGateway::Options go;
  go.http.listen = absl::GetFlag(FLAGS_http_listen);
  // After a takeover: the port the standby's gateway had (--http-listen may say 0).
  if (http_port > 0) {
    go.http.listen = absl::StrCat(go.http.listen.substr(0, go.http.listen.rfind(':')), ":",
                                  http_port);
  }
  go.http.tls = tls;
  go.http.max_connections = absl::GetFlag(FLAGS_http_max_connections);
  go.http.max_connections_per_ip = absl::GetFlag(FLAGS_http_max_connections_per_ip);
  go.http.request_timeout = absl::GetFlag(FLAGS_http_request_timeout);
  go.images_timeout = absl::GetFlag(FLAGS_http_images_timeout);
  go.thumbnail_dir = state_dir + "/thumbnails";
  // POST /v1/jobs carries pictures in base64 (4/3 of their size): room for every one.
  go.http.max_body_bytes = std::max<size_t>(
      go.http.max_body_bytes,
      static_cast<size_t>(kMaxPicturesPerJob * ((limits.max_input_bytes + 2) / 3 * 4) + (1 << 20)));
  for (const auto& [flag, ok] :
       {std::pair{"--http-max-connections", go.http.max_connections >= 1},
        std::pair{"--http-max-connections-per-ip", go.http.max_connections_per_ip >= 1},
        std::pair{"--http-request-timeout", go.http.request_timeout > absl::ZeroDuration()},
        std::pair{"--http-images-timeout", go.images_timeout > absl::ZeroDuration()}}) {
    if (!ok) return BadFlag(absl::StrCat(flag, ": must be positive"));
  }
  auto g = http::RestGateway::Start(
      go, server->InProcessChannel(grpc::ChannelArguments()));
  if (!g.ok()) {
    return Failure{1, absl::StrCat("--http-listen ", go.http.listen, ": ", g.status().message())};
  }
  *out = std::move(*g);
  std::cout << "zfarm-scheduler REST gateway on port " << (*out)->port() << std::endl;
  return std::nullopt;
}

int Exit(const Failure& f) {
  std::cerr << "zfarm-scheduler: " << f.message << "\n";
  return f.exit_code;
}

#if ZFARM_HAVE_LIBPQ
// --journal postgres://...: the journal, the lease and the standby phase. Null
// members when the journal is SQLite.
struct HaState {
  std::unique_ptr<zfarm::scheduler::PostgresJournal> journal;
  std::unique_ptr<zfarm::scheduler::LeaderLease> lease;
  int64_t epoch = 0;
  std::string state_dir;  // --state-dir, or a private temporary folder
  int http_port = 0;      // the standby's REST gateway port, kept by the active one
};

// Set (before SIGTERM is raised at ourselves) when leadership is lost.
std::atomic<bool> leadership_lost{false};
void StepDown() {
  leadership_lost = true;
  kill(getpid(), SIGTERM);
}

// Opens the PostgreSQL journal and the lease (start-up fails naming --journal),
// then serves as a standby (StandbyServer; the REST gateway on it) until this
// scheduler takes the lease or a stop signal comes (then *stopped).
std::optional<Failure> RunStandby(const zfarm::security::TlsFlags& tls,
                                  const ServerOptions& o, const sigset_t& stop_signals,
                                  HaState* ha, int* port, bool* stopped) {
  namespace zs = ::zfarm::scheduler;
  zs::pg::ConnectOptions connect;
  connect.url = absl::GetFlag(FLAGS_journal);
  connect.password_file = absl::GetFlag(FLAGS_journal_password_file);
  const absl::Duration lease = absl::GetFlag(FLAGS_leader_lease);
  const absl::Duration renew = absl::GetFlag(FLAGS_leader_renew);
  if (lease < absl::Seconds(1)) return BadFlag("--leader-lease: must be at least 1s");
  if (renew <= absl::ZeroDuration() || renew * 2 > lease) {
    return BadFlag("--leader-renew: must be positive and at most half of --leader-lease");
  }
  if (absl::Status s = zs::pg::CheckUrl(connect.url); !s.ok()) {
    return BadFlag(std::string(s.message()));
  }
  // A transaction left open by a paused scheduler must not hold the lease row
  // past a takeover; lock waits are bounded.
  connect.settings = {
      {"idle_in_transaction_session_timeout",
       absl::StrCat(absl::ToInt64Milliseconds(lease), "ms")},
      {"lock_timeout", absl::StrCat(absl::ToInt64Milliseconds(lease), "ms")}};
  auto journal = zs::PostgresJournal::Open({.connect = connect});
  if (!journal.ok()) {
    const int code = journal.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
    return Failure{code, std::string(journal.status().message())};
  }
  ha->journal = *std::move(journal);
  auto standby = zs::StandbyServer::Start(o.listen, o.security.credentials());
  if (!standby.ok()) return Failure{1, std::string(standby.status().message())};
  *port = (*standby)->port();
  std::string name = absl::GetFlag(FLAGS_name);
  if (name.empty()) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    name = absl::StrCat(host, ":", *port);
  }
  (*standby)->SetName(name);
  auto l = zs::LeaderLease::Open({.connect = connect, .holder = name, .duration = lease});
  if (!l.ok()) return Failure{1, std::string(l.status().message())};
  ha->lease = *std::move(l);
  std::unique_ptr<http::RestGateway> gateway;
  if (std::optional<Failure> f = StartGateway(tls, o.scheduler.limits, ha->state_dir,
                                              (*standby)->grpc_server(), 0, &gateway)) {
    return f;
  }
  if (gateway) ha->http_port = gateway->port();
  std::cout << "zfarm-scheduler " << name << " standby on " << (*standby)->port() << std::endl;
  for (;;) {
    absl::StatusOr<zs::LeaderLease::State> st = ha->lease->TryAcquire();
    if (!st.ok()) {
      LOG(WARNING) << "event=lease_acquire_failed error=\"" << st.status().message() << "\"";
    } else if (st->held) {
      ha->epoch = st->epoch;
      LOG(INFO) << "event=leadership_acquired name=" << name << " epoch=" << st->epoch;
      break;
    } else {
      (*standby)->SetActive(st->holder);
    }
    const timespec wait = absl::ToTimespec(renew);
    if (sigtimedwait(&stop_signals, nullptr, &wait) > 0) {
      *stopped = true;
      return std::nullopt;
    }
  }
  // From now on a write after losing the lease is refused and makes us step down.
  ha->journal->Fence(ha->lease->options().name, ha->epoch, StepDown);
  gateway.reset();
  (*standby)->Shutdown();
  return std::nullopt;
}

// Renews the lease every --leader-renew until `stop`; steps down when it is lost.
void RenewLoop(zfarm::scheduler::LeaderLease* lease, int64_t epoch, absl::Notification* stop) {
  const absl::Duration every = absl::GetFlag(FLAGS_leader_renew);
  while (!zfarm::base::PollFor(every, [&] { return stop->HasBeenNotified(); })) {
    absl::Status s = lease->Renew(epoch);
    if (s.code() == absl::StatusCode::kFailedPrecondition) {
      LOG(ERROR) << "event=leadership_lost error=\"" << s.message() << "\"";
      StepDown();
      return;
    }
    if (!s.ok()) LOG(WARNING) << "event=lease_renew_failed error=\"" << s.message() << "\"";
  }
}

// After RunStandby() won the lease: the active server listens on the standby's
// port and opens the journal RunStandby() opened (already fenced).
void HandOverJournal(int port, HaState* ha, ServerOptions* o) {
  o->listen = absl::StrCat(o->listen.substr(0, o->listen.rfind(':')), ":", port);
  auto handed =
      std::make_shared<std::unique_ptr<zfarm::scheduler::Journal>>(std::move(ha->journal));
  o->scheduler.open_journal =
      [handed]() -> absl::StatusOr<std::unique_ptr<zfarm::scheduler::Journal>> {
    if (!*handed) return absl::FailedPreconditionError("journal: already handed over");
    return std::move(*handed);
  };
}

#else
// A build without libpq (Debian libpq-dev): --journal postgres:// is refused.
struct HaState {
  std::string state_dir;
  int http_port = 0;
  struct NoLease {
    absl::Status Release(int64_t) { return absl::OkStatus(); }
  };
  std::unique_ptr<NoLease> lease;
  int64_t epoch = 0;
};
bool leadership_lost = false;
std::optional<Failure> RunStandby(const zfarm::security::TlsFlags&, const ServerOptions&,
                                  const sigset_t&, HaState*, int*, bool*) {
  return BadFlag(
      "--journal: this zfarm-scheduler was built without libpq (Debian libpq-dev), so it has no "
      "PostgreSQL journal");
}
void RenewLoop(HaState::NoLease*, int64_t, absl::Notification*) {}
void HandOverJournal(int, HaState*, ServerOptions*) {}
#endif  // ZFARM_HAVE_LIBPQ

}  // namespace

int main(int argc, char** argv) {
  SetUsage();
  ParseFlags(argc, argv);
  if (absl::GetFlag(FLAGS_version)) {
    std::cout << VersionString() << "\n";
    return 0;
  }
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);

  const zfarm::security::TlsFlags tls = TlsFromFlags();
  if (!absl::GetFlag(FLAGS_probe).empty()) return Probe(tls);
  const bool postgres = !absl::GetFlag(FLAGS_journal).empty();
  if ((!postgres && absl::GetFlag(FLAGS_state_dir).empty()) ||
      absl::GetFlag(FLAGS_output_root).empty()) {
    std::cerr << "zfarm-scheduler: --state-dir (unless --journal postgres://...) and "
                 "--output-root are required (see --help)\n";
    return 2;
  }

  // Block the stop signals in every thread; the main thread waits for them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  ServerOptions o;
  if (std::optional<Failure> f = ServerOptionsFromFlags(tls, &o)) return Exit(*f);
  HaState ha;
  ha.state_dir = absl::GetFlag(FLAGS_state_dir);
  if (postgres && ha.state_dir.empty()) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "zfarm-scheduler-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) return Exit(Failure{1, "cannot create a temporary state folder"});
    ha.state_dir = tmpl;
    o.scheduler.state_dir = tmpl;
    LOG(WARNING) << "event=private_state_dir dir=" << tmpl
                 << " note=\"input pictures of queued jobs do not survive a failover; give every "
                    "replica one shared --state-dir\"";
  }
  std::unique_ptr<http::WebhookSender> webhooks;
  if (std::optional<Failure> f = StartWebhooks(&o.scheduler, &webhooks)) return Exit(*f);
  std::unique_ptr<zfarm::http::HttpServer> metrics;
  if (std::optional<Failure> f = StartMetrics(tls, o.registry, &metrics)) return Exit(*f);

  // 1 while this scheduler serves (SQLite: always), 0 while it is a standby.
  prometheus::Gauge& active = prometheus::BuildGauge()
                                  .Name("zfarm_scheduler_active")
                                  .Help("1 while this scheduler is the active one, 0 as a standby")
                                  .Register(*o.registry)
                                  .Add({});
  if (postgres) {
    int port = 0;
    bool stopped = false;
    if (std::optional<Failure> f = RunStandby(tls, o, stop_signals, &ha, &port, &stopped)) {
      LOG(ERROR) << "event=startup_failed error=\"" << f->message << "\"";
      return Exit(*f);
    }
    if (stopped) return 0;
    HandOverJournal(port, &ha, &o);
  }

  const zfarm::scheduler::Limits limits = o.scheduler.limits;
  auto server = zfarm::scheduler::SchedulerServer::Start(std::move(o));
  if (!server.ok() && leadership_lost) {
    // Fenced during recovery: another scheduler took over meanwhile.
    std::cerr << "zfarm-scheduler: lost leadership while loading the journal; stepping down "
                 "(exit 3)"
              << std::endl;
    return 3;
  }
  if (!server.ok()) {
    LOG(ERROR) << "event=startup_failed error=\"" << server.status() << "\"";
    return Exit(Failure{1, std::string(server.status().message())});
  }
  active.Set(1);
  absl::Notification stop_renew;
  std::thread renew;
  if (ha.lease) renew = std::thread(RenewLoop, ha.lease.get(), ha.epoch, &stop_renew);
  std::cout << "zfarm-scheduler listening on " << (*server)->address() << std::endl;
  LOG(INFO) << "event=security tls="
            << (tls.server_enabled() ? (tls.ca.empty() ? "server" : "mutual") : "off")
            << " tokens=" << (absl::GetFlag(FLAGS_token_file).empty() ? "off" : "on");

  std::unique_ptr<http::RestGateway> gateway;
  if (std::optional<Failure> f =
          StartGateway(tls, limits, ha.state_dir, (*server)->grpc_server(), ha.http_port,
                       &gateway)) {
    (*server)->Shutdown();
    return Exit(*f);
  }

  int sig = 0;
  sigwait(&stop_signals, &sig);
  if (leadership_lost) {
    // Another scheduler is active: stop serving at once. Nothing here is needed
    // (every acknowledged transition is in PostgreSQL); the supervisor restarts
    // this process, which comes back as a standby.
    LOG(ERROR) << "event=stepped_down exit=3";
    std::cerr << "zfarm-scheduler: lost leadership; stepping down (exit 3)" << std::endl;
    std::_Exit(3);
  }
  LOG(INFO) << "event=signal signal=" << sig;
  gateway.reset();  // stop HTTP first: it calls into the gRPC server
  (*server)->Shutdown();
  server->reset();  // no more final transitions, then stop the webhook thread
  webhooks.reset();
  if (renew.joinable()) {
    stop_renew.Notify();
    renew.join();
    // A clean stop hands over at once instead of after --leader-lease.
    if (absl::Status s = ha.lease->Release(ha.epoch); !s.ok()) {
      LOG(WARNING) << "event=lease_release_failed error=\"" << s.message() << "\"";
    }
  }
  return 0;
}
