#include "proto/http/http_server.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "glog/logging.h"

namespace zfarm::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;

namespace {

// "HOST:PORT" or "[V6]:PORT" -> host, port.
absl::Status SplitHostPort(const std::string& flag, const std::string& listen, std::string* host,
                           int* port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), port) ||
      *port < 0 || *port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", listen, "' is not HOST:PORT (port 0..65535)"));
  }
  *host = listen.substr(0, colon);
  if (absl::StartsWith(*host, "[") && absl::EndsWith(*host, "]")) {
    *host = host->substr(1, host->size() - 2);
  }
  if (host->empty()) *host = "0.0.0.0";
  return absl::OkStatus();
}

std::chrono::steady_clock::duration Chrono(absl::Duration d) {
  return absl::ToChronoNanoseconds(d);
}

// A fixed pool of threads running queued closures; TrySubmit refuses beyond
// max_queued waiting ones.
class HandlerPool {
 public:
  HandlerPool(int threads, int max_queued) : max_queued_(static_cast<size_t>(max_queued)) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~HandlerPool() { Stop(); }

  bool TrySubmit(std::function<void()> fn) {
    absl::MutexLock l(&mu_);
    if (stopping_ || queue_.size() >= max_queued_) return false;
    queue_.push_back(std::move(fn));
    return true;
  }
  // Drops queued work, waits for running work.
  void Stop() {
    std::deque<std::function<void()>> dropped;
    {
      absl::MutexLock l(&mu_);
      if (stopping_) return;
      stopping_ = true;
      dropped.swap(queue_);
    }
    dropped.clear();  // outside the lock: may answer 500 through a Responder
    for (auto& t : threads_) t.join();
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> fn;
      {
        absl::MutexLock l(&mu_);
        mu_.Await(absl::Condition(this, &HandlerPool::Ready));
        if (queue_.empty()) return;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }

  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !queue_.empty(); }

  const size_t max_queued_;
  std::vector<std::thread> threads_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

// The plain socket or the TLS stream of one connection, as one Beast stream.
class AnyStream {
 public:
  using executor_type = tcp::socket::executor_type;
  AnyStream(tcp::socket socket, asio::ssl::context* tls) {
    if (tls != nullptr) {
      tls_.emplace(std::move(socket), *tls);
    } else {
      plain_.emplace(std::move(socket));
    }
  }
  executor_type get_executor() { return socket().get_executor(); }
  tcp::socket& socket() { return tls_ ? tls_->next_layer() : *plain_; }
  asio::ssl::stream<tcp::socket>* tls() { return tls_ ? &*tls_ : nullptr; }

  template <class Buffers, class Handler>
  void async_read_some(const Buffers& b, Handler&& h) {
    if (tls_) {
      tls_->async_read_some(b, std::forward<Handler>(h));
    } else {
      plain_->async_read_some(b, std::forward<Handler>(h));
    }
  }
  template <class Buffers, class Handler>
  void async_write_some(const Buffers& b, Handler&& h) {
    if (tls_) {
      tls_->async_write_some(b, std::forward<Handler>(h));
    } else {
      plain_->async_write_some(b, std::forward<Handler>(h));
    }
  }

 private:
  std::optional<asio::ssl::stream<tcp::socket>> tls_;
  std::optional<tcp::socket> plain_;
};

std::string PeerSubject(SSL* ssl) {
  X509* cert = SSL_get1_peer_certificate(ssl);
  if (cert == nullptr) return "";
  std::string out;
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio != nullptr &&
      X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    if (n > 0) out.assign(data, static_cast<size_t>(n));
  }
  BIO_free(bio);
  X509_free(cert);
  return out;
}

std::string Reason(int status) {
  auto r = bhttp::obsolete_reason(bhttp::int_to_status(static_cast<unsigned>(status)));
  if (r == "<unknown-status>") return status == 499 ? "Client Closed Request" : "Unknown";
  return std::string(r);
}

bool SafeHeader(const std::string& name, const std::string& value) {
  auto bad = [](char c) { return c == '\r' || c == '\n' || c == '\0'; };
  return !name.empty() && std::none_of(name.begin(), name.end(), bad) &&
         name.find(':') == std::string::npos && std::none_of(value.begin(), value.end(), bad);
}

// Status line and headers; Content-Length (unless chunked), Connection and
// Transfer-Encoding are the server's.
std::string Head(int status, const Headers& headers, bool close, const std::string* length,
                 bool chunked) {
  std::string out = absl::StrCat("HTTP/1.1 ", status, " ", Reason(status), "\r\n");
  for (const auto& [name, value] : headers) {
    if (absl::EqualsIgnoreCase(name, "Content-Length") ||
        absl::EqualsIgnoreCase(name, "Connection") ||
        absl::EqualsIgnoreCase(name, "Transfer-Encoding")) {
      continue;
    }
    if (!SafeHeader(name, value)) {
      LOG(WARNING) << "event=http_bad_header dropped header=\"" << absl::CEscape(name) << "\"";
      continue;
    }
    absl::StrAppend(&out, name, ": ", value, "\r\n");
  }
  if (length != nullptr) absl::StrAppend(&out, "Content-Length: ", *length, "\r\n");
  if (chunked) absl::StrAppend(&out, "Transfer-Encoding: chunked\r\n");
  if (close) absl::StrAppend(&out, "Connection: close\r\n");
  absl::StrAppend(&out, "\r\n");
  return out;
}

