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
#include "proto/flags/flags.h"
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

// Every flag of zfarm-scheduler, with its default.
struct SchedulerFlags {
  std::string listen = "127.0.0.1:50051";
  std::string state_dir;
  std::string journal;
  std::string journal_password_file;
  std::string name;
  absl::Duration leader_lease = absl::Seconds(6);
  absl::Duration leader_renew = absl::Seconds(2);
  std::string output_root;
  std::string metrics_listen;
  bool metrics_plaintext = false;
  std::string http_listen;
  absl::Duration http_images_timeout = absl::Minutes(10);
  int32_t http_max_connections = 1024;
  int32_t http_max_connections_per_ip = 128;
  absl::Duration http_request_timeout = absl::Seconds(10);
  int32_t max_queued_jobs = 100000;
  absl::Duration retry_after = absl::Seconds(1);
  int32_t max_attempts = 3;
  absl::Duration retention = absl::Hours(24 * 7);
  int64_t max_finished_jobs = 100000;
  int64_t max_tombstones = 1000000;
  absl::Duration tombstone_ttl = absl::Hours(24);
  absl::Duration heartbeat_interval = absl::Seconds(5);
  absl::Duration lease_timeout = absl::Seconds(30);
  double aging_per_minute = 1.0;
  int32_t min_size_px = 256;
  int32_t max_size_px = 2048;
  int32_t max_prompt_bytes = 4000;
  int32_t max_steps = 50;
  int32_t max_batch_jobs = 1000;
  int32_t max_labels = 32;
  std::string webhook_allow;
  std::string webhook_secret_file;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  std::string token_file;
  int32_t max_queued_per_principal = 0;
  double submit_rate_per_principal = 0;
  int32_t submit_burst_per_principal = 0;
  int32_t max_watchers_per_job = 256;
  int32_t max_streams_per_client = 1024;
  int64_t max_watch_backlog_bytes = 1 << 20;
  int32_t max_message_bytes = 0;
  int64_t max_input_bytes = 16 << 20;
  std::string input_root;
  absl::Duration lora_affinity_wait = absl::Seconds(10);
  std::string probe;
  absl::Duration probe_timeout = absl::Seconds(2);
  bool version = false;
};

