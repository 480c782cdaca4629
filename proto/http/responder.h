#ifndef ZFARM_PROTO_HTTP_RESPONDER_H_
#define ZFARM_PROTO_HTTP_RESPONDER_H_

// File: responder.h
// Answering a request later, from any thread, and streaming Server-Sent Events.
//
// An asynchronous route (Router::AddAsync) gets a Responder and may return at
// once; the answer goes out when some thread calls Finish():
//
//   router.AddAsync("POST", "/v1/wait", [q](const Request& req, Responder r) {
//     r.OnCancel([id = ...] { q->Forget(id); });   // client gone, deadline, stop
//     q->WhenDone(id, [r](std::string json) mutable { r.Finish(Response::Json(200, json)); });
//   });
//
// or streams events until it ends the stream:
//
//   EventStream s = r.StartEventStream();
//   s.Send("progress", R"({"step": 3})");   // false once the client is gone
//   s.End();
//
// Responder and EventStream are cheap copyable handles to one exchange. The
// first Finish() or StartEventStream() wins; later calls do nothing. When the
// last handle goes without an answer, the client gets 500 INTERNAL "handler
// did not answer"; a stream whose last handle goes is ended. After the client
// disconnected, the route's deadline passed (the client got 504) or the server
// stopped, every call is a no-op and cancelled() is true. Thread-safe.

#include <functional>
#include <memory>

#include "absl/strings/string_view.h"
#include "proto/http/message.h"

namespace zfarm::http {

namespace internal {
// One request/answer on a connection; implemented by the server.
class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual void Finish(Response response) = 0;
  // Sends the 200 header of a text/event-stream; false when already answered.
  virtual bool StartStream(Headers headers) = 0;
  // Queues stream bytes; false once the stream is closed.
  virtual bool Write(std::string bytes) = 0;
  virtual void End() = 0;
  virtual bool cancelled() const = 0;
  virtual void OnCancel(std::function<void()> callback) = 0;
};
// Held only by Responder/EventStream handles: its destructor answers 500 or
// ends the stream.
struct ExchangeToken {
  explicit ExchangeToken(std::shared_ptr<Exchange> x) : exchange(std::move(x)) {}
  ~ExchangeToken();
  std::shared_ptr<Exchange> exchange;
};
}  // namespace internal

class EventStream {
 public:
  // One event: "event: <event>" (when not empty), "id: <id>" (when not empty),
  // a "data: " line per line of `data`, then a blank line. False when the
  // stream is closed (client gone, ended, server stopping) or the client is
  // so slow that over Options::max_stream_buffer_bytes are waiting (the
  // connection is then closed).
  bool Send(absl::string_view event, absl::string_view data, absl::string_view id = {});
  // ": <text>" - a comment clients ignore. The server itself sends
  // ": keep-alive" after Options::stream_keep_alive without traffic.
  bool Comment(absl::string_view text);
  // Ends the stream (last chunk); the connection may carry further requests.
  void End();
  bool closed() const;
  // Runs once when the stream closes for any reason other than End(), on a
  // server thread (at once when already closed). Must not block.
  void OnClose(std::function<void()> callback);

 private:
  friend class Responder;
  explicit EventStream(std::shared_ptr<internal::ExchangeToken> t) : token_(std::move(t)) {}
  std::shared_ptr<internal::ExchangeToken> token_;
};

class Responder {
 public:
  explicit Responder(std::shared_ptr<internal::Exchange> exchange)
      : token_(std::make_shared<internal::ExchangeToken>(std::move(exchange))) {}

  // Sends `response` (once).
  void Finish(Response response) const;
  // Answers 200 text/event-stream (chunked, Cache-Control: no-store) with
  // `headers` added; the returned stream carries the events.
  EventStream StartEventStream(Headers headers = {}) const;
  // True once the client disconnected, the route's deadline passed or the
  // server is stopping: the answer would go nowhere.
  bool cancelled() const;
  // Runs `callback` once on cancellation (see cancelled()), on a server
  // thread, or at once when already cancelled. Must not block.
  void OnCancel(std::function<void()> callback) const;

 private:
  std::shared_ptr<internal::ExchangeToken> token_;
};

}  // namespace zfarm::http

#endif  // ZFARM_PROTO_HTTP_RESPONDER_H_