// Runs a route's handler; an exception it lets out (say, from a JSON parser)
// answers 500 instead of ending the process.
void RunHandler(const Router::Route& route, const Request& req,
                const std::shared_ptr<internal::Exchange>& exchange) {
  try {
    route.handler(req, Responder(exchange));
  } catch (const std::exception& e) {
    LOG(ERROR) << "event=http_handler_exception route=\"" << route.method << " " << route.pattern
               << "\" error=\"" << e.what() << "\"";
    exchange->Finish(Response::Error(500, "INTERNAL", "internal error"));
  } catch (...) {
    LOG(ERROR) << "event=http_handler_exception route=\"" << route.method << " " << route.pattern
               << "\"";
    exchange->Finish(Response::Error(500, "INTERNAL", "internal error"));
  }
}

// A malformed request (not a closed or timed-out connection).
bool IsParseError(ErrorCode ec) {
  return ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category() &&
         ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message;
}

// Closes the server for posting work: set before the io_context goes.
struct Gate {
  absl::Mutex mu;
  bool open ABSL_GUARDED_BY(mu) = true;
};

class Connection;

}  // namespace

struct HttpServer::Impl {
  Options options;
  std::shared_ptr<const Router> router;
  std::shared_ptr<Gate> gate = std::make_shared<Gate>();
  std::unique_ptr<asio::ssl::context> tls;

  mutable absl::Mutex mu;
  int64_t open ABSL_GUARDED_BY(mu) = 0;
  absl::flat_hash_map<std::string, int> per_ip ABSL_GUARDED_BY(mu);
  std::map<Connection*, std::weak_ptr<Connection>> connections ABSL_GUARDED_BY(mu);
  bool stopped ABSL_GUARDED_BY(mu) = false;
  std::atomic<int64_t> refused{0};
  std::atomic<int64_t> timed_out{0};
  std::atomic<int64_t> requests{0};
  std::atomic<bool> stopping{false};

  // Declared last: destroyed first (handlers, then sockets, then threads' loop).
  std::unique_ptr<HandlerPool> pool;
  std::unique_ptr<asio::io_context> io;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::vector<std::thread> threads;

  void Accept();
  void Forget(Connection* c, const std::string& ip);
  bool Drained() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return open == 0; }
};

namespace {

using Impl = HttpServer::Impl;

class ExchangeImpl;

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Impl* server, tcp::socket socket, std::string ip, int port)
      : server_(server),
        opts_(server->options),
        stream_(std::move(socket), server->tls.get()),
        timer_(stream_.get_executor()),
        ip_(std::move(ip)),
        port_(port) {}
  ~Connection() { server_->Forget(this, ip_); }

  AnyStream::executor_type executor() { return stream_.get_executor(); }
  void Start();
  // Runs fn(*this) on this connection's strand unless the server stopped.
  // Called from any thread through a weak pointer.
  // False when it was not posted (server stopped, connection gone).
  static bool Run(const std::shared_ptr<Gate>& gate, const std::weak_ptr<Connection>& weak,
                  std::function<void(Connection&)> fn);
  // On the strand:
  void Respond(ExchangeImpl* x, Response r);
  void StartStream(ExchangeImpl* x, Headers h);
  void StreamWrite(ExchangeImpl* x, std::string bytes);
  void EndStream(ExchangeImpl* x);
  void Close();
  void BeginStop();

 private:
  enum class Phase {
    kHandshake,
    kIdle,
    kReading,
    kHandling,
    kWriting,
    kStreaming,
    kLingering,  // answered with a close: draining what the client still sends
    kClosed
  };

  void Arm(absl::Duration d);
  void OnTimer();
  void WaitForRequest();
  void ReadHeader();
  void OnHeader(ErrorCode ec);
  void OnBody(ErrorCode ec);
  void OnReadError(ErrorCode ec);
  void RefuseBody();  // 413 naming body_limit_
  void Dispatch(const Router::Route* route, Request req);
  void Watch();
  // Queues bytes to write; `credit` stream bytes are returned to the
  // exchange's buffer budget once written.
  void Send(std::string bytes, size_t credit = 0);
  void Flush();
  void AfterAnswer();
  void Linger();
  void SendError(int status, const std::string& code, const std::string& message, bool close);
  bool Closed() const { return phase_ == Phase::kClosed; }

  Impl* const server_;
  const HttpServer::Options& opts_;
  AnyStream stream_;
  asio::steady_timer timer_;
  uint64_t timer_gen_ = 0;
  const std::string ip_;
  const int port_;
  std::string tls_subject_;
  Phase phase_ = Phase::kHandshake;
  bool first_request_ = true;
  bool keep_alive_ = true;
  bool head_ = false;
  bool reading_ = false;  // a read is outstanding
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::empty_body>> header_parser_;
  std::optional<bhttp::request_parser<bhttp::string_body>> body_parser_;
  const Router::Route* route_ = nullptr;
  size_t body_limit_ = 0;  // of route_
  std::map<std::string, std::string> params_;
  std::shared_ptr<ExchangeImpl> exchange_;
  bool stream_chunked_ = true;
  bool stream_ended_ = false;
  int version_ = 11;  // of the current request: 10 = HTTP/1.0
  std::deque<std::pair<std::string, size_t>> out_;
  std::vector<std::string> in_flight_;
  size_t in_flight_credit_ = 0;
  bool writing_ = false;
  std::chrono::steady_clock::time_point write_started_;
  std::chrono::steady_clock::time_point request_started_;  // its first byte (or accept)
};

