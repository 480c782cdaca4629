#ifndef ZFARM_PROTO_HTTP_ROUTER_H_
#define ZFARM_PROTO_HTTP_ROUTER_H_

// File: router.h
// Method + path -> handler, for HttpServer (http_server.h).
//
//   Router r;
//   r.Add("GET", "/v1/jobs/{id}", [](const Request& q) {
//     return Response::Json(200, Lookup(q.PathParam("id")));
//   });
//   r.Add("POST", "/v1/workers/{name}:drain", Drain);
//   r.Add("GET", "/ui/{file*}", Asset);                       // rest of the path
//   r.Add("POST", "/v1/images", Upload, {.max_body_bytes = 16 << 20});
//   r.AddAsync("POST", "/v1/wait", Wait, {.deadline = absl::Minutes(10)});
//
// Patterns are '/'-separated segments: a literal, "{name}" (one segment,
// which may carry a literal prefix/suffix: "{name}:drain"), or a last
// "{name*}" (one or more segments). The most specific route wins, segment by
// segment: literal, then {} with prefix/suffix, then {}, then {*}. A trailing
// '/' on the request path is ignored; parameters are percent-decoded.
//
// The server answers 404 NOT_FOUND (JSON) for a path no route matches, and
// 405 with an Allow header for a known path with another method. HEAD runs a
// GET route and drops the body.
//
// Routes are added before HttpServer::Start; Match is then thread-safe.

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "proto/http/message.h"
#include "proto/http/responder.h"

namespace zfarm::http {

struct RouteOptions {
  // Largest request body; 0 = the server's Options::max_body_bytes. Bigger
  // bodies get 413 before they are read.
  size_t max_body_bytes = 0;
  // Time for the whole request on this route (header and body, from its
  // first byte), say for large uploads; 0 = Options::request_timeout. The
  // header must still arrive within Options::request_timeout.
  absl::Duration request_timeout = absl::ZeroDuration();
  // Time from the complete request to the answer (or to the start of an event
  // stream); 0 = Options::handler_timeout. Past it the client gets 504
  // DEADLINE_EXCEEDED and the Responder is cancelled.
  absl::Duration deadline = absl::ZeroDuration();
};

class Router {
 public:
  // Runs on the server's handler pool; may block (within its deadline).
  using Handler = std::function<Response(const Request&)>;
  // Runs on the handler pool and answers through the Responder, now or later
  // from any thread; should return quickly.
  using AsyncHandler = std::function<void(const Request&, Responder)>;

  // A bad pattern (no leading '/', unbalanced braces, {*} not last, a
  // duplicate method+pattern) is a programming error: it is logged and the
  // route is not added; status() reports the first such error.
  Router& Add(const std::string& method, const std::string& pattern, Handler handler,
              RouteOptions options = {});
  Router& AddAsync(const std::string& method, const std::string& pattern, AsyncHandler handler,
                   RouteOptions options = {});
  absl::Status status() const { return status_; }
  // Every route added, as {method, pattern}: paths in the order first added,
  // methods sorted (say, to check an API description against what is served).
  std::vector<std::pair<std::string, std::string>> Routes() const;

  struct Route {
    std::string method;
    std::string pattern;
    AsyncHandler handler;
    RouteOptions options;
  };
  struct Match {
    const Route* route = nullptr;  // null: see allow
    std::map<std::string, std::string> params;
    // When route is null: the methods of the path's routes ("GET, HEAD, POST"),
    // empty for an unknown path. bad_path: a malformed %-escape.
    std::string allow;
    bool bad_path = false;
  };
  // `path` is the still-encoded request path without the query.
  Match Find(const std::string& method, const std::string& path) const;

 private:
  struct Segment;
  struct Entry;
  Router& AddRoute(Route route);

  std::vector<std::shared_ptr<Entry>> entries_;
  absl::Status status_;
};

}  // namespace zfarm::http

#endif  // ZFARM_PROTO_HTTP_ROUTER_H_
