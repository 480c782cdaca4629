#ifndef ZFARM_TESTS_SCHEDULER_HTTP_TEST_UTIL_H_
#define ZFARM_TESTS_SCHEDULER_HTTP_TEST_UTIL_H_

// Loopback HTTP helpers for scheduler tests (plain sockets, HTTP/1.1,
// Connection: close):
//   - HttpReceiver: a webhook target on 127.0.0.1:<free port> that records every
//     request and answers with a fixed status;
//   - HttpCall(): one request to 127.0.0.1:<port> (raw_http.h's Http()),
//     returns status, headers and body.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tests/testing/raw_http.h"

namespace zfarm::testing {

struct HttpMessage {
  int status = 0;                              // responses
  std::string request_line;                    // requests ("POST /path HTTP/1.1")
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

// Splits a raw HTTP/1.1 message (head + Content-Length body).
inline HttpMessage ParseHttp(const std::string& raw) {
  HttpMessage m;
  size_t head_end = raw.find("\r\n\r\n");
  std::string head = raw.substr(0, head_end);
  m.body = head_end == std::string::npos ? "" : raw.substr(head_end + 4);
  std::vector<std::string> lines = absl::StrSplit(head, "\r\n");
  if (!lines.empty()) {
    m.request_line = lines[0];
    if (lines[0].rfind("HTTP/1.", 0) == 0 && lines[0].size() >= 12) {
      absl::SimpleAtoi(lines[0].substr(9, 3), &m.status);
    }
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    size_t c = lines[i].find(':');
    if (c == std::string::npos) continue;
    m.headers[absl::AsciiStrToLower(lines[i].substr(0, c))] =
        std::string(absl::StripAsciiWhitespace(lines[i].substr(c + 1)));
  }
  return m;
}

// Reads one full message (head, then Content-Length bytes or until EOF).
inline std::string ReadHttp(int fd) {
  std::string raw;
  char buf[8192];
  size_t want = std::string::npos;
  while (true) {
    if (want == std::string::npos) {
      size_t he = raw.find("\r\n\r\n");
      if (he != std::string::npos) {
        HttpMessage m = ParseHttp(raw.substr(0, he + 4));
        size_t len = 0;
        auto it = m.headers.find("content-length");
        if (it != m.headers.end() && absl::SimpleAtoi(it->second, &len)) want = he + 4 + len;
      }
    }
    if (want != std::string::npos && raw.size() >= want) break;
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    raw.append(buf, static_cast<size_t>(n));
  }
  return raw;
}

class HttpReceiver {
 public:
  explicit HttpReceiver(int status = 200) : status_(status) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
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
  ~HttpReceiver() {
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  int port() const { return port_; }
  std::vector<HttpMessage> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  // Waits until `n` requests arrived; false on timeout.
  bool WaitFor(size_t n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return requests_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }

 private:
  void Loop() {
    while (true) {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      HttpMessage m = ParseHttp(ReadHttp(c));
      std::string resp = absl::StrCat("HTTP/1.1 ", status_,
                                      " X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
      send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
      close(c);
      absl::MutexLock lock(&mu_);
      requests_.push_back(std::move(m));
    }
  }
  const int status_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<HttpMessage> requests_ ABSL_GUARDED_BY(mu_);
};

// One request to 127.0.0.1:`port` (tests/testing/raw_http.h); status 0 when
// the connection failed or no complete answer came.
inline HttpMessage HttpCall(int port, const std::string& method, const std::string& path,
                            const std::string& body = "",
                            const std::map<std::string, std::string>& headers = {}) {
  std::string extra;
  for (const auto& [k, v] : headers) absl::StrAppend(&extra, k, ": ", v, "\r\n");
  HttpResponse r = Http(port, method, path, body, extra);
  HttpMessage out = ParseHttp(r.headers + "\r\n\r\n");
  out.status = r.status;
  out.body = std::move(r.body);
  return out;
}

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_SCHEDULER_HTTP_TEST_UTIL_H_