// One request's answer; see internal::Exchange and responder.h.
class ExchangeImpl : public internal::Exchange,
                     public std::enable_shared_from_this<ExchangeImpl> {
 public:
  ExchangeImpl(std::shared_ptr<Gate> gate, std::weak_ptr<Connection> conn, size_t max_buffer)
      : gate_(std::move(gate)), conn_(std::move(conn)), max_buffer_(max_buffer) {}

  void Finish(Response response) override {
    {
      absl::MutexLock l(&mu_);
      if (answered_ || cancelled_) return;
      answered_ = true;
    }
    Connection::Run(gate_, conn_, [this, self = Self(), r = std::move(response)](
                                      Connection& c) mutable { c.Respond(this, std::move(r)); });
  }
  bool StartStream(Headers headers) override {
    {
      absl::MutexLock l(&mu_);
      if (answered_ || cancelled_) return false;
      answered_ = streaming_ = true;
    }
    Connection::Run(gate_, conn_, [this, self = Self(), h = std::move(headers)](
                                      Connection& c) mutable { c.StartStream(this, std::move(h)); });
    return true;
  }
  bool Write(std::string bytes) override {
    std::vector<std::function<void()>> callbacks;
    bool overflow = false;
    {
      absl::MutexLock l(&mu_);
      if (!streaming_ || ended_ || cancelled_) return false;
      overflow = queued_ + bytes.size() > max_buffer_;
      if (!overflow) {
        queued_ += bytes.size();
      } else {
        // Cancelled here, not when Close runs: an End() in between (say, the
        // last handle going) must not turn the cut-off into a clean end.
        cancelled_ = true;
        callbacks.swap(on_cancel_);
      }
    }
    if (overflow) {
      LOG(WARNING) << "event=http_stream_overflow limit=" << max_buffer_;
      auto close = [callbacks](Connection& c) {
        for (const auto& cb : callbacks) cb();
        c.Close();
      };
      if (!Connection::Run(gate_, conn_, close)) {
        for (const auto& cb : callbacks) cb();  // already closed or stopping
      }
      return false;
    }
    Connection::Run(gate_, conn_, [this, self = Self(), b = std::move(bytes)](
                                      Connection& c) mutable { c.StreamWrite(this, std::move(b)); });
    return true;
  }
  void End() override {
    {
      absl::MutexLock l(&mu_);
      if (!streaming_ || ended_ || cancelled_) return;
      ended_ = true;
    }
    Connection::Run(gate_, conn_, [this, self = Self()](Connection& c) { c.EndStream(this); });
  }
  // A stream is also done once ended.
  bool cancelled() const override {
    absl::MutexLock l(&mu_);
    return cancelled_ || (streaming_ && ended_);
  }
  void OnCancel(std::function<void()> callback) override {
    {
      absl::MutexLock l(&mu_);
      if (!cancelled_) {
        on_cancel_.push_back(std::move(callback));
        return;
      }
    }
    callback();
  }

  // Connection side (its strand). Cancels unless answered (a stream: unless
  // ended); false when the answer was already given.
  bool Cancel() {
    std::vector<std::function<void()>> callbacks;
    {
      absl::MutexLock l(&mu_);
      if (cancelled_ || (answered_ && (!streaming_ || ended_))) return false;
      cancelled_ = true;
      callbacks.swap(on_cancel_);
    }
    for (auto& cb : callbacks) cb();
    return true;
  }
  void Written(size_t n) {
    absl::MutexLock l(&mu_);
    queued_ -= std::min(queued_, n);
  }

 private:
  std::shared_ptr<ExchangeImpl> Self() { return shared_from_this(); }

  const std::shared_ptr<Gate> gate_;
  const std::weak_ptr<Connection> conn_;
  const size_t max_buffer_;
  mutable absl::Mutex mu_;
  bool answered_ ABSL_GUARDED_BY(mu_) = false;
  bool streaming_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  size_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::function<void()>> on_cancel_ ABSL_GUARDED_BY(mu_);
};

