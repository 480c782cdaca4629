#ifndef ZFARM_TESTS_TESTING_RAW_HTTP_H_
#define ZFARM_TESTS_TESTING_RAW_HTTP_H_

// A raw HTTP/1.1 client over loopback sockets for tests that need control of
// every byte (slow clients, half-sent requests, chunked streams, source
// addresses), independent of the server's own code.
//
//   HttpResponse r = Http(port, "GET", "/v1/jobs/x");        // Connection: close
//   RawConn c(port);                                          // keep it open
//   c.Send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
//   HttpResponse one = c.ReadResponse();                      // Content-Length or chunked
//   bool eof = c.WaitForEof();                                // the server closed it
//
// Reads give up after the connection's timeout (default 30 s) so a broken
// server fails a test instead of hanging it. Not thread-safe.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace zfarm::testing {

struct HttpResponse {
  int status = 0;       // 0: no (complete) response
  std::string headers;  // status line and headers, without the blank line
  std::string body;     // de-chunked
  // Value of a header (first match, case-insensitive), "" when absent.
  std::string Header(const std::string& name) const {
    const std::string want = absl::AsciiStrToLower(name) + ":";
    size_t pos = 0;
    while (pos < headers.size()) {
      size_t end = headers.find("\r\n", pos);
      if (end == std::string::npos) end = headers.size();
      std::string line = headers.substr(pos, end - pos);
      if (absl::StartsWith(absl::AsciiStrToLower(line), want)) {
        return std::string(absl::StripAsciiWhitespace(line.substr(want.size())));
      }
      pos = end + 2;
    }
    return "";
  }
};

class RawConn {
 public:
  // Connects to 127.0.0.1:port, from `source_ip` when set (any 127.x.y.z).
  explicit RawConn(int port, const std::string& source_ip = "",
                   absl::Duration timeout = absl::Seconds(30))
      : timeout_(timeout) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    if (!source_ip.empty()) {
      sockaddr_in src{};
      src.sin_family = AF_INET;
      inet_pton(AF_INET, source_ip.c_str(), &src.sin_addr);
      if (bind(fd_, reinterpret_cast<sockaddr*>(&src), sizeof(src)) != 0) Reset();
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd_ >= 0 && connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) Reset();
  }
  ~RawConn() { Reset(); }
  RawConn(const RawConn&) = delete;
  RawConn& operator=(const RawConn&) = delete;

  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }

  bool Send(const std::string& data) {
    size_t sent = 0;
    while (fd_ >= 0 && sent < data.size()) {
      ssize_t n = send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return fd_ >= 0;
  }

  // Appends what arrives to buffer_ within the timeout; false on EOF, error
  // or timeout (eof() tells which).
  bool ReadMore() {
    if (fd_ < 0) return false;
    pollfd p{fd_, POLLIN, 0};
    const int ms = static_cast<int>(absl::ToInt64Milliseconds(timeout_));
    if (poll(&p, 1, ms) <= 0) return false;
    char buf[16384];
    ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    if (n <= 0) {
      eof_ = n == 0 || errno == ECONNRESET;
      return false;
    }
    buffer_.append(buf, static_cast<size_t>(n));
    return true;
  }
  bool eof() const { return eof_; }

  // Waits until `text` has arrived (kept in buffer()).
  bool ReadUntil(const std::string& text) {
    while (buffer_.find(text) == std::string::npos) {
      if (!ReadMore()) return false;
    }
    return true;
  }
  const std::string& buffer() const { return buffer_; }

  // True when the server closes the connection (EOF or reset) within the
  // timeout; bytes it sends first are kept in buffer().
  bool WaitForEof() {
    while (ReadMore()) {
    }
    return eof_;
  }

  // One response: Content-Length, chunked, or (neither) up to EOF; none for
  // 1xx, 204, 304 and with no_body (the answer to HEAD).
  HttpResponse ReadResponse(bool no_body = false) {
    HttpResponse r;
    if (!ReadUntil("\r\n\r\n")) return r;
    const size_t end = buffer_.find("\r\n\r\n");
    std::string head = buffer_.substr(0, end);
    buffer_.erase(0, end + 4);
    r.headers = head;
    int status = 0;
    if (head.size() < 12 || !absl::SimpleAtoi(head.substr(9, 3), &status)) return r;
    if (no_body || status / 100 == 1 || status == 204 || status == 304) {
      r.status = status;
      return r;
    }
    int64_t length = -1;
    std::string cl = r.Header("Content-Length");
    if (!cl.empty() && !absl::SimpleAtoi(cl, &length)) return r;
    if (absl::EqualsIgnoreCase(r.Header("Transfer-Encoding"), "chunked")) {
      for (;;) {
        if (!ReadUntil("\r\n")) return r;
        const size_t le = buffer_.find("\r\n");
        int64_t n = 0;
        if (!absl::SimpleHexAtoi(buffer_.substr(0, le), &n)) return r;
        while (buffer_.size() < le + 2 + static_cast<size_t>(n) + 2) {
          if (!ReadMore()) return r;
        }
        r.body += buffer_.substr(le + 2, static_cast<size_t>(n));
        buffer_.erase(0, le + 2 + static_cast<size_t>(n) + 2);
        if (n == 0) break;
      }
    } else if (length >= 0) {
      while (buffer_.size() < static_cast<size_t>(length)) {
        if (!ReadMore()) return r;
      }
      r.body = buffer_.substr(0, static_cast<size_t>(length));
      buffer_.erase(0, static_cast<size_t>(length));
    } else {
      WaitForEof();
      r.body = buffer_;
      buffer_.clear();
    }
    r.status = status;
    return r;
  }

 private:
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  int fd_ = -1;
  absl::Duration timeout_;
  std::string buffer_;
  bool eof_ = false;
};

// One request with Connection: close (and Content-Length), read until EOF.
inline HttpResponse Http(int port, const std::string& method, const std::string& path,
                         const std::string& body = "", const std::string& extra_headers = "") {
  RawConn c(port);
  std::string req = absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: localhost\r\n",
                                 "Connection: close\r\nContent-Length: ", body.size(), "\r\n",
                                 extra_headers);
  if (!body.empty()) req += "Content-Type: application/json\r\n";
  req += "\r\n" + body;
  c.Send(req);  // the server may answer (413, 431) before taking all of it
  return c.ReadResponse(method == "HEAD");
}

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_RAW_HTTP_H_