// The flag list is the help text: one definition per flag.
void DefineFlags(zfarm::flags::FlagSet* fs, SchedulerFlags* f) {
  fs->String("listen", &f->listen, "gRPC address HOST:PORT (port 0 = any free port)", "HOST:PORT");
  fs->String(
      "state-dir", &f->state_dir,
      "Directory of the job journal (journal.db); must be on a local disk (required unless "
      "--journal names PostgreSQL; with it, only the input pictures and thumbnails live here, "
      "and a private temporary folder is used when empty)",
      "DIR");
  fs->String(
      "journal", &f->journal,
      "Where the journal lives: empty = SQLite in --state-dir (one scheduler); "
      "postgres://USER@HOST:PORT/DB?sslmode=verify-full&... = a PostgreSQL database shared by "
      "active/standby schedulers (libpq URL parameters; no password in it)",
      "URL");
  fs->String("journal-password-file", &f->journal_password_file,
             "File holding the PostgreSQL password of --journal (surrounding whitespace ignored); "
             "empty = libpq's PGPASSFILE / ~/.pgpass",
             "FILE");
  fs->String("name", &f->name,
             "This scheduler's name in the leader lease and in a standby's answers (PostgreSQL "
             "journal); empty = HOSTNAME:PORT of --listen",
             "NAME");
  fs->Duration(
      "leader-lease", &f->leader_lease,
      "PostgreSQL journal: how long the active scheduler's lease lasts without a renewal; a "
      "standby takes over within about --leader-lease + --leader-renew of the active one's "
      "death");
  fs->Duration(
      "leader-renew", &f->leader_renew,
      "PostgreSQL journal: how often the active scheduler renews its lease, and how often a "
      "standby tries to take it");
  fs->String("output-root", &f->output_root,
             "Shared output root where workers write PNGs; read-only here, used by GetResult and "
             "commit checks (required)",
             "DIR");
  fs->String("metrics-listen", &f->metrics_listen,
             "HOST:PORT for Prometheus /metrics (empty = no metrics endpoint); HTTPS with "
             "--tls-cert unless --metrics-plaintext",
             "HOST:PORT");
  fs->Bool("metrics-plaintext", &f->metrics_plaintext,
           "Serve --metrics-listen over plain HTTP even with --tls-cert (scrapers without TLS)");
  fs->String("http-listen", &f->http_listen,
             "HOST:PORT for the REST/JSON gateway (/v1/jobs...); HTTPS (mutual TLS with "
             "--tls-client-ca) with --tls-cert; empty = no gateway",
             "HOST:PORT");
  fs->Duration("http-images-timeout", &f->http_images_timeout,
               "How long POST /v1/images/generations waits for its images before 504 (the jobs go "
               "on; a retry with the same Idempotency-Key waits for them again)");
  fs->Int("http-max-connections", &f->http_max_connections,
          "Open connections the REST gateway accepts; beyond it new ones are closed (plain "
          "HTTP: after a 503 answer)");
  fs->Int("http-max-connections-per-ip", &f->http_max_connections_per_ip,
          "Open REST gateway connections per client address; beyond it as --http-max-connections");
  fs->Duration("http-request-timeout", &f->http_request_timeout,
               "Time a REST client has for a whole request (TLS handshake, headers and body), from "
               "its first byte; slower connections are closed");
  fs->Int("max-queued-jobs", &f->max_queued_jobs,
          "QUEUED jobs beyond which submits fail with RESOURCE_EXHAUSTED");
  fs->Duration("retry-after", &f->retry_after,
               "Retry delay sent with RESOURCE_EXHAUSTED (typed zfarm-error-details-bin and "
               "retry-after-ms trailers, the message; REST: Retry-After)");
  fs->Int("max-attempts", &f->max_attempts,
          "Attempts (leases that reached RUNNING) before a job is FAILED");
  fs->Duration(
      "retention", &f->retention,
      "Finished jobs are pruned from the journal after this long (PNGs are never deleted)");
  fs->Int("max-finished-jobs", &f->max_finished_jobs,
          "Finished jobs kept for status/list (about 4.5 KB of memory each); beyond it the "
          "oldest-ended are pruned before --retention (request ids stay idempotent); 0 = no cap");
  fs->Int("max-tombstones", &f->max_tombstones,
          "Idempotency tombstones of pruned jobs kept (about 1 KB each); beyond it the oldest "
          "go before --tombstone-ttl; 0 = no cap");
  fs->Duration("tombstone-ttl", &f->tombstone_ttl,
               "Minimum time a request_id stays deduplicated (at least 24h recommended)");
  fs->Duration("heartbeat-interval", &f->heartbeat_interval, "Heartbeat interval asked of workers");
  fs->Duration("lease-timeout", &f->lease_timeout,
               "A worker silent this long is lost and its leases expire");
  fs->Double("aging-per-minute", &f->aging_per_minute,
             "Priority points a queued job gains per minute of waiting (anti-starvation)");
  fs->Int("min-size-px", &f->min_size_px, "Smallest accepted width/height");
  fs->Int("max-size-px", &f->max_size_px, "Largest accepted width/height");
  fs->Int("max-prompt-bytes", &f->max_prompt_bytes,
          "Largest prompt / negative prompt in UTF-8 bytes");
  fs->Int("max-steps", &f->max_steps, "Largest accepted steps");
  fs->Int("max-batch-jobs", &f->max_batch_jobs, "Largest SubmitJobs batch");
  fs->Int("max-labels", &f->max_labels, "Most labels per job");
  fs->String("webhook-allow", &f->webhook_allow,
             "Comma-separated webhook allow-list: host:port entries (exact) or URL prefixes "
             "(http://host:port/path); a job's webhook_url must match one. Empty = webhooks off",
             "LIST");
  fs->String("webhook-secret-file", &f->webhook_secret_file,
             "File holding the HMAC-SHA256 key for X-Zfarm-Signature (required with "
             "--webhook-allow; surrounding whitespace is ignored)",
             "FILE");
  fs->String("tls-cert", &f->tls_cert,
             "PEM certificate chain: serve TLS on --listen, --http-listen (HTTPS) and "
             "--metrics-listen (with --tls-key)",
             "FILE");
  fs->String("tls-key", &f->tls_key, "PEM private key of --tls-cert", "FILE");
  fs->String("tls-client-ca", &f->tls_client_ca,
             "PEM CA bundle: require client certificates signed by it (mutual TLS) on --listen, "
             "--http-listen and --metrics-listen; "
             "with --probe: the CA of the probed server",
             "FILE");
  fs->String("token-file", &f->token_file,
             "Bearer tokens, one per line: '<token> <principal> <role>' (role submitter|admin|"
             "worker); reloaded when the file changes. Empty = no authentication (everyone admin)",
             "FILE");
  fs->Int("max-queued-per-principal", &f->max_queued_per_principal,
          "QUEUED jobs per principal beyond which its submits get RESOURCE_EXHAUSTED (0 = off)");
  fs->Double("submit-rate-per-principal", &f->submit_rate_per_principal,
             "Submit calls per second per principal (token bucket; 0 = off)");
  fs->Int("submit-burst-per-principal", &f->submit_burst_per_principal,
          "Burst of --submit-rate-per-principal (0 = max(1, rate))");
  fs->Int("max-watchers-per-job", &f->max_watchers_per_job,
          "Concurrent watch streams per job, batch or label selector");
  fs->Int("max-streams-per-client", &f->max_streams_per_client,
          "Concurrent watch/result streams per client (principal, or IP when anonymous); 0 = off");
  fs->Int("max-watch-backlog-bytes", &f->max_watch_backlog_bytes,
          "Unsent events (bytes) a watch stream may hold for a client that reads too slowly; "
          "beyond, the stream ends with RESOURCE_EXHAUSTED (0 = unbounded)");
  fs->Int("max-message-bytes", &f->max_message_bytes,
          "Largest gRPC request message accepted; 0 = 3 x --max-input-bytes + 1 MiB (a submit "
          "with an init image, a mask and a control picture)");
  fs->Int("max-input-bytes", &f->max_input_bytes,
          "Largest init_image / mask_image / control.image in bytes (in the request or read "
          "from --input-root)");
  fs->String("input-root", &f->input_root,
             "Read-only folder that ImageInput.path is relative to (confined like --output-root); "
             "empty = path inputs are refused",
             "DIR");
  fs->Duration("lora-affinity-wait", &f->lora_affinity_wait,
               "How long a job may wait for a worker that already has its LoRA set applied before "
               "any capable worker takes it");
  fs->String("probe", &f->probe,
             "Do not serve: check grpc.health.v1 at this HOST:PORT, exit 0 if SERVING, 1 otherwise",
             "HOST:PORT");
  fs->Duration("probe-timeout", &f->probe_timeout, "Timeout of --probe");
  fs->Bool("version", &f->version, "Print the version and exit");
}

