// Webhooks to a loopback HTTP server: signed, retried, allow-listed.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/hmac.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "scheduler/http/webhook_sender.h"
#include "tests/testing/status_matchers.h"

namespace zfarm::scheduler::http {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::StatusIs;

// Accepts connections on 127.0.0.1:<port>, records each request and answers
// with the next status from `statuses` (the last one repeats).
class TestHttpServer {
 public:
  explicit TestHttpServer(std::vector<int> statuses) : statuses_(std::move(statuses)) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    listen(fd_, 16);
    thread_ = std::thread([this] { Loop(); });
  }
  ~TestHttpServer() {
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  int port() const { return port_; }
  std::vector<std::string> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

 private:
  void Loop() {
    while (true) {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string req;
      char buf[4096];
      size_t need = std::string::npos;
      while (true) {
        ssize_t n = recv(c, buf, sizeof(buf), 0);
        if (n <= 0) break;
        req.append(buf, static_cast<size_t>(n));
        size_t end = req.find("\r\n\r\n");
        if (end != std::string::npos && need == std::string::npos) {
          std::string lower = absl::AsciiStrToLower(req.substr(0, end));
          size_t cl = lower.find("content-length: ");
          size_t body_len = 0;
          if (cl != std::string::npos) {
            absl::SimpleAtoi(lower.substr(cl + 16, lower.find("\r\n", cl) - cl - 16), &body_len);
          }
          need = end + 4 + body_len;
        }
        if (need != std::string::npos && req.size() >= need) break;
      }
      int status;
      {
        absl::MutexLock lock(&mu_);
        requests_.push_back(req);
        status = statuses_[std::min(requests_.size(), statuses_.size()) - 1];
      }
      std::string resp =
          absl::StrCat("HTTP/1.1 ", status, " X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
      send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
      close(c);
    }
  }
  int fd_;
  int port_;
  std::vector<int> statuses_;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<std::string> requests_ ABSL_GUARDED_BY(mu_);
};

std::string Header(const std::string& req, const std::string& name) {
  size_t p = req.find("\r\n" + name + ": ");
  if (p == std::string::npos) return "";
  p += name.size() + 4;
  return req.substr(p, req.find("\r\n", p) - p);
}

std::string Body(const std::string& req) { return req.substr(req.find("\r\n\r\n") + 4); }

std::string ReferenceHmac(const std::string& key, const std::string& body) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(body.data()), body.size(), d, &n);
  std::string hex;
  for (unsigned int i = 0; i < n; ++i) absl::StrAppend(&hex, absl::Hex(d[i], absl::kZeroPad2));
  return hex;
}

zfarm::v1::Job FinalJob(const std::string& url) {
  zfarm::v1::Job job;
  job.set_job_id("j-42");
  job.set_state(zfarm::v1::JOB_STATE_SUCCEEDED);
  job.mutable_spec()->set_prompt("a fox");
  job.mutable_spec()->set_webhook_url(url);
  job.mutable_result()->set_path("2026-11-28/j-42.png");
  return job;
}

WebhookSender::Options FastOptions(int allowed_port) {
  WebhookSender::Options o;
  o.allow = {absl::StrCat("127.0.0.1:", allowed_port)};
  o.secret = "s3cret";
  o.max_attempts = 4;
  o.initial_backoff = absl::Milliseconds(5);
  o.request_timeout = absl::Seconds(5);
  return o;
}

