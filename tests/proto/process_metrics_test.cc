// The process metrics every /metrics page carries: values really come from
// /proc/self (touching memory raises RSS, opening files raises the fd count) and
// the names are the Prometheus client libraries' own.
#include "proto/http/process_metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "proto/base/version.h"

namespace zfarm::http {
namespace {

std::map<std::string, prometheus::MetricFamily> ByName() {
  std::map<std::string, prometheus::MetricFamily> m;
  for (prometheus::MetricFamily& f : ProcessMetricFamilies("zfarm-test")) m[f.name] = f;
  return m;
}

double Value(const prometheus::MetricFamily& f) {
  return f.type == prometheus::MetricType::Counter ? f.metric.at(0).counter.value
                                                   : f.metric.at(0).gauge.value;
}

TEST(ProcessMetricsTest, BuildInfoAndTheStandardNames) {
  auto m = ByName();
  for (const char* name : {"zfarm_build_info", "process_resident_memory_bytes",
                           "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                           "process_cpu_seconds_total", "process_start_time_seconds"}) {
    ASSERT_TRUE(m.count(name)) << name;
    EXPECT_EQ(m[name].metric.size(), 1u) << name;
  }
  const auto& info = m["zfarm_build_info"].metric.at(0);
  ASSERT_EQ(info.label.size(), 2u);
  EXPECT_EQ(info.label[0].name, "version");
  EXPECT_EQ(info.label[0].value, ZFARM_VERSION);
  EXPECT_EQ(info.label[1].value, "zfarm-test");
  EXPECT_EQ(Value(m["zfarm_build_info"]), 1);
  EXPECT_EQ(m["process_cpu_seconds_total"].type, prometheus::MetricType::Counter);
  // Started within the last day, not in the future.
  const double start = Value(m["process_start_time_seconds"]);
  EXPECT_LE(start, static_cast<double>(time(nullptr)) + 1);
  EXPECT_GT(start, static_cast<double>(time(nullptr)) - 86400);
  // The default label is the process's name (/proc/self/comm, at most 15 bytes).
  std::string comm(program_invocation_short_name);
  comm = comm.substr(0, 15);
  for (prometheus::MetricFamily& f : ProcessMetricFamilies()) {
    if (f.name == "zfarm_build_info") {
      EXPECT_EQ(f.metric.at(0).label[1].value, comm);
    }
  }
}

TEST(ProcessMetricsTest, ResidentMemoryAndOpenFdsFollowTheProcess) {
  const double rss0 = Value(ByName()["process_resident_memory_bytes"]);
  const double fds0 = Value(ByName()["process_open_fds"]);
  constexpr size_t kBytes = 64 << 20;
  std::unique_ptr<char[]> block(new char[kBytes]);
  std::memset(block.get(), 1, kBytes);  // touched, so resident
  std::vector<int> fds;
  for (int i = 0; i < 10; ++i) fds.push_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
  auto m = ByName();
  EXPECT_GE(Value(m["process_resident_memory_bytes"]) - rss0, 48.0 * (1 << 20));
  EXPECT_EQ(Value(m["process_open_fds"]) - fds0, 10);
  for (int fd : fds) close(fd);
  EXPECT_EQ(Value(ByName()["process_open_fds"]), fds0);
  volatile char keep = block[kBytes - 1];
  (void)keep;
}

}  // namespace
}  // namespace zfarm::http
