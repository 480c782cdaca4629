#ifndef ZFARM_PROTO_HTTP_MESSAGE_H_
#define ZFARM_PROTO_HTTP_MESSAGE_H_

// File: message.h
// The HTTP request and response of every zfarm HTTP port (proto/http/http_server.h),
// independent of the library that parses the wire format.
//
//   Response Hello(const Request& req) {
//     const std::string* name = req.Query("name");         // decoded ?name=...
//     return Response::Text(200, "hi " + (name ? *name : req.PathParam("id")));
//   }
//
// Header names compare case-insensitively; values are kept as received.

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace zfarm::http {

struct CaseInsensitiveLess {
  bool operator()(absl::string_view a, absl::string_view b) const;
};
// Header name -> value; a repeated header keeps each value (insertion order).
using Headers = std::multimap<std::string, std::string, CaseInsensitiveLess>;

struct Request {
  std::string method;  // "GET", "POST", ... (as sent, upper case by convention)
  std::string target;  // the request target as sent: "/v1/jobs?state=queued"
  std::string path;    // target without the query, still percent-encoded
  // Values of the route's {name} segments, percent-decoded (router.h).
  std::map<std::string, std::string> path_params;
  // The query string split at '&' and '=', '+' and %XX decoded, in order
  // (a key may repeat).
  std::vector<std::pair<std::string, std::string>> query;
  Headers headers;
  std::string body;
  std::string peer_ip;    // "127.0.0.1" or "::1"
  int peer_port = 0;
  bool tls = false;
  // Subject of the verified client certificate (mutual TLS), RFC 2253
  // ("CN=client,O=zfarm"); empty without one.
  std::string tls_peer_subject;

  // First value of a header, or nullptr.
  const std::string* Header(absl::string_view name) const;
  // First value of a query parameter, or nullptr.
  const std::string* Query(absl::string_view name) const;
  // A path parameter, or "" when the route has none by that name.
  const std::string& PathParam(absl::string_view name) const;
};

struct Response {
  int status = 200;
  Headers headers;  // Content-Length and Connection are set by the server
  std::string body;

  // `body` with Content-Type: application/json and Cache-Control: no-store.
  static Response Json(int status, std::string body);
  // JsonErrorBody(code_name, message) as application/json.
  static Response Error(int status, const std::string& code_name, const std::string& message);
  static Response Text(int status, std::string body,
                       absl::string_view content_type = "text/plain; charset=utf-8");
};

// {"code": "<grpc code name>", "message": "..."} + "\n", the error body of
// every zfarm HTTP port (invalid UTF-8 in the message is replaced).
std::string JsonErrorBody(const std::string& code_name, const std::string& message);

// Percent-decodes `in` ("%2F" -> "/"; with plus_is_space, '+' -> ' ').
// False on a malformed escape.
bool PercentDecode(absl::string_view in, bool plus_is_space, std::string* out);

}  // namespace zfarm::http

#endif  // ZFARM_PROTO_HTTP_MESSAGE_H_
