#ifndef ZFARM_SCHEDULER_HTTP_WEBHOOK_SENDER_H_
#define ZFARM_SCHEDULER_HTTP_WEBHOOK_SENDER_H_

// File: webhook_sender.h
// Webhooks: when a job reaches a final state, POST it (the Job message in
// protobuf's JSON mapping, proto field names) to its spec's webhook_url, but
// only when that URL's host:port is on the configured allow-list (exact
// match). Nothing else ever leaves the scheduler.
//
// Each POST carries `X-Zfarm-Signature: sha256=<hex HMAC-SHA256 of the body
// with the configured secret>`, `X-Zfarm-Job: <job id>` and
// `Content-Type: application/json`. Network errors, 5xx, 408 and 429 are
// retried with exponential backoff up to max_attempts; other statuses are
// final. Only plain http:// is supported (intranet hosts).
//
//   WebhookSender::Options o;
//   o.allow = {"hooks.intranet:8080"};
//   o.secret = "s3cret";
//   ZFARM_ASSIGN_OR_RETURN(auto sender, WebhookSender::Create(o));
//   // at submit:   ZFARM_RETURN_IF_ERROR(sender->Validate(spec.webhook_url()));
//   // when final:  sender->Enqueue(job);
//
// Thread-safe. Delivery runs on one background thread; Enqueue never blocks.

#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "zfarm/v1/job.pb.h"

namespace zfarm::scheduler::http {

struct WebhookUrl {
  std::string host;
  int port = 80;
  std::string path;  // starts with '/'
};

// Parses "http://host[:port][/path]". INVALID_ARGUMENT naming webhook_url.
absl::StatusOr<WebhookUrl> ParseWebhookUrl(absl::string_view url);

// OK for an empty url; INVALID_ARGUMENT naming webhook_url when it does not
// parse or matches no entry of `allow`. An entry is either "host:port" (exact,
// case-insensitive; "host" alone means port 80) or a URL prefix
// "http://host:port/path" (same host:port and the url's path starts with it).
absl::Status ValidateWebhookUrl(absl::string_view url, const std::vector<std::string>& allow);

// Lower-case hex HMAC-SHA256 of `body` with `secret`.
std::string HmacSha256Hex(absl::string_view secret, absl::string_view body);

class WebhookSender {
 public:
  struct Options {
    std::vector<std::string> allow;  // "host:port" or "http://host:port/prefix"
    std::string secret;              // HMAC key; required when allow is set
    int max_attempts = 5;
    absl::Duration initial_backoff = absl::Milliseconds(500);
    absl::Duration max_backoff = absl::Seconds(30);
    absl::Duration request_timeout = absl::Seconds(10);
  };

  static absl::StatusOr<std::unique_ptr<WebhookSender>> Create(Options options);
  ~WebhookSender();  // Stops; undelivered hooks are dropped (logged).

  absl::Status Validate(absl::string_view url) const {
    return ValidateWebhookUrl(url, options_.allow);
  }

  // Queues the final state of `job` for its spec's webhook_url. A job with no
  // URL, or one off the allow-list (logged, never contacted), is ignored.
  void Enqueue(const zfarm::v1::Job& job);

  // Blocks until every queued hook is delivered or given up (tests).
  void Flush();

  int64_t delivered() const;
  int64_t given_up() const;

 private:
  struct Hook {
    WebhookUrl url;
    std::string job_id;
    std::string body;
  };
  explicit WebhookSender(Options options) : options_(std::move(options)) {}
  void Run();
  // Returns the HTTP status, or an error for network failures.
  absl::StatusOr<int> Post(const Hook& hook) const;

  const Options options_;
  std::thread thread_;
  mutable absl::Mutex mu_;
  std::deque<Hook> queue_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t delivered_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t given_up_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace zfarm::scheduler::http

#endif  // ZFARM_SCHEDULER_HTTP_WEBHOOK_SENDER_H_
