#include "proto/http/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "glog/logging.h"
#include "nlohmann/json.hpp"

namespace zfarm::http {

struct HttpServer::Impl {
  std::unique_ptr<httplib::Server> server;  // an httplib::SSLServer with TLS
  std::thread thread;                       // runs server->listen_after_bind()
  std::atomic<bool> listen_ended{false};
};

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

}  // namespace

std::string JsonErrorBody(const std::string& code_name, const std::string& message) {
  nlohmann::json j{{"code", code_name}, {"message", message}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const Options& options, const std::function<void(httplib::Server&)>& routes) {
  std::string host;
  int port = 0;
  if (absl::Status s = SplitHostPort(options.flag, options.listen, &host, &port); !s.ok()) {
    return s;
  }
  std::unique_ptr<HttpServer> srv(new HttpServer);
  srv->impl_ = std::make_unique<Impl>();
  Impl* impl = srv->impl_.get();

  const bool https = options.tls.server_enabled();
  if (https) {
    // Check the files first so a bad flag gets a clear message (the SSL_CTX
    // callback can only say yes or no).
    if (auto c = security::ServerCredentials(options.tls); !c.ok()) return c.status();
    absl::Status ctx_status;
    auto ssl = std::make_unique<httplib::SSLServer>([&](SSL_CTX& ctx) {
      ctx_status = security::ConfigureServerSslCtx(&ctx, options.tls);
      return ctx_status.ok();
    });
    if (!ssl->is_valid()) {
      if (!ctx_status.ok()) return ctx_status;
      return absl::InternalError(absl::StrCat(options.flag, ": cannot create the TLS context"));
    }
    impl->server = std::move(ssl);
  } else {
    impl->server = std::make_unique<httplib::Server>();
  }
  httplib::Server& svr = *impl->server;
  const size_t threads = static_cast<size_t>(std::max(1, options.num_threads));
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  svr.set_payload_max_length(options.max_body_bytes);
  // httplib's default also sets SO_REUSEPORT, which lets a second process bind
  // the same port and silently take half the connections: SO_REUSEADDR only.
  svr.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  svr.set_keep_alive_timeout(std::max<time_t>(1, absl::ToInt64Seconds(options.keep_alive_timeout)));
  // A client that stops sending (or a slow-drip one) frees its thread after this
  // long per read; requests here are small JSON bodies.
  svr.set_read_timeout(std::chrono::seconds(10));
  svr.set_write_timeout(std::chrono::seconds(60));
  const size_t max_body = options.max_body_bytes;
  svr.set_error_handler([max_body](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a handler's own error body
    std::string code = "INVALID_ARGUMENT";
    std::string message = absl::StrCat("HTTP ", res.status, " for ", req.method, " ", req.path);
    if (res.status == 413) {
      message = absl::StrCat("body: over ", max_body, " bytes");
    } else if (res.status == 404) {
      code = "NOT_FOUND";
      message = absl::StrCat("no route for ", req.method, " ", req.path);
    } else if (res.status >= 500) {
      code = "INTERNAL";
    }
    res.set_header("Cache-Control", "no-store");
    res.set_content(JsonErrorBody(code, message), "application/json");
  });
  svr.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        res.status = 500;
        res.set_content(JsonErrorBody("INTERNAL", "internal error"), "application/json");
      });
  routes(svr);

  errno = 0;
  srv->port_ = port == 0 ? svr.bind_to_any_port(host) : (svr.bind_to_port(host, port) ? port : -1);
  if (srv->port_ <= 0) {
    const int err = errno;
    return absl::UnavailableError(absl::StrCat(options.flag, ": cannot listen on '", options.listen,
                                               "'",
                                               err != 0 ? absl::StrCat(": ", strerror(err)) : ""));
  }
  impl->thread = std::thread([impl] {
    impl->server->listen_after_bind();
    impl->listen_ended = true;
  });
  // stop() only interrupts a running accept loop: wait until it runs (or has
  // already ended, which the destructor's join handles).
  while (!svr.is_running() && !impl->listen_ended) absl::SleepFor(absl::Milliseconds(1));
  LOG(INFO) << "event=http_started flag=" << options.flag << " listen=" << options.listen
            << " port=" << srv->port_
            << " tls=" << (https ? (options.tls.ca.empty() ? "server" : "mutual") : "off");
  return srv;
}

HttpServer::~HttpServer() {
  if (impl_ == nullptr || impl_->server == nullptr) return;
  impl_->server->stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace zfarm::http
