// The offline guarantee with the real binaries: `zfarm-worker serve` dials nothing
// but its --scheduler while it loads, warms up, renders a job and drains.
//
// Two layers, neither of which slows the worker down (strace did: under ptrace a
// CUDA worker never became SERVING within 60 s):
//   - the worker runs in its own network namespace (tests/testing/netns.h) whose
//     only route is a veth /30 to the scheduler: nothing else is reachable, even
//     by a raw syscall;
//   - an LD_PRELOAD logger (tests/testing/connect_logger.c) records every
//     connect()/sendto()/sendmsg() destination with its result; the set of inet
//     peers must be exactly the scheduler's address.
// A negative control runs the same setup on bash dialing two more addresses and
// checks both are logged (and, in the namespace, fail).
//
// On the GPU host: ZFARM_E2E_DEVICE=cuda:0 puts the worker on that device.
// Where network namespaces cannot be made (no `ip`, no CAP_SYS_ADMIN, some
// sandboxes), ZFARM_OFFLINE_NETNS=0 runs the logger layer alone on loopback;
// without it a missing namespace fails the test (it never skips).
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/testing/farm_processes.h"
#include "tests/testing/netns.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"

namespace zfarm {
namespace {

namespace v1 = ::zfarm::v1;
using ::zfarm::testing::Subprocess;
using ::zfarm::testing::VethNamespace;

// One logged attempt: "connect pid=1 family=AF_INET addr=1.2.3.4 port=5 result=ok".
struct Attempt {
  std::string call, family, addr, port, result;
  std::string Peer() const {
    std::string a = addr;
    if (a.rfind("::ffff:", 0) == 0) a = a.substr(7);  // IPv4-mapped IPv6
    return port.empty() ? absl::StrCat(family, ":", a) : absl::StrCat(a, ":", port);
  }
  bool Inet() const { return family == "AF_INET" || family == "AF_INET6"; }
};

std::vector<Attempt> ReadAttempts(const std::string& path) {
  std::vector<Attempt> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> words = absl::StrSplit(line, ' ');
    if (words.empty()) continue;
    Attempt a;
    a.call = words[0];
    for (const std::string& w : words) {
      std::pair<std::string, std::string> kv = absl::StrSplit(w, absl::MaxSplits('=', 1));
      if (kv.first == "family") a.family = kv.second;
      if (kv.first == "addr") a.addr = kv.second;
      if (kv.first == "port") a.port = kv.second;
      if (kv.first == "result") a.result = kv.second;
    }
    out.push_back(a);
  }
  return out;
}

std::set<std::string> InetPeers(const std::vector<Attempt>& attempts) {
  std::set<std::string> peers;
  for (const Attempt& a : attempts) {
    if (a.Inet()) peers.insert(a.Peer());
  }
  return peers;
}

std::string Describe(const std::vector<Attempt>& attempts) {
  std::map<std::string, int> n;
  for (const Attempt& a : attempts) ++n[absl::StrCat(a.call, " ", a.Peer(), " ", a.result)];
  std::string s;
  for (const auto& [k, c] : n) absl::StrAppend(&s, "\n  ", k, " x", c);
  return s;
}

class OfflineTest : public zfarm::testing::FarmProcessTest {
 protected:
  bool UseNetns() {
    const char* v = std::getenv("ZFARM_OFFLINE_NETNS");
    return v == nullptr || std::string(v) != "0";
  }
  // argv prefix: [ip netns exec NS] env LD_PRELOAD=logger ZFARM_CONNECT_LOG=log
  std::vector<std::string> Prefix(const std::string& log) {
    std::vector<std::string> p;
    if (ns_) p = ns_->ExecPrefix();
    for (const std::string& a : {std::string("/usr/bin/env"),
                                 std::string("LD_PRELOAD=") + ZFARM_CONNECT_LOGGER,
                                 "ZFARM_CONNECT_LOG=" + log}) {
      p.push_back(a);
    }
    return p;
  }
  std::unique_ptr<VethNamespace> ns_;
};

TEST_F(OfflineTest, TheWorkerDialsNothingButTheScheduler) {
  if (UseNetns()) {
    ASSERT_OK_AND_ASSIGN(ns_, VethNamespace::Create());
    listen_host_ = ns_->root_ip();  // the scheduler listens on the veth end only
    // The namespace's only route is the veth /30 (no default route).
    const std::string routes =
        zfarm::testing::RunCommand("ip -n " + ns_->name() + " route show 2>&1").out;
    EXPECT_EQ(routes.find("default"), std::string::npos) << routes;
    EXPECT_EQ(std::count(routes.begin(), routes.end(), '\n'), 1) << routes;
    EXPECT_NE(routes.find("/30 dev "), std::string::npos) << routes;
  }
  StartScheduler();
  if (HasFatalFailure()) return;
  const std::string log = dir() + "/connect.log";
  Subprocess* w = StartWorker("w1", {}, Prefix(log));
  ASSERT_EQ(WorkerState("w1"), v1::WORKER_STATE_READY) << w->ReadLog();
  v1::Job j = WaitFinal(Submit(2));
  EXPECT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED) << j.DebugString();
  const int s = w->Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(s) && WEXITSTATUS(s) == 0) << w->ReadLog();

  const std::vector<Attempt> attempts = ReadAttempts(log);
  std::cout << "worker's logged attempts (" << (ns_ ? "in a network namespace" : "loopback")
            << "):" << Describe(attempts) << std::endl;
  // The logger saw the worker's own scheduler connection (it is really loaded)...
  bool dialed = false;
  for (const Attempt& a : attempts) {
    dialed |= a.call == "connect" && a.Peer() == address_ &&
              (a.result == "ok" || a.result == "EINPROGRESS");
  }
  EXPECT_TRUE(dialed) << "no connect() to the scheduler logged:" << Describe(attempts);
  // ...and no other network peer, attempted or made. (AF_UNIX sockets are local
  // IPC, e.g. glibc's name-service cache; netlink talks to the kernel. Both are
  // listed on failure, not forbidden.)
  EXPECT_EQ(InetPeers(attempts), std::set<std::string>{address_})
      << "the worker tried to reach something other than the scheduler:" << Describe(attempts);
}