bool Connection::Run(const std::shared_ptr<Gate>& gate, const std::weak_ptr<Connection>& weak,
                     std::function<void(Connection&)> fn) {
  // The lock keeps the io_context alive while posting and while the last
  // reference to the connection may drop here.
  absl::ReaderMutexLock l(&gate->mu);
  if (!gate->open) return false;
  std::shared_ptr<Connection> c = weak.lock();
  if (c == nullptr) return false;
  auto ex = c->stream_.get_executor();
  asio::post(ex, [c = std::move(c), fn = std::move(fn)] {
    if (!c->Closed()) fn(*c);
  });
  return true;
}

void Connection::Arm(absl::Duration d) {
  const uint64_t gen = ++timer_gen_;
  timer_.expires_after(Chrono(d));
  timer_.async_wait([self = shared_from_this(), gen](ErrorCode ec) {
    if (ec || gen != self->timer_gen_ || self->Closed()) return;
    self->OnTimer();
  });
}

void Connection::OnTimer() {
  switch (phase_) {
    case Phase::kHandshake:
    case Phase::kReading:
      ++server_->timed_out;
      VLOG(1) << "event=http_request_timeout peer=" << ip_;
      Close();
      return;
    case Phase::kIdle:
      Close();
      return;
    case Phase::kHandling:
      if (exchange_ != nullptr && exchange_->Cancel()) {
        exchange_.reset();
        SendError(504, "DEADLINE_EXCEEDED", "no answer within the route's deadline", false);
      }
      return;
    case Phase::kWriting:
      ++server_->timed_out;
      Close();
      return;
    case Phase::kStreaming:
      if (writing_ && std::chrono::steady_clock::now() - write_started_ > Chrono(opts_.write_timeout)) {
        ++server_->timed_out;
        Close();
        return;
      }
      if (!writing_ && out_.empty()) {
        std::string comment = ": keep-alive\n\n";
        Send(stream_chunked_ ? absl::StrCat(absl::Hex(comment.size()), "\r\n", comment, "\r\n")
                             : comment);
      }
      Arm(std::min(opts_.stream_keep_alive, opts_.write_timeout));
      return;
    case Phase::kLingering:
      Close();
      return;
    case Phase::kClosed:
      return;
  }
}

void Connection::Start() {
  asio::ssl::stream<tcp::socket>* tls = stream_.tls();
  if (tls == nullptr) return WaitForRequest();
  phase_ = Phase::kHandshake;
  Arm(opts_.request_timeout);
  tls->async_handshake(asio::ssl::stream_base::server, [self = shared_from_this()](ErrorCode ec) {
    if (self->Closed()) return;
    if (ec) {
      VLOG(1) << "event=http_tls_handshake_failed peer=" << self->ip_ << " error=\"" << ec.message()
              << "\"";
      return self->Close();
    }
    self->tls_subject_ = PeerSubject(self->stream_.tls()->native_handle());
    self->WaitForRequest();
  });
}

// Idle until the first byte of the next request (keep_alive_timeout; a new
// connection gets request_timeout for all of its first request).
void Connection::WaitForRequest() {
  if (server_->stopping) return Close();
  phase_ = Phase::kIdle;
  if (reading_) {  // the watch read continues into ReadHeader
    Arm(opts_.keep_alive_timeout);
    return;
  }
  if (buffer_.size() > 0) return ReadHeader();
  if (first_request_) {
    phase_ = Phase::kReading;  // the deadline already counts
    request_started_ = std::chrono::steady_clock::now();
    Arm(opts_.request_timeout);
    return ReadHeader();
  }
  Arm(opts_.keep_alive_timeout);
  reading_ = true;
  stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](ErrorCode ec,
                                                                             size_t n) {
    self->reading_ = false;
    if (self->Closed()) return;
    if (ec) return self->Close();
    self->buffer_.commit(n);
    self->ReadHeader();
  });
}

void Connection::ReadHeader() {
  if (phase_ != Phase::kReading) {
    phase_ = Phase::kReading;
    request_started_ = std::chrono::steady_clock::now();
    Arm(opts_.request_timeout);
  }
  first_request_ = false;
  header_parser_.emplace();
  header_parser_->header_limit(static_cast<std::uint32_t>(opts_.max_header_bytes));
  // The route's limit applies (OnHeader). Not boost::none: Beast 1.74 then
  // refuses every Content-Length (it compares the length with an empty optional).
  header_parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
  reading_ = true;
  bhttp::async_read_header(stream_, buffer_, *header_parser_,
                           [self = shared_from_this()](ErrorCode ec, size_t) {
                             self->reading_ = false;
                             if (!self->Closed()) self->OnHeader(ec);
                           });
}