// Parses argv into *f. The exit status when the process stops here: 0 after
// --help, 2 for an unknown flag, a bad value or a positional argument.
std::optional<int> ParseFlags(int argc, char** argv, SchedulerFlags* f) {
  zfarm::flags::FlagSet fs(
      "zfarm-scheduler --listen 127.0.0.1:50051 --state-dir DIR --output-root DIR "
      "[--metrics-listen 127.0.0.1:9464] [flags]");
  fs.set_description(
      "The zfarm job scheduler (JobService, WorkerService, AdminService,\n"
      "grpc.health.v1, reflection).");
  fs.set_footer(
      "SIGTERM/SIGINT: stop accepting, flush the journal, exit 0. Exit status 1: the server "
      "could not\nstart; 2: bad flags; 3: leadership lost (PostgreSQL journal).\n"
      "Flags may be spelled with dashes or underscores (--state-dir = --state_dir).");
  fs.set_show_defaults(true);
  fs.set_underscores_as_dashes(true);
  DefineFlags(&fs, f);
  bool help = false;
  absl::StatusOr<std::vector<std::string>> args =
      fs.Parse(std::vector<std::string>(argv + std::min(argc, 1), argv + argc), &help);
  if (help) {
    std::cout << fs.Help();
    return 0;
  }
  std::string why;
  if (!args.ok()) {
    why = std::string(args.status().message());
  } else if (!args->empty()) {
    why = absl::StrCat("unexpected argument '", (*args)[0], "'");
  } else {
    return std::nullopt;
  }
  std::cerr << "zfarm-scheduler: " << why << " (see --help)\n";
  return 2;
}

zfarm::security::TlsFlags TlsFromFlags(const SchedulerFlags& f) {
  zfarm::security::TlsFlags tls;
  tls.cert = f.tls_cert;
  tls.key = f.tls_key;
  tls.ca = f.tls_client_ca;
  return tls;
}

// --probe: a client of another scheduler's health service (--tls-client-ca names
// its CA here). The exit status.
int Probe(const SchedulerFlags& f, const zfarm::security::TlsFlags& tls) {
  auto creds = zfarm::security::ClientCredentials(tls);
  if (!creds.ok()) {
    std::cerr << "zfarm-scheduler: " << creds.status().message() << "\n";
    return 2;
  }
  absl::Status s = zfarm::scheduler::ProbeHealth(f.probe, f.probe_timeout, *creds);
  std::cout << (s.ok() ? "SERVING" : std::string(s.ToString())) << "\n";
  return s.ok() ? 0 : 1;
}