TEST(WebhookTest, SignedPostIsReceivedAfterRetries) {
  TestHttpServer server({503, 500, 200});
  ASSERT_OK_AND_ASSIGN(auto sender, WebhookSender::Create(FastOptions(server.port())));
  const std::string url = absl::StrCat("http://127.0.0.1:", server.port(), "/hooks/zfarm");
  ASSERT_OK(sender->Validate(url));
  sender->Enqueue(FinalJob(url));
  sender->Flush();
  EXPECT_EQ(sender->delivered(), 1);
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 3u);  // two failures retried, then delivered
  const std::string& req = reqs.back();
  EXPECT_THAT(req, ::testing::StartsWith("POST /hooks/zfarm HTTP/1.1\r\n"));
  EXPECT_EQ(Header(req, "X-Zfarm-Job"), "j-42");
  const std::string body = Body(req);
  EXPECT_EQ(Header(req, "X-Zfarm-Signature"), "sha256=" + ReferenceHmac("s3cret", body));
  EXPECT_NE(Header(req, "X-Zfarm-Signature"), "sha256=" + ReferenceHmac("other", body));
  auto j = nlohmann::json::parse(body);
  EXPECT_EQ(j["job_id"], "j-42");
  EXPECT_EQ(j["state"], "JOB_STATE_SUCCEEDED");
}

TEST(WebhookTest, GivesUpAfterMaxAttemptsAndOnClientErrors) {
  TestHttpServer always_down({503});
  ASSERT_OK_AND_ASSIGN(auto sender, WebhookSender::Create(FastOptions(always_down.port())));
  sender->Enqueue(FinalJob(absl::StrCat("http://127.0.0.1:", always_down.port(), "/")));
  sender->Flush();
  EXPECT_EQ(sender->given_up(), 1);
  EXPECT_EQ(always_down.requests().size(), 4u);

  TestHttpServer rejects({404});
  ASSERT_OK_AND_ASSIGN(auto s2, WebhookSender::Create(FastOptions(rejects.port())));
  s2->Enqueue(FinalJob(absl::StrCat("http://127.0.0.1:", rejects.port(), "/")));
  s2->Flush();
  EXPECT_EQ(s2->given_up(), 1);
  EXPECT_EQ(rejects.requests().size(), 1u);  // 404 is final
}

TEST(WebhookTest, NothingIsSentOffTheAllowList) {
  TestHttpServer allowed({200});
  TestHttpServer other({200});
  ASSERT_OK_AND_ASSIGN(auto sender, WebhookSender::Create(FastOptions(allowed.port())));
  const std::string off = absl::StrCat("http://127.0.0.1:", other.port(), "/x");
  EXPECT_THAT(sender->Validate(off),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("webhook_url")));
  sender->Enqueue(FinalJob(off));
  sender->Enqueue(FinalJob(absl::StrCat("http://127.0.0.1:", allowed.port(), "/ok")));
  sender->Flush();
  EXPECT_EQ(sender->delivered(), 1);
  EXPECT_EQ(other.requests().size(), 0u);
  EXPECT_EQ(allowed.requests().size(), 1u);
}

TEST(WebhookTest, UrlValidation) {
  std::vector<std::string> allow = {"hooks.intranet:8080", "ci:80"};
  EXPECT_OK(ValidateWebhookUrl("", allow));
  EXPECT_OK(ValidateWebhookUrl("http://hooks.intranet:8080/a/b", allow));
  EXPECT_OK(ValidateWebhookUrl("http://CI/done", allow));  // default port 80
  EXPECT_THAT(ValidateWebhookUrl("https://hooks.intranet:8080/", allow),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("http://")));
  EXPECT_THAT(ValidateWebhookUrl("http://hooks.intranet:8081/", allow),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("allow")));
  EXPECT_THAT(ValidateWebhookUrl("http://evil.com@hooks.intranet:8080/", allow),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
  EXPECT_THAT(ValidateWebhookUrl("http://hooks.intranet:99999/", allow),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("port")));
  WebhookSender::Options no_secret;
  no_secret.allow = {"a:1"};
  EXPECT_THAT(WebhookSender::Create(no_secret),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("secret")));
}

TEST(WebhookTest, HmacKnownVector) {
  // RFC 4231 test case 2.
  EXPECT_EQ(HmacSha256Hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

}  // namespace
}  // namespace zfarm::scheduler::http