void Connection::OnHeader(ErrorCode ec) {
  if (ec == bhttp::error::header_limit) {
    return SendError(431, "INVALID_ARGUMENT",
                     absl::StrCat("headers: over ", opts_.max_header_bytes, " bytes"), true);
  }
  if (ec) return OnReadError(ec);
  auto& h = header_parser_->get();
  const std::string method(h.method_string());
  const std::string target(h.target());
  const size_t q = target.find('?');
  const std::string path = target.substr(0, q);
  head_ = method == "HEAD";
  keep_alive_ = h.keep_alive();
  version_ = static_cast<int>(h.version());
  Router::Match m = server_->router->Find(method, path);
  if (m.route == nullptr) {
    // The body (if any) is not read: answer and close.
    const bool close = !(header_parser_->content_length().value_or(0) == 0 &&
                         !header_parser_->chunked());
    if (m.bad_path) {
      return SendError(400, "INVALID_ARGUMENT", "path: malformed %-escape", true);
    }
    if (!m.allow.empty()) {
      Response r = Response::Error(
          405, "INVALID_ARGUMENT",
          absl::StrCat(method, " ", path, ": method not allowed (", m.allow, ")"));
      r.headers.emplace("Allow", m.allow);
      phase_ = Phase::kHandling;
      keep_alive_ = keep_alive_ && !close;
      return Respond(nullptr, std::move(r));
    }
    return SendError(404, "NOT_FOUND", absl::StrCat("no route for ", method, " ", path), close);
  }
  route_ = m.route;
  params_ = std::move(m.params);
  body_limit_ =
      route_->options.max_body_bytes > 0 ? route_->options.max_body_bytes : opts_.max_body_bytes;
  if (header_parser_->content_length().value_or(0) > body_limit_) return RefuseBody();
  if (route_->options.request_timeout > absl::ZeroDuration()) {  // the route's own deadline
    const absl::Duration spent =
        absl::FromChrono(std::chrono::steady_clock::now() - request_started_);
    Arm(std::max(absl::ZeroDuration(), route_->options.request_timeout - spent));
  }
  auto expect = h.find(bhttp::field::expect);
  if (expect != h.end() && absl::EqualsIgnoreCase(std::string(expect->value()), "100-continue") &&
      h.version() >= 11 && !header_parser_->is_done()) {
    Send("HTTP/1.1 100 Continue\r\n\r\n");
  }
  body_parser_.emplace(std::move(*header_parser_));
  header_parser_.reset();
  body_parser_->body_limit(body_limit_);
  reading_ = true;
  bhttp::async_read(stream_, buffer_, *body_parser_,
                    [self = shared_from_this()](ErrorCode ec, size_t) {
                      self->reading_ = false;
                      if (!self->Closed()) self->OnBody(ec);
                    });
}

// 400 for a malformed request; a close when the client went away or its
// deadline passed.
void Connection::OnReadError(ErrorCode ec) {
  if (!IsParseError(ec)) return Close();
  SendError(400, "INVALID_ARGUMENT", absl::StrCat("malformed HTTP request: ", ec.message()), true);
}

void Connection::RefuseBody() {
  SendError(413, "INVALID_ARGUMENT", absl::StrCat("body: over ", body_limit_, " bytes"), true);
}

void Connection::OnBody(ErrorCode ec) {
  if (ec == bhttp::error::body_limit) return RefuseBody();
  if (ec) return OnReadError(ec);
  auto msg = body_parser_->release();
  body_parser_.reset();
  ++server_->requests;
  Request req;
  req.method = std::string(msg.method_string());
  req.target = std::string(msg.target());
  const size_t q = req.target.find('?');
  req.path = req.target.substr(0, q);
  if (q != std::string::npos) {
    for (absl::string_view kv :
         absl::StrSplit(absl::string_view(req.target).substr(q + 1), '&', absl::SkipEmpty())) {
      const size_t eq = kv.find('=');
      std::string key, value;
      if (!PercentDecode(kv.substr(0, eq), true, &key) ||
          (eq != absl::string_view::npos && !PercentDecode(kv.substr(eq + 1), true, &value))) {
        return SendError(400, "INVALID_ARGUMENT", "query: malformed %-escape", false);
      }
      req.query.emplace_back(std::move(key), std::move(value));
    }
  }
  for (const auto& f : msg) {
    req.headers.emplace(std::string(f.name_string()), std::string(f.value()));
  }
  req.body = std::move(msg.body());
  req.path_params = std::move(params_);
  req.peer_ip = ip_;
  req.peer_port = port_;
  req.tls = stream_.tls() != nullptr;
  req.tls_peer_subject = tls_subject_;
  Dispatch(route_, std::move(req));
}

