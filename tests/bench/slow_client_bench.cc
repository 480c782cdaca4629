// slow_client_bench: the REST port under slow and idle clients. Opens --slow
// connections that send a request one header line every --drip_period (never
// finishing it) and --idle connections that send nothing, spread over
// --sources loopback addresses (127.0.1.x); then times --requests normal
// requests (GET /v1/jobs?page_size=1, one connection each, client timeout
// --client_timeout) and reports when the server closed the slow and idle ones.
//
//   slow_client_bench [--slow=200] [--idle=200] [--requests=200]
//                     [--request_timeout=10s] [--drip_period=2s]
//   slow_client_bench --port=8080     # a running zfarm-scheduler --http-listen=127.0.0.1:8080
//
// Without --port it serves the REST gateway in process over a TestScheduler
// (default HTTP options, --request_timeout). Prints one line per measurement.
// Not a ctest test (see tests/bench/RESULTS.md "## REST gateway: slow clients").
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "glog/logging.h"
#include "scheduler/http/rest_gateway.h"
#include "tests/testing/raw_http.h"
#include "tests/testing/scheduler_fixture.h"

ABSL_FLAG(int, slow, 200, "Slow-drip connections");
ABSL_FLAG(int, idle, 200, "Idle connections (connect, send nothing)");
ABSL_FLAG(int, requests, 200, "Normal requests timed, one after another");
ABSL_FLAG(int, sources, 4, "Loopback source addresses the slow/idle connections spread over");
ABSL_FLAG(absl::Duration, drip_period, absl::Seconds(2), "One header line per slow connection per");
ABSL_FLAG(absl::Duration, request_timeout, absl::Seconds(10),
          "In-process server's request deadline (--http-request-timeout)");
ABSL_FLAG(absl::Duration, client_timeout, absl::Seconds(10), "A normal request gives up after");
ABSL_FLAG(absl::Duration, watch, absl::Seconds(30),
          "How long to wait for the server to close the slow/idle connections");
ABSL_FLAG(int, port, 0, "Target 127.0.0.1:PORT instead of the in-process gateway");