// Scheduler::Options from the flags, checked.
std::optional<Failure> SchedulerOptionsFromFlags(const SchedulerFlags& f,
                                                 zfarm::scheduler::Scheduler::Options* so) {
  so->state_dir = f.state_dir;
  so->output_root = f.output_root;
  so->max_queued_jobs = f.max_queued_jobs;
  so->retry_after = f.retry_after;
  so->max_attempts = f.max_attempts;
  so->retention = f.retention;
  so->tombstone_ttl = f.tombstone_ttl;
  so->max_finished_jobs = f.max_finished_jobs;
  so->max_tombstones = f.max_tombstones;
  so->heartbeat_interval = f.heartbeat_interval;
  so->lease_timeout = f.lease_timeout;
  so->aging_per_minute = f.aging_per_minute;
  so->max_queued_per_principal = f.max_queued_per_principal;
  so->submit_rate_per_principal = f.submit_rate_per_principal;
  so->submit_burst_per_principal = f.submit_burst_per_principal;
  so->max_watchers_per_job = f.max_watchers_per_job;
  so->limits.min_size_px = f.min_size_px;
  so->limits.max_size_px = f.max_size_px;
  so->limits.max_prompt_bytes = f.max_prompt_bytes;
  so->limits.max_steps = f.max_steps;
  so->limits.max_batch_jobs = f.max_batch_jobs;
  so->limits.max_labels = f.max_labels;
  so->limits.max_input_bytes = f.max_input_bytes;
  so->lora_affinity_wait = f.lora_affinity_wait;
  if (so->limits.max_input_bytes < 1 || so->limits.max_input_bytes > (int64_t{1} << 30)) {
    return BadFlag(absl::StrCat("--max-input-bytes: ", so->limits.max_input_bytes,
                                " is outside [1, 1073741824]"));
  }
  return std::nullopt;
}

// ServerOptions from the flags: credentials, tokens, limits, the scheduler's options.
std::optional<Failure> ServerOptionsFromFlags(const SchedulerFlags& f,
                                              const zfarm::security::TlsFlags& tls,
                                              ServerOptions* o) {
  o->listen = f.listen;
  auto creds = zfarm::security::ServerCredentials(tls);
  if (!creds.ok()) return BadFlag(std::string(creds.status().message()));
  o->security.credentials = [c = *creds] { return c; };
  if (!f.token_file.empty()) {
    auto store = zfarm::security::TokenStore::Open(f.token_file);
    if (!store.ok()) return BadFlag(std::string(store.status().message()));
    o->security.authorizer = std::make_shared<zfarm::scheduler::TokenAuthorizer>(
        std::shared_ptr<zfarm::security::TokenStore>(*std::move(store)));
  }
  o->max_message_bytes = f.max_message_bytes;
  o->max_streams_per_client = f.max_streams_per_client;
  o->max_watch_backlog_bytes = f.max_watch_backlog_bytes;
  o->input_root = f.input_root;
  if (std::optional<Failure> failed = SchedulerOptionsFromFlags(f, &o->scheduler)) return failed;
  o->registry = std::make_shared<prometheus::Registry>();
  return std::nullopt;
}

