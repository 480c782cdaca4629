#ifndef ZFARM_TESTS_TESTING_NETNS_H_
#define ZFARM_TESTS_TESTING_NETNS_H_

// A network namespace for fault and offline tests, joined to the test's own
// namespace by a veth pair with addresses in a private /30 (10.231.x.y). Its only
// routes are that /30 and its own loopback: a process run in it reaches the
// test's namespace at root_ip() and nothing else (no default route). Needs root
// (CAP_SYS_ADMIN) and the `ip` binary (iproute2, deploy/install-deps.sh); Create()
// names what is missing. Names are unique per test process; the destructor
// removes the namespace and the link, also after a failed test.
//
//   ASSERT_OK_AND_ASSIGN(auto ns, VethNamespace::Create());
//   std::vector<std::string> argv = ns->ExecPrefix();   // ip netns exec NAME
//   argv.push_back(binary); ...                          // dials ns->root_ip()
//   ASSERT_OK(ns->SetLinkUp(false));                     // cut the link

#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "tests/testing/subprocess.h"

namespace zfarm::testing {

class VethNamespace {
 public:
  static absl::StatusOr<std::unique_ptr<VethNamespace>> Create() {
    if (RunCommand("command -v ip >/dev/null 2>&1").exit_code != 0) {
      return absl::FailedPreconditionError(
          "the `ip` binary (iproute2) is missing: install it (deploy/install-deps.sh)");
    }
    std::unique_ptr<VethNamespace> n(new VethNamespace);
    const int id = getpid() % 100000 + 100000 * (count_++ % 10);
    n->ns_ = absl::StrCat("zfarm-t", id);
    n->veth_root_ = absl::StrCat("zfa", id);  // interface names: at most 15 characters
    n->veth_ns_ = absl::StrCat("zfb", id);
    const int net = 4 * (id % 60);
    const std::string prefix = absl::StrCat("10.231.", (id / 60) % 250, ".");
    n->root_ip_ = absl::StrCat(prefix, net + 1);
    n->ns_ip_ = absl::StrCat(prefix, net + 2);
    CommandResult r = RunCommand("ip netns add " + n->ns_ + " 2>&1");
    if (r.exit_code != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot create a network namespace (needs root / CAP_SYS_ADMIN): ", r.out));
    }
    n->made_ = true;
    for (const std::string& cmd : {
             absl::StrCat("ip link add ", n->veth_root_, " type veth peer name ", n->veth_ns_,
                          " netns ", n->ns_),
             absl::StrCat("ip addr add ", n->root_ip_, "/30 dev ", n->veth_root_),
             absl::StrCat("ip link set ", n->veth_root_, " up"),
             absl::StrCat("ip netns exec ", n->ns_, " ip addr add ", n->ns_ip_, "/30 dev ",
                          n->veth_ns_),
             absl::StrCat("ip netns exec ", n->ns_, " ip link set ", n->veth_ns_, " up"),
             absl::StrCat("ip netns exec ", n->ns_, " ip link set lo up"),
         }) {
      r = RunCommand(cmd + " 2>&1");
      if (r.exit_code != 0) return absl::InternalError(absl::StrCat(cmd, ": ", r.out));
    }
    return n;
  }

  ~VethNamespace() {
    if (!made_) return;
    RunCommand("ip netns del " + ns_ + " 2>&1");
    RunCommand("ip link del " + veth_root_ + " 2>&1");  // normally gone with the namespace
  }
  VethNamespace(const VethNamespace&) = delete;
  VethNamespace& operator=(const VethNamespace&) = delete;

  const std::string& name() const { return ns_; }
  // The test namespace's end of the pair (bind servers here) and the namespace's.
  const std::string& root_ip() const { return root_ip_; }
  const std::string& ns_ip() const { return ns_ip_; }

  // argv prefix that runs a program inside the namespace (ip netns exec execs it
  // in place: the child's pid is the program's).
  std::vector<std::string> ExecPrefix() const { return {"/usr/sbin/ip", "netns", "exec", ns_}; }

  // Brings the test namespace's end of the pair up or down (a clean link cut:
  // packets in both directions are dropped, no RST).
  absl::Status SetLinkUp(bool up) const {
    CommandResult r =
        RunCommand(absl::StrCat("ip link set ", veth_root_, up ? " up" : " down", " 2>&1"));
    if (r.exit_code != 0) return absl::InternalError(r.out);
    return absl::OkStatus();
  }

 private:
  VethNamespace() = default;
  static inline int count_ = 0;
  std::string ns_, veth_root_, veth_ns_, root_ip_, ns_ip_;
  bool made_ = false;
};

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_NETNS_H_
