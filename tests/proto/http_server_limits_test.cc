// zfarm::http::HttpServer under hostile or unusual clients, with a raw socket
// client: slow-drip connections do not stall others and are closed at their
// deadline, connection caps (per address and in all), body and header limits,
// 404/405 answers, answers from another thread, route deadlines, Server-Sent
// Events (events, keep-alive comments, end, client gone, a client that reads
// nothing), graceful stop, and
// the client certificate's subject under mutual TLS.
#include <httplib.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/http/http_server.h"
#include "tests/testing/raw_http.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_certs.h"

namespace zfarm::http {
namespace {

using ::testing::HasSubstr;
using ::zfarm::testing::Http;
using ::zfarm::testing::HttpResponse;
using ::zfarm::testing::RawConn;
using json = nlohmann::json;

constexpr char kGetHello[] = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";

Router HelloRouter() {
  Router r;
  r.Add("GET", "/hello", [](const Request&) { return Response::Text(200, "hi"); });
  r.Add("POST", "/echo", [](const Request& q) { return Response::Text(200, q.body); });
  return r;
}

// Polls `done` until true or `limit` passes (a wait, not a timing assertion).
template <class F>
bool Eventually(F done, absl::Duration limit = absl::Seconds(20)) {
  const absl::Time end = absl::Now() + limit;
  while (absl::Now() < end) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return done();
}

// Connections that send a request one byte every `period`, never finishing it,
// from a background thread - the attack that stalled cpp-httplib's pool.
class SlowDrip {
 public:
  SlowDrip(int port, int n, absl::Duration period) {
    for (int i = 0; i < n; ++i) conns_.push_back(std::make_unique<RawConn>(port));
    thread_ = std::thread([this, period] {
      const std::string drip = "GET /hello HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
      for (size_t i = 0; !stop_.HasBeenNotified(); ++i) {
        for (auto& c : conns_) c->Send(std::string(1, drip[std::min(i, drip.size() - 1)]));
        stop_.WaitForNotificationWithTimeout(period);
      }
    });
  }
  ~SlowDrip() { Stop(); }
  void Stop() {
    if (!stop_.HasBeenNotified()) stop_.Notify();
    if (thread_.joinable()) thread_.join();
  }
  std::vector<std::unique_ptr<RawConn>>& conns() { return conns_; }

