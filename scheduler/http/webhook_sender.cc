#include "scheduler/http/webhook_sender.h"

#include <netdb.h>
#include <openssl/hmac.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "glog/logging.h"
#include "google/protobuf/util/json_util.h"
#include "proto/base/monotonic_wait.h"

namespace zfarm::scheduler::http {

using ::zfarm::base::AwaitMonotonic;

absl::StatusOr<WebhookUrl> ParseWebhookUrl(absl::string_view url) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "http://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("webhook_url: '", url, "' must start with http:// (intranet hosts)"));
  }
  WebhookUrl out;
  size_t slash = rest.find('/');
  absl::string_view hostport = rest.substr(0, slash);
  out.path = slash == absl::string_view::npos ? "/" : std::string(rest.substr(slash));
  size_t colon = hostport.rfind(':');
  if (colon == absl::string_view::npos) {
    out.host = std::string(hostport);
  } else {
    out.host = std::string(hostport.substr(0, colon));
    if (!absl::SimpleAtoi(hostport.substr(colon + 1), &out.port) || out.port <= 0 ||
        out.port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("webhook_url: bad port in '", url, "'"));
    }
  }
  if (out.host.empty() || absl::StrContains(out.host, "@")) {
    return absl::InvalidArgumentError(absl::StrCat("webhook_url: bad host in '", url, "'"));
  }
  for (char c : out.path) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError("webhook_url: path has spaces or control characters");
    }
  }
  return out;
}

absl::Status ValidateWebhookUrl(absl::string_view url, const std::vector<std::string>& allow) {
  if (url.empty()) return absl::OkStatus();
  absl::StatusOr<WebhookUrl> u = ParseWebhookUrl(url);
  if (!u.ok()) return u.status();
  const std::string key = absl::StrCat(absl::AsciiStrToLower(u->host), ":", u->port);
  for (const std::string& a : allow) {
    if (absl::StartsWithIgnoreCase(a, "http://")) {
      // A URL prefix: same host:port, and the path starts with the prefix's path.
      absl::StatusOr<WebhookUrl> p = ParseWebhookUrl(a);
      if (p.ok() && absl::StrCat(absl::AsciiStrToLower(p->host), ":", p->port) == key &&
          absl::StartsWith(u->path, p->path)) {
        return absl::OkStatus();
      }
      continue;
    }
    std::string entry = absl::AsciiStrToLower(a);
    if (entry.find(':') == std::string::npos) entry += ":80";
    if (entry == key) return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("webhook_url: host '", key, "' is not on the scheduler's --webhook-allow list"));
}

std::string HmacSha256Hex(absl::string_view secret, absl::string_view body) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(body.data()), body.size(), digest, &n);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 15]);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<WebhookSender>> WebhookSender::Create(Options options) {
  if (!options.allow.empty() && options.secret.empty()) {
    return absl::InvalidArgumentError(
        "--webhook-secret-file: required when --webhook-allow is set");
  }
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError("webhook max_attempts must be >= 1");
  }
  std::unique_ptr<WebhookSender> s(new WebhookSender(std::move(options)));
  s->thread_ = std::thread([p = s.get()] { p->Run(); });
  return s;
}

WebhookSender::~WebhookSender() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    if (!queue_.empty()) {
      LOG(WARNING) << "event=webhook_dropped count=" << queue_.size();
    }
  }
  if (thread_.joinable()) thread_.join();
}

void WebhookSender::Enqueue(const zfarm::v1::Job& job) {
  const std::string& url = job.spec().webhook_url();
  if (url.empty()) return;
  if (absl::Status s = Validate(url); !s.ok()) {
    LOG(WARNING) << "event=webhook_refused job=" << job.job_id() << " why=\"" << s.message()
                 << "\"";
    return;
  }
  Hook hook;
  hook.url = *ParseWebhookUrl(url);
  hook.job_id = job.job_id();
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(job, &hook.body, opts);
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(hook));
}

void WebhookSender::Flush() {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return (queue_.empty() && in_flight_ == 0) || stop_;
  };
  mu_.Await(absl::Condition(&idle));
}

int64_t WebhookSender::delivered() const {
  absl::MutexLock lock(&mu_);
  return delivered_;
}

int64_t WebhookSender::given_up() const {
  absl::MutexLock lock(&mu_);
  return given_up_;
}

void WebhookSender::Run() {
  while (true) {
    Hook hook;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || stop_; };
      mu_.Await(absl::Condition(&ready));
      if (stop_) return;
      hook = std::move(queue_.front());
      queue_.pop_front();
      ++in_flight_;
    }
    absl::Duration backoff = options_.initial_backoff;
    bool ok = false;
    for (int attempt = 1; attempt <= options_.max_attempts; ++attempt) {
      absl::StatusOr<int> status = Post(hook);
      if (status.ok() && *status >= 200 && *status < 300) {
        ok = true;
        LOG(INFO) << "event=webhook_delivered job=" << hook.job_id << " host=" << hook.url.host
                  << ":" << hook.url.port << " attempt=" << attempt;
        break;
      }
      const bool retryable = !status.ok() || *status >= 500 || *status == 408 || *status == 429;
      LOG(WARNING) << "event=webhook_attempt_failed job=" << hook.job_id << " attempt=" << attempt
                   << " result="
                   << (status.ok() ? absl::StrCat("http ", *status)
                                   : std::string(status.status().message()));
      if (!retryable || attempt == options_.max_attempts) break;
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (AwaitMonotonic(&mu_, absl::Condition(&stopping), backoff)) break;
      backoff = std::min(backoff * 2, options_.max_backoff);
    }
    absl::MutexLock lock(&mu_);
    --in_flight_;
    if (ok) {
      ++delivered_;
    } else {
      ++given_up_;
      LOG(WARNING) << "event=webhook_given_up job=" << hook.job_id;
    }
  }
}

absl::StatusOr<int> WebhookSender::Post(const Hook& hook) const {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(hook.url.port);
  if (int rc = getaddrinfo(hook.url.host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(absl::StrCat("resolve ", hook.url.host, ": ", gai_strerror(rc)));
  }
  int fd = -1;
  timeval tv{};
  tv.tv_sec = absl::ToInt64Seconds(options_.request_timeout);
  tv.tv_usec = absl::ToInt64Microseconds(options_.request_timeout) % 1000000;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("connect ", hook.url.host, ":", hook.url.port, " failed"));
  }
  const std::string request =
      absl::StrCat("POST ", hook.url.path, " HTTP/1.1\r\nHost: ", hook.url.host, ":", hook.url.port,
                   "\r\nContent-Type: application/json\r\nContent-Length: ", hook.body.size(),
                   "\r\nX-Zfarm-Job: ", hook.job_id,
                   "\r\nX-Zfarm-Signature: sha256=", HmacSha256Hex(options_.secret, hook.body),
                   "\r\nUser-Agent: zfarm-scheduler\r\nConnection: close\r\n\r\n", hook.body);
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      close(fd);
      return absl::UnavailableError("send failed");
    }
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buf[1024];
  while (response.find("\r\n") == std::string::npos && response.size() < 8192) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    response.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  int status = 0;
  if (response.size() < 12 || !absl::StartsWith(response, "HTTP/1.") ||
      !absl::SimpleAtoi(absl::string_view(response).substr(9, 3), &status)) {
    return absl::UnavailableError("no HTTP status line in the response");
  }
  return status;
}

}  // namespace zfarm::scheduler::http