namespace {

using zfarm::testing::RawConn;

struct Held {
  std::unique_ptr<RawConn> conn;
  bool slow = false;
  absl::Time opened;
  absl::Time closed = absl::InfiniteFuture();
};

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  google::InitGoogleLogging(argv[0]);
  FLAGS_minloglevel = 1;
  // Two sockets per connection in this process (client and server side).
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);

  std::unique_ptr<zfarm::testing::TestScheduler> farm;
  std::unique_ptr<zfarm::scheduler::http::RestGateway> gateway;
  int port = absl::GetFlag(FLAGS_port);
  if (port == 0) {
    auto f = zfarm::testing::TestScheduler::Start();
    if (!f.ok()) {
      std::fprintf(stderr, "scheduler: %s\n", std::string(f.status().message()).c_str());
      return 1;
    }
    farm = *std::move(f);
    zfarm::scheduler::http::RestGateway::Options o;
    o.http.request_timeout = absl::GetFlag(FLAGS_request_timeout);
    auto g = zfarm::scheduler::http::RestGateway::Start(o, farm->channel());
    if (!g.ok()) {
      std::fprintf(stderr, "gateway: %s\n", std::string(g.status().message()).c_str());
      return 1;
    }
    gateway = *std::move(g);
    port = gateway->port();
  }

  const int nslow = absl::GetFlag(FLAGS_slow), nidle = absl::GetFlag(FLAGS_idle);
  const int sources = std::max(1, absl::GetFlag(FLAGS_sources));
  absl::Mutex mu;
  std::vector<Held> held;
  for (int i = 0; i < nslow + nidle; ++i) {
    Held h;
    h.slow = i < nslow;
    h.conn = std::make_unique<RawConn>(port, absl::StrCat("127.0.1.", 1 + i % sources));
    h.opened = absl::Now();
    if (!h.conn->ok()) {
      std::fprintf(stderr, "connect %d failed\n", i);
      return 1;
    }
    if (h.slow) h.conn->Send("GET /v1/jobs HTTP/1.1\r\n");
    held.push_back(std::move(h));
  }
  std::printf("open: %d slow-drip + %d idle connections from %d addresses to port %d\n", nslow,
              nidle, sources, port);

  absl::Notification stop;
  // Drips a header line into every slow connection still open.
  std::thread drip([&] {
    for (int line = 0; !stop.WaitForNotificationWithTimeout(absl::GetFlag(FLAGS_drip_period));
         ++line) {
      absl::MutexLock l(&mu);
      for (Held& h : held) {
        if (h.slow && h.closed == absl::InfiniteFuture()) {
          h.conn->Send(absl::StrCat("X-Drip-", line, ": x\r\n"));
        }
      }
    }
  });
  // Notes when the server closes each held connection.
  std::thread monitor([&] {
    while (!stop.HasBeenNotified()) {
      std::vector<pollfd> fds;
      std::vector<size_t> index;
      {
        absl::MutexLock l(&mu);
        for (size_t i = 0; i < held.size(); ++i) {
          if (held[i].closed != absl::InfiniteFuture()) continue;
          fds.push_back({held[i].conn->fd(), POLLIN, 0});
          index.push_back(i);
        }
      }
      if (fds.empty()) break;
      if (poll(fds.data(), fds.size(), 50) <= 0) continue;
      const absl::Time now = absl::Now();
      absl::MutexLock l(&mu);
      for (size_t k = 0; k < fds.size(); ++k) {
        if (fds[k].revents == 0) continue;
        char buf[4096];
        ssize_t n = recv(fds[k].fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n <= 0) held[index[k]].closed = now;  // EOF or reset (bytes first: ignored)
      }
    }
  });

  const std::string request =
      "GET /v1/jobs?page_size=1 HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
  std::vector<double> latencies;
  int failures = 0;
  for (int i = 0; i < absl::GetFlag(FLAGS_requests); ++i) {
    const absl::Time t0 = absl::Now();
    RawConn c(port, "", absl::GetFlag(FLAGS_client_timeout));
    c.Send(request);
    zfarm::testing::HttpResponse r = c.ReadResponse();
    const absl::Duration took = absl::Now() - t0;
    if (r.status != 200) {
      ++failures;
      if (failures <= 3) {
        std::printf("request %d: no 200 answer after %.0f ms (status %d)\n", i, Ms(took), r.status);
      }
      if (took >= absl::GetFlag(FLAGS_client_timeout) && failures >= 3) break;  // stalled port
      continue;
    }
    latencies.push_back(Ms(took));
  }
  std::printf("normal requests: %zu answered, %d failed; latency ms p50 %.2f p99 %.2f max %.2f\n",
              latencies.size(), failures, Percentile(latencies, 0.5), Percentile(latencies, 0.99),
              latencies.empty() ? 0.0 : *std::max_element(latencies.begin(), latencies.end()));

  // Wait (bounded) for the server to close the held connections.
  const absl::Time watch_end = absl::Now() + absl::GetFlag(FLAGS_watch);
  for (;;) {
    bool all = true;
    {
      absl::MutexLock l(&mu);
      for (const Held& h : held) all = all && h.closed != absl::InfiniteFuture();
    }
    if (all || absl::Now() > watch_end) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  stop.Notify();
  drip.join();
  monitor.join();
  for (bool slow : {true, false}) {
    std::vector<double> after;
    int open = 0;
    for (const Held& h : held) {
      if (h.slow != slow) continue;
      if (h.closed == absl::InfiniteFuture()) {
        ++open;
      } else {
        after.push_back(absl::ToDoubleSeconds(h.closed - h.opened));
      }
    }
    std::printf(
        "%s connections: %zu closed by the server, %d still open after the watch; closed after "
        "s: min %.2f median %.2f max %.2f\n",
        slow ? "slow-drip" : "idle", after.size(), open,
        after.empty() ? 0.0 : *std::min_element(after.begin(), after.end()),
        Percentile(after, 0.5),
        after.empty() ? 0.0 : *std::max_element(after.begin(), after.end()));
  }
  if (gateway != nullptr) {
    auto s = gateway->stats();
    std::printf("server: %lld timed out, %lld refused, %lld requests\n",
                static_cast<long long>(s.timed_out_connections),
                static_cast<long long>(s.refused_connections), static_cast<long long>(s.requests));
  }
  return failures == 0 ? 0 : 1;
}