// Webhooks (--webhook-allow; null when off): validated at submit against the
// allow-list, sent after the final transition is durable (Scheduler::Options::
// on_final), never under its lock. Hooks them into `so`.
std::optional<Failure> StartWebhooks(const SchedulerFlags& f,
                                     zfarm::scheduler::Scheduler::Options* so,
                                     std::unique_ptr<http::WebhookSender>* out) {
  if (f.webhook_allow.empty()) return std::nullopt;
  http::WebhookSender::Options wo;
  for (absl::string_view a : absl::StrSplit(f.webhook_allow, ',', absl::SkipWhitespace())) {
    wo.allow.emplace_back(absl::StripAsciiWhitespace(a));
  }
  const std::string secret_file = f.webhook_secret_file;
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
std::optional<Failure> StartMetrics(const SchedulerFlags& f, const zfarm::security::TlsFlags& tls,
                                    std::shared_ptr<prometheus::Registry> registry,
                                    std::unique_ptr<zfarm::http::HttpServer>* out) {
  if (f.metrics_listen.empty()) return std::nullopt;
  auto m = zfarm::http::StartMetricsServer(f.metrics_listen,
                                           f.metrics_plaintext ? zfarm::security::TlsFlags() : tls,
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
std::optional<Failure> StartGateway(const SchedulerFlags& f, const zfarm::security::TlsFlags& tls,
                                    const zfarm::scheduler::Limits& limits,
                                    const std::string& state_dir, grpc::Server* server,
                                    int http_port, std::unique_ptr<http::RestGateway>* out) {
  if (f.http_listen.empty()) return std::nullopt;
  http::RestGateway::Options go;
  go.http.listen = f.http_listen;
  // After a takeover: the port the standby's gateway had (--http-listen may say 0).
  if (http_port > 0) {
    go.http.listen = absl::StrCat(go.http.listen.substr(0, go.http.listen.rfind(':')), ":",
                                  http_port);
  }
  go.http.tls = tls;
  go.http.max_connections = f.http_max_connections;
  go.http.max_connections_per_ip = f.http_max_connections_per_ip;
  go.http.request_timeout = f.http_request_timeout;
  go.images_timeout = f.http_images_timeout;
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
std::optional<Failure> RunStandby(const SchedulerFlags& f, const zfarm::security::TlsFlags& tls,
                                  const ServerOptions& o, const sigset_t& stop_signals, HaState* ha,
                                  int* port, bool* stopped) {
  namespace zs = ::zfarm::scheduler;
  zs::pg::ConnectOptions connect;
  connect.url = f.journal;
  connect.password_file = f.journal_password_file;
  const absl::Duration lease = f.leader_lease;
  const absl::Duration renew = f.leader_renew;
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
  std::string name = f.name;
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
  if (std::optional<Failure> failed = StartGateway(f, tls, o.scheduler.limits, ha->state_dir,
                                                   (*standby)->grpc_server(), 0, &gateway)) {
    return failed;
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
void RenewLoop(zfarm::scheduler::LeaderLease* lease, int64_t epoch, absl::Duration every,
               absl::Notification* stop) {
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
std::optional<Failure> RunStandby(const SchedulerFlags&, const zfarm::security::TlsFlags&,
                                  const ServerOptions&, const sigset_t&, HaState*, int*, bool*) {
  return BadFlag(
      "--journal: this zfarm-scheduler was built without libpq (Debian libpq-dev), so it has no "
      "PostgreSQL journal");
}
void RenewLoop(HaState::NoLease*, int64_t, absl::Duration, absl::Notification*) {}
void HandOverJournal(int, HaState*, ServerOptions*) {}
#endif  // ZFARM_HAVE_LIBPQ

}  // namespace

int main(int argc, char** argv) {
  SchedulerFlags f;
  if (std::optional<int> rc = ParseFlags(argc, argv, &f)) return *rc;
  if (f.version) {
    std::cout << VersionString() << "\n";
    return 0;
  }
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);

  const zfarm::security::TlsFlags tls = TlsFromFlags(f);
  if (!f.probe.empty()) return Probe(f, tls);
  const bool postgres = !f.journal.empty();
  if ((!postgres && f.state_dir.empty()) || f.output_root.empty()) {
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
  if (std::optional<Failure> failed = ServerOptionsFromFlags(f, tls, &o)) return Exit(*failed);
  HaState ha;
  ha.state_dir = f.state_dir;
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
  if (std::optional<Failure> failed = StartWebhooks(f, &o.scheduler, &webhooks)) {
    return Exit(*failed);
  }
  std::unique_ptr<zfarm::http::HttpServer> metrics;
  if (std::optional<Failure> failed = StartMetrics(f, tls, o.registry, &metrics)) {
    return Exit(*failed);
  }

  // 1 while this scheduler serves (SQLite: always), 0 while it is a standby.
  prometheus::Gauge& active = prometheus::BuildGauge()
                                  .Name("zfarm_scheduler_active")
                                  .Help("1 while this scheduler is the active one, 0 as a standby")
                                  .Register(*o.registry)
                                  .Add({});
  if (postgres) {
    int port = 0;
    bool stopped = false;
    if (std::optional<Failure> failed = RunStandby(f, tls, o, stop_signals, &ha, &port, &stopped)) {
      LOG(ERROR) << "event=startup_failed error=\"" << failed->message << "\"";
      return Exit(*failed);
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
  if (ha.lease) {
    renew = std::thread(RenewLoop, ha.lease.get(), ha.epoch, f.leader_renew, &stop_renew);
  }
  std::cout << "zfarm-scheduler listening on " << (*server)->address() << std::endl;
  LOG(INFO) << "event=security tls="
            << (tls.server_enabled() ? (tls.ca.empty() ? "server" : "mutual") : "off")
            << " tokens=" << (f.token_file.empty() ? "off" : "on");

  std::unique_ptr<http::RestGateway> gateway;
  if (std::optional<Failure> failed = StartGateway(
          f, tls, limits, ha.state_dir, (*server)->grpc_server(), ha.http_port, &gateway)) {
    (*server)->Shutdown();
    return Exit(*failed);
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