void Connection::Dispatch(const Router::Route* route, Request req) {
  phase_ = Phase::kHandling;
  auto x = std::make_shared<ExchangeImpl>(server_->gate, weak_from_this(),
                                          opts_.max_stream_buffer_bytes);
  exchange_ = x;
  Arm(route->options.deadline > absl::ZeroDuration() ? route->options.deadline
                                                     : opts_.handler_timeout);
  std::shared_ptr<internal::Exchange> base = x;
  const bool queued = server_->pool->TrySubmit(
      [route, req = std::move(req), base]() mutable { RunHandler(*route, req, base); });
  if (!queued) {
    x->Cancel();
    exchange_.reset();
    return SendError(503, "UNAVAILABLE", "server busy: too many requests waiting", false);
  }
  Watch();
}

// While a handler runs or a stream is open, keep a read pending to notice a
// client that goes away (bytes of a pipelined next request are kept).
void Connection::Watch() {
  if (reading_ || buffer_.size() >= opts_.max_header_bytes) return;
  reading_ = true;
  stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](ErrorCode ec,
                                                                             size_t n) {
    self->reading_ = false;
    if (self->Closed()) return;
    if (ec) {
      VLOG(1) << "event=http_client_gone peer=" << self->ip_;
      return self->Close();
    }
    self->buffer_.commit(n);
    if (self->phase_ == Phase::kLingering) return self->Linger();
    if (self->phase_ == Phase::kIdle) return self->ReadHeader();
    if (self->phase_ == Phase::kHandling || self->phase_ == Phase::kStreaming ||
        self->phase_ == Phase::kWriting) {
      self->Watch();
    }
  });
}

void Connection::Respond(ExchangeImpl* x, Response r) {
  if (x != nullptr && x != exchange_.get()) return;  // answered by a timeout already
  if (phase_ != Phase::kHandling) return;
  exchange_.reset();
  if (server_->stopping) keep_alive_ = false;
  const std::string length = absl::StrCat(r.body.size());
  std::string out = Head(r.status, r.headers, !keep_alive_, &length, false);
  if (!head_) out += r.body;
  phase_ = Phase::kWriting;
  Arm(opts_.write_timeout);
  Send(std::move(out));
}

void Connection::SendError(int status, const std::string& code, const std::string& message,
                           bool close) {
  if (close) keep_alive_ = false;
  phase_ = Phase::kHandling;
  Respond(nullptr, Response::Error(status, code, message));
}

void Connection::StartStream(ExchangeImpl* x, Headers h) {
  if (x != exchange_.get() || phase_ != Phase::kHandling) return;
  stream_chunked_ = version_ >= 11;
  if (!stream_chunked_) keep_alive_ = false;  // HTTP/1.0: the close ends the stream
  h.erase("Content-Type");
  h.emplace("Content-Type", "text/event-stream");
  if (h.find("Cache-Control") == h.end()) h.emplace("Cache-Control", "no-store");
  h.emplace("X-Accel-Buffering", "no");  // proxies: do not buffer events
  if (server_->stopping) keep_alive_ = false;
  stream_ended_ = false;
  phase_ = Phase::kStreaming;
  Send(Head(200, h, !keep_alive_, nullptr, stream_chunked_));
  Arm(std::min(opts_.stream_keep_alive, opts_.write_timeout));
  if (server_->stopping) BeginStop();
}

void Connection::StreamWrite(ExchangeImpl* x, std::string bytes) {
  if (x != exchange_.get() || phase_ != Phase::kStreaming || stream_ended_) return;
  const size_t n = bytes.size();
  Send(stream_chunked_ ? absl::StrCat(absl::Hex(n), "\r\n", bytes, "\r\n") : std::move(bytes), n);
}

void Connection::EndStream(ExchangeImpl* x) {
  if (x != exchange_.get() || phase_ != Phase::kStreaming || stream_ended_) return;
  stream_ended_ = true;  // the exchange marked itself ended (End())
  Send(stream_chunked_ ? "0\r\n\r\n" : "");
}

void Connection::Send(std::string bytes, size_t credit) {
  out_.emplace_back(std::move(bytes), credit);
  Flush();
}

void Connection::Flush() {
  if (writing_ || out_.empty() || Closed()) return;
  writing_ = true;
  write_started_ = std::chrono::steady_clock::now();
  in_flight_.clear();
  in_flight_credit_ = 0;
  for (auto& [bytes, credit] : out_) {
    in_flight_.push_back(std::move(bytes));
    in_flight_credit_ += credit;
  }
  out_.clear();
  std::vector<asio::const_buffer> buffers;
  for (const auto& s : in_flight_) buffers.emplace_back(asio::buffer(s));
  asio::async_write(stream_, buffers, [self = shared_from_this()](ErrorCode ec, size_t) {
    self->writing_ = false;
    self->in_flight_.clear();
    if (self->Closed()) return;
    if (ec) return self->Close();
    if (self->in_flight_credit_ > 0 && self->exchange_ != nullptr) {
      self->exchange_->Written(self->in_flight_credit_);
    }
    if (!self->out_.empty()) return self->Flush();
    if (self->phase_ == Phase::kWriting) return self->AfterAnswer();
    if (self->phase_ == Phase::kStreaming && self->stream_ended_) return self->AfterAnswer();
  });
}