 private:
  std::vector<std::unique_ptr<RawConn>> conns_;
  absl::Notification stop_;
  std::thread thread_;
};

TEST(HttpServerLimitsTest, SlowDripClientsDoNotStallANormalRequest) {
  HttpServer::Options o;
  o.handler_threads = 2;
  o.request_timeout = absl::Seconds(60);  // the drips stay open all test long
  ASSERT_OK_AND_ASSIGN(auto srv, HttpServer::Start(o, HelloRouter()));
  // Far more than the 8 threads the old server had, each dripping a byte well
  // inside any per-read timeout.
  SlowDrip drip(srv->port(), 40, absl::Milliseconds(200));
  ASSERT_TRUE(Eventually([&] { return srv->stats().open_connections >= 40; }));
  HttpResponse r = Http(srv->port(), "GET", "/hello");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "hi");
  EXPECT_EQ(srv->stats().timed_out_connections, 0);
}

TEST(HttpServerLimitsTest, SlowClientsAreClosedAtTheirRequestDeadline) {
  HttpServer::Options o;
  o.request_timeout = absl::Seconds(1);
  ASSERT_OK_AND_ASSIGN(auto srv, HttpServer::Start(o, HelloRouter()));
  const absl::Time start = absl::Now();
  SlowDrip drip(srv->port(), 12, absl::Milliseconds(100));  // never finishes a request
  RawConn silent(srv->port());                               // never sends a byte
  ASSERT_TRUE(silent.ok());
  EXPECT_TRUE(silent.WaitForEof());
  for (auto& c : drip.conns()) {
    EXPECT_TRUE(c->WaitForEof()) << "a slow connection was not closed";
    EXPECT_EQ(c->buffer(), "");  // closed without an answer
  }
  // Not before the deadline: the total counts, not each read.
  EXPECT_GE(absl::Now() - start, o.request_timeout);
  EXPECT_GE(srv->stats().timed_out_connections, 13);
  // The server still answers.
  EXPECT_EQ(Http(srv->port(), "GET", "/hello").status, 200);
}

TEST(HttpServerLimitsTest, PerAddressAndGlobalConnectionCaps) {
  HttpServer::Options o;
  o.max_connections_per_ip = 3;
  o.max_connections = 5;
  ASSERT_OK_AND_ASSIGN(auto srv, HttpServer::Start(o, HelloRouter()));
  std::vector<std::unique_ptr<RawConn>> mine;
  for (int i = 0; i < 3; ++i) {
    mine.push_back(std::make_unique<RawConn>(srv->port()));
    ASSERT_TRUE(mine.back()->Send(kGetHello));
    EXPECT_EQ(mine.back()->ReadResponse().status, 200);  // admitted, kept alive
  }
  RawConn fourth(srv->port());
  HttpResponse refused = fourth.ReadResponse();
  EXPECT_EQ(refused.status, 503);
  EXPECT_EQ(json::parse(refused.body)["code"], "UNAVAILABLE");
  EXPECT_TRUE(fourth.WaitForEof());

  // Another client address still gets in, up to the global cap.
  RawConn other1(srv->port(), "127.0.0.2"), other2(srv->port(), "127.0.0.3");
  for (RawConn* c : {&other1, &other2}) {
    ASSERT_TRUE(c->Send(kGetHello));
    EXPECT_EQ(c->ReadResponse().status, 200);
  }
  RawConn over_global(srv->port(), "127.0.0.4");
  EXPECT_EQ(over_global.ReadResponse().status, 503);
  EXPECT_GE(srv->stats().refused_connections, 2);

  // A freed slot is reusable.
  mine.pop_back();
  ASSERT_TRUE(Eventually([&] { return srv->stats().open_connections <= 4; }));
  RawConn again(srv->port());
  ASSERT_TRUE(again.Send(kGetHello));
  EXPECT_EQ(again.ReadResponse().status, 200);
}

TEST(HttpServerLimitsTest, NotFoundMethodNotAllowedAndMalformed) {
  ASSERT_OK_AND_ASSIGN(auto srv, HttpServer::Start({}, HelloRouter()));
  HttpResponse put = Http(srv->port(), "PUT", "/hello");
  EXPECT_EQ(put.status, 405);
  EXPECT_EQ(put.Header("Allow"), "GET, HEAD");
  EXPECT_EQ(json::parse(put.body)["code"], "INVALID_ARGUMENT");
  HttpResponse missing = Http(srv->port(), "GET", "/nope");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(json::parse(missing.body)["code"], "NOT_FOUND");
  EXPECT_THAT(json::parse(missing.body)["message"].get<std::string>(),
              HasSubstr("no route for GET /nope"));
  HttpResponse head = Http(srv->port(), "HEAD", "/hello");
  EXPECT_EQ(head.Header("Content-Length"), "2");

  for (const std::string bad : {
           "NOT HTTP AT ALL\r\n\r\n",
           // Request smuggling shapes: two lengths, a length beside chunked.
           "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
           "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
           "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       }) {
    RawConn garbage(srv->port());
    ASSERT_TRUE(garbage.Send(bad));
    EXPECT_EQ(garbage.ReadResponse().status, 400) << bad;
    EXPECT_TRUE(garbage.WaitForEof());
  }
}

TEST(HttpServerLimitsTest, BodyAndHeaderLimitsPerRoute) {
  HttpServer::Options o;
  o.max_body_bytes = 1 << 20;
  o.max_header_bytes = 4096;
  Router r = HelloRouter();
  r.Add("POST", "/big", [](const Request& q) { return Response::Text(200, absl::StrCat(q.body.size())); },
        {.max_body_bytes = 16 << 20});
  ASSERT_OK_AND_ASSIGN(auto srv, HttpServer::Start(o, std::move(r)));
  const std::string two_mib(2 << 20, 'x');
  HttpResponse too_big = Http(srv->port(), "POST", "/echo", two_mib);
  EXPECT_EQ(too_big.status, 413);
  EXPECT_THAT(json::parse(too_big.body)["message"].get<std::string>(),
              HasSubstr("body: over 1048576 bytes"));
  // A route with its own limit takes it, also with Expect: 100-continue.
  RawConn c(srv->port());
  ASSERT_TRUE(c.Send(absl::StrCat("POST /big HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n",
                                  "Content-Length: ", 12 << 20, "\r\n\r\n")));
  ASSERT_TRUE(c.ReadUntil("HTTP/1.1 100 Continue\r\n\r\n"));
  EXPECT_EQ(c.ReadResponse().status, 100);  // the interim response
  ASSERT_TRUE(c.Send(std::string(12 << 20, 'y')));
  HttpResponse big = c.ReadResponse();
  EXPECT_EQ(big.status, 200);
  EXPECT_EQ(big.body, absl::StrCat(12 << 20));

  // A slow upload: closed at the server's deadline, finished on a route with
  // a longer one.
  o.request_timeout = absl::Seconds(1);
  Router slow_router;
  slow_router.Add("POST", "/short", [](const Request&) { return Response::Text(200, "short"); });
  slow_router.Add("POST", "/upload", [](const Request& q) { return Response::Text(200, q.body); },
                  {.request_timeout = absl::Seconds(20)});
  ASSERT_OK_AND_ASSIGN(auto slow_srv, HttpServer::Start(o, std::move(slow_router)));
  for (const std::string path : {"/short", "/upload"}) {
    RawConn up(slow_srv->port());
    ASSERT_TRUE(up.Send(absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n")));
    // One byte per 100 ms: at least 2 s, twice the server's deadline (pacing,
    // not an assertion).
    for (int i = 0; i < 20 && up.Send("u"); ++i) absl::SleepFor(absl::Milliseconds(100));
    HttpResponse got = up.ReadResponse();
    if (path == "/short") {
      EXPECT_EQ(got.status, 0);  // closed without an answer
      EXPECT_TRUE(up.eof());
    } else {
      EXPECT_EQ(got.status, 200);
      EXPECT_EQ(got.body, std::string(20, 'u'));
    }
  }

  HttpResponse fat_header =
      Http(srv->port(), "GET", "/hello", "", absl::StrCat("X-Fat: ", std::string(8000, 'h'), "\r\n"));
  EXPECT_EQ(fat_header.status, 431);
}

TEST(HttpServerLimitsTest, AsyncHandlerAnswersFromAnotherThreadWithoutPinningThePool) {
  HttpServer::Options o;
  o.handler_threads = 1;
  absl::Notification release;
  std::vector<std::thread> workers;
  absl::Mutex mu;
  Router r = HelloRouter();
  r.AddAsync("GET", "/wait/{id}", [&](const Request& q, Responder resp) {
    absl::MutexLock l(&mu);
    workers.emplace_back([&release, resp, id = q.PathParam("id")] {
      release.WaitForNotification();
      resp.Finish(Response::Text(200, "done " + id));
    });
  });
  ASSERT_OK_AND_ASSIGN(auto srv, HttpServer::Start(o, std::move(r)));
  RawConn waiting1(srv->port()), waiting2(srv->port());
  ASSERT_TRUE(waiting1.Send("GET /wait/a HTTP/1.1\r\nHost: t\r\n\r\n"));
  ASSERT_TRUE(waiting2.Send("GET /wait/b HTTP/1.1\r\nHost: t\r\n\r\n"));
  // Two requests wait and the only handler thread is free for others.
  EXPECT_EQ(Http(srv->port(), "GET", "/hello").status, 200);
  release.Notify();
  HttpResponse a = waiting1.ReadResponse(), b = waiting2.ReadResponse();
  EXPECT_EQ(a.status, 200);
  EXPECT_EQ(a.body, "done a");
  EXPECT_EQ(b.body, "done b");
  absl::MutexLock l(&mu);
  for (auto& t : workers) t.join();
}

TEST(HttpServerLimitsTest, RouteDeadline504DroppedResponder500AndThrowingHandler500) {
  std::atomic<int> cancelled{0};
  std::vector<Responder> kept;
  absl::Mutex mu;
  Router r;
  r.AddAsync(
      "GET", "/never",
      [&](const Request&, Responder resp) {
        resp.OnCancel([&] { ++cancelled; });
        absl::MutexLock l(&mu);
        kept.push_back(resp);  // never answered
      },
      {.deadline = absl::Milliseconds(200)});
  r.AddAsync("GET", "/dropped", [](const Request&, Responder) {});  // forgets to answer
  r.Add("GET", "/throws", [](const Request&) -> Response { throw std::runtime_error("bad json"); });
  ASSERT_OK_AND_ASSIGN(auto srv, HttpServer::Start({}, std::move(r)));
  HttpResponse late = Http(srv->port(), "GET", "/never");
  EXPECT_EQ(late.status, 504);
  EXPECT_EQ(json::parse(late.body)["code"], "DEADLINE_EXCEEDED");
  EXPECT_EQ(cancelled.load(), 1);
  {
    absl::MutexLock l(&mu);
    ASSERT_EQ(kept.size(), 1u);
    EXPECT_TRUE(kept[0].cancelled());
    kept[0].Finish(Response::Text(200, "too late"));  // a no-op
  }
  HttpResponse dropped = Http(srv->port(), "GET", "/dropped");
  EXPECT_EQ(dropped.status, 500);
  EXPECT_THAT(dropped.body, HasSubstr("handler did not answer"));
  HttpResponse thrown = Http(srv->port(), "GET", "/throws");
  EXPECT_EQ(thrown.status, 500);
  EXPECT_EQ(json::parse(thrown.body)["code"], "INTERNAL");
}

TEST(HttpServerLimitsTest, EventStreamDeliversEventsKeepAlivesAndEnds) {
  HttpServer::Options o;
  o.stream_keep_alive = absl::Milliseconds(50);
  absl::Notification go;
  std::vector<std::thread> writers;
  absl::Mutex mu;
  Router r = HelloRouter();
  r.AddAsync("GET", "/events", [&](const Request&, Responder resp) {
    EventStream s = resp.StartEventStream({{"X-Run", "1"}});
    absl::MutexLock l(&mu);
    writers.emplace_back([&go, s]() mutable {
      go.WaitForNotification();
      EXPECT_TRUE(s.Send("progress", "{\"step\": 1}", "1"));
      EXPECT_TRUE(s.Send("progress", "line one\nline two"));
      EXPECT_TRUE(s.Comment("note"));
      s.End();
      EXPECT_TRUE(s.closed());
      EXPECT_FALSE(s.Send("late", "x"));
    });
  });
  ASSERT_OK_AND_ASSIGN(auto srv, HttpServer::Start(o, std::move(r)));
  RawConn c(srv->port());
  ASSERT_TRUE(c.Send("GET /events HTTP/1.1\r\nHost: t\r\n\r\n"));
  ASSERT_TRUE(c.ReadUntil(": keep-alive\n\n"));  // idle stream: the server's comment
  EXPECT_THAT(c.buffer(), HasSubstr("Content-Type: text/event-stream"));
  EXPECT_THAT(c.buffer(), HasSubstr("X-Run: 1"));
  go.Notify();
  HttpResponse stream = c.ReadResponse();  // to the last chunk
  EXPECT_EQ(stream.status, 200);
  EXPECT_THAT(stream.body, HasSubstr("event: progress\nid: 1\ndata: {\"step\": 1}\n\n"));
  EXPECT_THAT(stream.body, HasSubstr("event: progress\ndata: line one\ndata: line two\n\n"));
  EXPECT_THAT(stream.body, HasSubstr(": note\n\n"));
  EXPECT_THAT(stream.body, ::testing::Not(HasSubstr("late")));
  // The connection carries the next request.
  ASSERT_TRUE(c.Send(kGetHello));
  EXPECT_EQ(c.ReadResponse().body, "hi");
  absl::MutexLock l(&mu);
  for (auto& t : writers) t.join();
}

TEST(HttpServerLimitsTest, EventStreamNoticesAGoneClientAndStopEndsStreams) {
  absl::Notification closed;
  std::vector<EventStream> streams;
  absl::Mutex mu;
  Router r;
  r.AddAsync("GET", "/events", [&](const Request&, Responder resp) {
    EventStream s = resp.StartEventStream();
    s.OnClose([&closed] {
      if (!closed.HasBeenNotified()) closed.Notify();
    });
    absl::MutexLock l(&mu);
    streams.push_back(s);
  });
  ASSERT_OK_AND_ASSIGN(auto srv, HttpServer::Start({}, std::move(r)));
  {
    RawConn c(srv->port());
    ASSERT_TRUE(c.Send("GET /events HTTP/1.1\r\nHost: t\r\n\r\n"));
    ASSERT_TRUE(c.ReadUntil("text/event-stream"));
  }  // the client goes away
  ASSERT_TRUE(closed.WaitForNotificationWithTimeout(absl::Seconds(20)));
  {
    absl::MutexLock l(&mu);
    EXPECT_TRUE(streams[0].closed());
    EXPECT_FALSE(streams[0].Send("e", "nobody listens"));
  }
  // Stop ends an open stream with its last chunk and closes the connection.
  RawConn open(srv->port());
  ASSERT_TRUE(open.Send("GET /events HTTP/1.1\r\nHost: t\r\n\r\n"));
  ASSERT_TRUE(open.ReadUntil("\r\n\r\n"));
  srv->Stop(absl::Seconds(5));
  EXPECT_TRUE(open.WaitForEof());
  EXPECT_TRUE(absl::EndsWith(open.buffer(), "0\r\n\r\n")) << open.buffer();
}

TEST(HttpServerLimitsTest, AStreamClientThatReadsNothingIsCutOffAtTheBufferLimit) {
  HttpServer::Options o;
  o.max_stream_buffer_bytes = 256 << 10;
  absl::Notification closed;
  std::atomic<int> sent{0};
  std::atomic<bool> refused{false};
  std::vector<std::thread> writers;
  absl::Mutex mu;
  Router r;
  r.AddAsync("GET", "/events", [&](const Request&, Responder resp) {
    EventStream s = resp.StartEventStream();
    s.OnClose([&closed] { closed.Notify(); });
    absl::MutexLock l(&mu);
    writers.emplace_back([&, s]() mutable {
      const std::string chunk(64 << 10, 'e');
      // Bounded: the socket buffers fill after some MB at most.
      for (int i = 0; i < 100000 && !refused; ++i) {
        if (s.Send("big", chunk)) {
          ++sent;
        } else {
          refused = true;
        }
      }
    });
  });
  ASSERT_OK_AND_ASSIGN(auto srv, HttpServer::Start(o, std::move(r)));
  RawConn c(srv->port());
  ASSERT_TRUE(c.Send("GET /events HTTP/1.1\r\nHost: t\r\n\r\n"));  // and never reads
  EXPECT_TRUE(closed.WaitForNotificationWithTimeout(absl::Seconds(30)))
      << "sent " << sent << " refused " << refused;
  {
    absl::MutexLock l(&mu);
    for (auto& t : writers) t.join();
  }
  EXPECT_TRUE(refused);
  EXPECT_GT(sent.load(), 0);
  EXPECT_TRUE(c.WaitForEof());  // after whatever was already in the socket
}

TEST(HttpServerLimitsTest, MutualTlsShowsTheClientCertificateSubject) {
  const std::string d = std::filesystem::temp_directory_path() /
                        absl::StrCat("zfarm-http-limits-", getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  ASSERT_OK(zfarm::testing::MakeTestCertificates(d));
  HttpServer::Options o;
  o.request_timeout = absl::Seconds(1);
  o.tls = {d + "/server.pem", d + "/server.key", d + "/ca.pem"};
  Router r;
  r.Add("GET", "/whoami", [](const Request& q) {
    return Response::Text(200, absl::StrCat(q.tls ? "tls " : "plain ", q.tls_peer_subject));
  });
  ASSERT_OK_AND_ASSIGN(auto srv, HttpServer::Start(o, std::move(r)));
  httplib::SSLClient cli("127.0.0.1", srv->port(), d + "/client.pem", d + "/client.key");
  cli.set_ca_cert_path((d + "/ca.pem").c_str());
  cli.enable_server_certificate_verification(true);
  auto res = cli.Get("/whoami");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->body, "tls CN=client");
  // A TLS client that never starts its handshake is closed at the deadline.
  RawConn stuck(srv->port());
  ASSERT_TRUE(stuck.ok());
  EXPECT_TRUE(stuck.WaitForEof());
  EXPECT_EQ(srv->stats().timed_out_connections, 1);
  std::filesystem::remove_all(d);
}

}  // namespace
}  // namespace zfarm::http