TEST_F(OfflineTest, NegativeControlAnotherPeerIsLoggedAndUnreachable) {
  if (UseNetns()) {
    ASSERT_OK_AND_ASSIGN(ns_, VethNamespace::Create());
    listen_host_ = ns_->root_ip();
  }
  StartScheduler();
  if (HasFatalFailure()) return;
  const std::string log = dir() + "/control.log";
  std::vector<std::string> argv = Prefix(log);
  // Dials the scheduler, then 127.0.0.1:1, then (in the namespace) 192.0.2.1:9.
  const std::string host = address_.substr(0, address_.rfind(':'));
  std::string script = absl::StrCat("exec 3<>/dev/tcp/", host, "/", port_,
                                    "; (exec 4<>/dev/tcp/127.0.0.1/1) 2>/dev/null");
  if (ns_) absl::StrAppend(&script, "; (exec 5<>/dev/tcp/192.0.2.1/9) 2>/dev/null");
  absl::StrAppend(&script, "; true");
  for (const std::string& a : {std::string("/bin/bash"), std::string("-c"), script}) {
    argv.push_back(a);
  }
  Subprocess control(argv, dir() + "/control.out");
  ASSERT_NE(control.Wait(absl::Seconds(30)), -1) << "the control process hung";
  const std::vector<Attempt> attempts = ReadAttempts(log);
  std::set<std::string> want = {address_, "127.0.0.1:1"};
  if (ns_) want.insert("192.0.2.1:9");
  EXPECT_EQ(InetPeers(attempts), want) << Describe(attempts) << control.ReadLog();
  EXPECT_NE(InetPeers(attempts), std::set<std::string>{address_});  // the check can fail
  for (const Attempt& a : attempts) {
    // (No route leads out of the namespace but the veth /30.)
    const std::map<std::string, std::string> expected = {
        {address_, "ok"}, {"127.0.0.1:1", "ECONNREFUSED"}, {"192.0.2.1:9", "ENETUNREACH"}};
    auto it = expected.find(a.Peer());
    if (it != expected.end()) {
      EXPECT_EQ(a.result, it->second) << a.Peer();
    }
  }
}

}  // namespace
}  // namespace zfarm