void Connection::AfterAnswer() {
  exchange_.reset();
  route_ = nullptr;
  if (server_->stopping) return Close();
  if (!keep_alive_) return Linger();
  WaitForRequest();
}

// After the last answer: send FIN, then read and drop what the client still
// sends (say, the body of a refused upload) until it closes or a short while
// passes - closing with unread input would reset the connection and could
// destroy the answer before the client reads it.
void Connection::Linger() {
  phase_ = Phase::kLingering;
  ErrorCode ignored;
  stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  Arm(std::min(absl::Seconds(2), opts_.request_timeout));
  if (reading_) return;  // the watch read ends in Close
  buffer_.clear();
  reading_ = true;
  stream_.socket().async_read_some(buffer_.prepare(16384), [self = shared_from_this()](
                                                             ErrorCode ec, size_t) {
    self->reading_ = false;
    if (self->Closed()) return;
    if (ec) return self->Close();
    self->Linger();
  });
}

void Connection::Close() {
  if (Closed()) return;
  phase_ = Phase::kClosed;
  ++timer_gen_;
  timer_.cancel();
  if (exchange_ != nullptr) {
    exchange_->Cancel();
    exchange_.reset();
  }
  ErrorCode ignored;
  stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
  stream_.socket().close(ignored);
}

void Connection::BeginStop() {
  switch (phase_) {
    case Phase::kHandshake:
    case Phase::kIdle:
    case Phase::kReading:
      return Close();
    case Phase::kStreaming:
      keep_alive_ = false;
      if (exchange_ != nullptr && !stream_ended_) {
        exchange_->Cancel();  // the handler's OnClose runs; its writes stop
        stream_ended_ = true;
        Send(stream_chunked_ ? "0\r\n\r\n" : "");
      }
      return;
    default:
      keep_alive_ = false;  // answer in progress: close after it
      return;
  }
}

}  // namespace

void Impl::Forget(Connection* c, const std::string& ip) {
  absl::MutexLock l(&mu);
  connections.erase(c);
  --open;
  auto it = per_ip.find(ip);
  if (it != per_ip.end() && --it->second <= 0) per_ip.erase(it);
}

