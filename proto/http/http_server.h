#ifndef ZFARM_PROTO_HTTP_HTTP_SERVER_H_
#define ZFARM_PROTO_HTTP_HTTP_SERVER_H_

// File: http_server.h
// The HTTP(S) ports of zfarm (the scheduler's REST gateway, /metrics of the
// scheduler and the worker) on cpp-httplib (Debian's libcpp-httplib, linked
// against OpenSSL 3; Debian 12's civetweb dlopen()s "libssl.so", cannot bind
// SSL_get_peer_certificate there and crashes on the first TLS connection).
//
// Serves plain HTTP, or HTTPS when tls.cert is set, with required and verified
// client certificates when tls.ca is set (mutual TLS) - the same TlsFlags as the
// gRPC ports (proto/security/tls.h).
//
//   HttpServer::Options o;
//   o.listen = "0.0.0.0:9464";
//   o.flag = "--metrics-listen";
//   ZFARM_ASSIGN_OR_RETURN(auto srv, HttpServer::Start(o, [](httplib::Server& s) {
//     s.Get("/metrics", [](const httplib::Request&, httplib::Response& res) { ... });
//   }));
//   srv->port();   // the bound port (listen port 0 picks a free one)
//
// Requests run on a pool of Options::num_threads threads. Errors httplib
// raises itself (unknown route, body over max_body_bytes) get a JSON body
// {"code": "...", "message": "..."} like the REST gateway's own errors.
// Destroying the server stops it (in-flight requests finish first).

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/security/tls.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace zfarm::http {

class HttpServer {
 public:
  struct Options {
    std::string listen = "127.0.0.1:0";  // HOST:PORT or [V6]:PORT
    std::string flag = "--http-listen";  // named in errors
    security::TlsFlags tls;
    int num_threads = 8;
    size_t max_body_bytes = 1 << 20;
    // An idle keep-alive connection holds one of the threads this long.
    absl::Duration keep_alive_timeout = absl::Seconds(5);
  };

  // Binds, registers the routes with `routes` and starts serving.
  // INVALID_ARGUMENT for a bad listen address or TLS file (naming the flag),
  // UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const Options& options, const std::function<void(httplib::Server&)>& routes);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }

  struct Impl;

 private:
  HttpServer() = default;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

// {"code": "<grpc code name>", "message": "..."} + "\n", the error body of
// every zfarm HTTP port.
std::string JsonErrorBody(const std::string& code_name, const std::string& message);

}  // namespace zfarm::http

#endif  // ZFARM_PROTO_HTTP_HTTP_SERVER_H_
