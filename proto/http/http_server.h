#ifndef ZFARM_PROTO_HTTP_HTTP_SERVER_H_
#define ZFARM_PROTO_HTTP_HTTP_SERVER_H_

// File: http_server.h
// The HTTP(S) ports of zfarm (the scheduler's REST gateway, /metrics of the
// scheduler and the worker): HTTP/1.1 with keep-alive, plain or TLS with the
// same TlsFlags as the gRPC ports (proto/security/tls.h: certificate, key,
// TLS >= 1.2, required and verified client certificates when tls.ca is set).
//
//   Router router;
//   router.Add("GET", "/metrics", [](const Request&) { return Response::Text(200, "..."); });
//   HttpServer::Options o;
//   o.listen = "0.0.0.0:9464";
//   o.flag = "--metrics-listen";
//   ZFARM_ASSIGN_OR_RETURN(auto srv, HttpServer::Start(o, std::move(router)));
//   srv->port();   // the bound port (listen port 0 picks a free one)
//
// Built on Boost.Asio/Beast (Debian's libboost-dev 1.74, header-only) with
// OpenSSL: connections are event-driven on Options::io_threads threads, so an
// idle or slow client costs a socket and a few KB, not a thread. Beast parses
// requests; this file owns connection limits, deadlines, TLS and answering.
// Chosen over libevent 2.1's evhttp (no connection cap, per-read timeouts
// only, one global body limit, awkward completion from other threads),
// libmicrohttpd (GnuTLS, not OpenSSL) and cpp-httplib (one thread per
// connection: slow clients starved the pool).
//
// Limits and behaviour (Options):
//   - the TLS handshake and each request (header and body) must arrive
//     within request_timeout, counted from its first byte (not per read);
//     otherwise the connection is closed without an answer. An idle
//     keep-alive connection is closed after keep_alive_timeout.
//   - beyond max_connections open connections, or max_connections_per_ip
//     from one address, a new connection is closed at once; over plain HTTP
//     it first gets a best-effort 503 UNAVAILABLE JSON answer.
//   - a header over max_header_bytes gets 431, a body over the route's limit
//     413 (before it is read); both close the connection. A malformed
//     request gets 400 and a close.
//   - handlers run on a pool of handler_threads; when max_queued_requests
//     wait for it, new requests get 503 UNAVAILABLE. A handler must answer
//     within its route's deadline (504 DEADLINE_EXCEEDED otherwise); one
//     that throws gets 500 INTERNAL (logged).
//   - writing an answer must finish within write_timeout.
// Errors are {"code": "...", "message": "..."} (JsonErrorBody).
//
// Thread-safe. Stop() (or the destructor) stops accepting, ends event streams,
// lets answers in progress finish for up to a grace period, then closes every
// connection.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/http/message.h"
#include "proto/http/responder.h"
#include "proto/http/router.h"
#include "proto/security/tls.h"

namespace zfarm::http {

class HttpServer {
 public:
  struct Options {
    std::string listen = "127.0.0.1:0";  // HOST:PORT or [V6]:PORT
    std::string flag = "--http-listen";  // named in errors
    security::TlsFlags tls;
    int io_threads = 1;       // event loop threads (sockets, TLS, parsing)
    int handler_threads = 8;  // pool running the routes' handlers
    int max_queued_requests = 256;
    int max_connections = 1024;
    int max_connections_per_ip = 128;
    size_t max_header_bytes = 16 << 10;
    size_t max_body_bytes = 1 << 20;  // routes may set their own
    absl::Duration request_timeout = absl::Seconds(10);
    absl::Duration keep_alive_timeout = absl::Seconds(5);
    absl::Duration handler_timeout = absl::Seconds(60);  // routes may set their own
    absl::Duration write_timeout = absl::Seconds(30);
    // Event streams: a ": keep-alive" comment after this long without an
    // event; a client leaving over max_stream_buffer_bytes unread is cut off.
    absl::Duration stream_keep_alive = absl::Seconds(15);
    size_t max_stream_buffer_bytes = 4 << 20;
    absl::Duration stop_grace = absl::Seconds(5);  // for the destructor
  };

  // Binds and starts serving `router`'s routes.
  // INVALID_ARGUMENT for a bad listen address, TLS file, option or route
  // (naming the flag), UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const Options& options, Router router);
  ~HttpServer();  // Stop(options.stop_grace)
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }

  // Stops accepting, closes idle connections and ends event streams, waits
  // up to `grace` for answers in progress, then closes everything and waits
  // for running handlers to return. Idempotent.
  void Stop(absl::Duration grace);

  struct Stats {
    int64_t open_connections = 0;
    int64_t refused_connections = 0;  // over a connection limit
    int64_t timed_out_connections = 0;  // closed by request_timeout/write_timeout
    int64_t requests = 0;               // complete requests read
  };
  Stats stats() const;

  struct Impl;

 private:
  HttpServer() = default;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace zfarm::http

#endif  // ZFARM_PROTO_HTTP_HTTP_SERVER_H_