void Impl::Accept() {
  acceptor->async_accept(asio::make_strand(*io), [this](ErrorCode ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
    if (ec) {
      // EMFILE and friends: back off a little instead of spinning.
      LOG_EVERY_N(WARNING, 100) << "event=http_accept_failed flag=" << options.flag << " error=\""
                                << ec.message() << "\"";
      auto t = std::make_shared<asio::steady_timer>(*io, std::chrono::milliseconds(50));
      t->async_wait([this, t](ErrorCode) {
        if (acceptor->is_open()) Accept();
      });
      return;
    }
    ErrorCode peer_ec;
    tcp::endpoint peer = socket.remote_endpoint(peer_ec);
    std::string ip = peer_ec ? "" : peer.address().to_string();
    bool admit = false;
    {
      absl::MutexLock l(&mu);
      int& n = per_ip[ip];
      admit = !stopped && open < options.max_connections && n < options.max_connections_per_ip;
      if (admit) {
        ++open;
        ++n;
      } else if (n == 0) {
        per_ip.erase(ip);
      }
    }
    if (!admit) {
      ++refused;
      LOG_EVERY_N(WARNING, 100) << "event=http_connection_refused flag=" << options.flag
                                << " peer=" << ip << " max_connections=" << options.max_connections
                                << " max_connections_per_ip=" << options.max_connections_per_ip;
      if (tls == nullptr) {
        static const std::string kBusy = [] {
          const std::string body =
              JsonErrorBody("UNAVAILABLE", "too many connections (per client or in all)");
          return absl::StrCat("HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                              "application/json\r\nContent-Length: ",
                              body.size(), "\r\nConnection: close\r\n\r\n", body);
        }();
        ErrorCode ignored;
        socket.non_blocking(true, ignored);
        socket.write_some(asio::buffer(kBusy), ignored);
        socket.shutdown(tcp::socket::shutdown_send, ignored);
      }
      ErrorCode ignored;
      socket.close(ignored);
      return Accept();
    }
    ErrorCode ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    auto c = std::make_shared<Connection>(this, std::move(socket), ip, peer_ec ? 0 : peer.port());
    {
      absl::MutexLock l(&mu);
      connections[c.get()] = c;
    }
    asio::post(c->executor(), [c] { c->Start(); });
    Accept();
  });
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const Options& options,
                                                              Router router) {
  if (!router.status().ok()) {
    return absl::InvalidArgumentError(absl::StrCat(options.flag, ": ", router.status().message()));
  }
  if (options.io_threads < 1 || options.handler_threads < 1 || options.max_queued_requests < 1 ||
      options.max_connections < 1 || options.max_connections_per_ip < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        options.flag,
        ": io_threads, handler_threads, max_queued_requests, max_connections and "
        "max_connections_per_ip must be at least 1"));
  }
  std::string host;
  int port = 0;
  if (absl::Status s = SplitHostPort(options.flag, options.listen, &host, &port); !s.ok()) {
    return s;
  }
  std::unique_ptr<HttpServer> srv(new HttpServer);
  srv->impl_ = std::make_unique<Impl>();
  Impl* impl = srv->impl_.get();
  impl->options = options;
  impl->router = std::make_shared<const Router>(std::move(router));

  const bool https = options.tls.server_enabled();
  if (https) {
    // Check the files first so a bad flag gets a clear message.
    if (auto c = security::ServerCredentials(options.tls); !c.ok()) return c.status();
    impl->tls = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_server);
    if (absl::Status s = security::ConfigureServerSslCtx(impl->tls->native_handle(), options.tls);
        !s.ok()) {
      return s;
    }
  }
  impl->io = std::make_unique<asio::io_context>(options.io_threads);
  ErrorCode ec;
  tcp::endpoint endpoint(asio::ip::make_address(host, ec), static_cast<unsigned short>(port));
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.flag, ": '", host, "' is not an IP address (", options.listen, ")"));
  }
  impl->acceptor = std::make_unique<tcp::acceptor>(*impl->io);
  auto fail = [&](ErrorCode e) {
    return absl::UnavailableError(absl::StrCat(options.flag, ": cannot listen on '", options.listen,
                                               "': ", e.message()));
  };
  // SO_REUSEADDR only: SO_REUSEPORT would let a second process bind the same
  // port and silently take half the connections.
  if (impl->acceptor->open(endpoint.protocol(), ec); ec) return fail(ec);
  if (impl->acceptor->set_option(asio::socket_base::reuse_address(true), ec); ec) return fail(ec);
  if (impl->acceptor->bind(endpoint, ec); ec) return fail(ec);
  if (impl->acceptor->listen(asio::socket_base::max_listen_connections, ec); ec) return fail(ec);
  srv->port_ = impl->acceptor->local_endpoint(ec).port();
  if (ec) return fail(ec);

  impl->pool = std::make_unique<HandlerPool>(options.handler_threads, options.max_queued_requests);
  impl->Accept();
  for (int i = 0; i < options.io_threads; ++i) {
    impl->threads.emplace_back([io = impl->io.get(), flag = options.flag] {
      for (;;) {
        try {
          io->run();
          return;
        } catch (const std::exception& e) {  // Asio/Beast internals; keep serving
          LOG(ERROR) << "event=http_loop_exception flag=" << flag << " error=\"" << e.what()
                     << "\"";
        }
      }
    });
  }
  LOG(INFO) << "event=http_started flag=" << options.flag << " listen=" << options.listen
            << " port=" << srv->port_
            << " tls=" << (https ? (options.tls.ca.empty() ? "server" : "mutual") : "off")
            << " max_connections=" << options.max_connections
            << " max_connections_per_ip=" << options.max_connections_per_ip
            << " request_timeout=" << absl::FormatDuration(options.request_timeout);
  return srv;
}

void HttpServer::Stop(absl::Duration grace) {
  Impl* impl = impl_.get();
  if (impl == nullptr || impl->pool == nullptr) return;  // never started
  {
    absl::MutexLock l(&impl->mu);
    if (impl->stopped) return;
    impl->stopped = true;
  }
  impl->stopping = true;
  asio::post(*impl->io, [impl] {
    ErrorCode ignored;
    impl->acceptor->close(ignored);
  });
  std::vector<std::weak_ptr<Connection>> all;
  {
    absl::MutexLock l(&impl->mu);
    for (const auto& [unused, weak] : impl->connections) all.push_back(weak);
  }
  for (const auto& weak : all) {
    Connection::Run(impl->gate, weak, [](Connection& c) { c.BeginStop(); });
  }
  {
    absl::MutexLock l(&impl->mu);
    impl->mu.AwaitWithTimeout(absl::Condition(impl, &Impl::Drained), grace);
  }
  {
    absl::MutexLock l(&impl->gate->mu);
    impl->gate->open = false;
  }
  impl->io->stop();
  for (auto& t : impl->threads) t.join();
  impl->threads.clear();
  impl->pool->Stop();
  impl->acceptor.reset();
  impl->io.reset();  // destroys the remaining connections
  LOG(INFO) << "event=http_stopped flag=" << impl->options.flag;
}

HttpServer::~HttpServer() {
  if (impl_ != nullptr) Stop(impl_->options.stop_grace);
}

HttpServer::Stats HttpServer::stats() const {
  Stats s;
  absl::MutexLock l(&impl_->mu);
  s.open_connections = impl_->open;
  s.refused_connections = impl_->refused;
  s.timed_out_connections = impl_->timed_out;
  s.requests = impl_->requests;
  return s;
}

}  // namespace zfarm::http
