#ifndef ZFARM_TESTS_TESTING_FARM_CHECKS_H_
#define ZFARM_TESTS_TESTING_FARM_CHECKS_H_

// What the real-process fault tests (scheduler kill, failover) check after a
// fault: every job through ListJobs, a fleet of FakeWorkers draining the queue
// (accepted commits per job), and the files under the output root (one final
// PNG per job holding that job's bytes, no temp file left).
//
//   std::map<std::string, int> accepted;
//   EXPECT_EQ(DrainQueue(fleet, out, &accepted), 0);    // errors
//   for (const v1::Job& j : AllJobs(*stub)) ...
//   EXPECT_EQ(CountOutputs(out), (OutputCount{n, 0}));

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "tests/testing/fake_worker.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::testing {

inline std::unique_ptr<grpc::ClientContext> DeadlineContext(int seconds = 20) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return c;
}

// FakeWorker options with a name and a capacity.
inline FakeWorker::Options WorkerOpts(const std::string& name, int capacity = 1) {
  FakeWorker::Options o;
  o.name = name;
  o.capacity = capacity;
  return o;
}

// Every job, all pages (a failed page is a test failure; what was read is returned).
inline std::vector<v1::Job> AllJobs(v1::JobService::Stub& stub) {
  std::vector<v1::Job> out;
  v1::ListJobsRequest r;
  r.set_page_size(500);
  for (;;) {
    v1::ListJobsResponse resp;
    grpc::Status s = stub.ListJobs(DeadlineContext().get(), r, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    if (!s.ok()) return out;
    out.insert(out.end(), resp.jobs().begin(), resp.jobs().end());
    if (resp.next_page_token().empty()) return out;
    r.set_page_token(resp.next_page_token());
  }
}

// Jobs by state, read until `running` of them are RUNNING (or 4 s passed).
inline std::map<v1::JobState, int> JobsByStateOnceRunning(v1::JobService::Stub& stub, int running) {
  std::map<v1::JobState, int> by_state;
  for (int tries = 0; tries < 200; ++tries) {
    by_state.clear();
    for (const v1::Job& j : AllJobs(stub)) ++by_state[j.state()];
    if (by_state[v1::JOB_STATE_RUNNING] == running) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return by_state;
}

// Each worker takes and finishes leases (FakeWorker::RunToSuccess) until none
// comes for 3 s; adds one to (*accepted)[job id] per accepted commit. Returns the
// leases that did not finish.
inline int DrainQueue(std::vector<std::unique_ptr<FakeWorker>>& fleet,
                      const std::string& output_root, std::map<std::string, int>* accepted) {
  absl::Mutex mu;
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (auto& w : fleet) {
    threads.emplace_back([&, w = w.get()] {
      for (;;) {
        auto lease = w->NextLease(absl::Seconds(3));
        if (!lease.ok()) return;  // queue drained
        if (!w->RunToSuccess(*lease, output_root).ok()) {
          ++errors;
          continue;
        }
        absl::MutexLock l(&mu);
        ++(*accepted)[lease->lease().job_id()];
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors.load();
}

struct OutputCount {
  int pngs = 0;
  int others = 0;  // temp files and anything else
  bool operator==(const OutputCount&) const = default;
};
inline std::ostream& operator<<(std::ostream& os, const OutputCount& c) {
  return os << c.pngs << " PNGs, " << c.others << " other files";
}

// The regular files under `root`; each PNG must hold its job's bytes (FakeWorker
// writes "\x89PNG...." + the file's stem).
inline OutputCount CountOutputs(const std::string& root) {
  OutputCount c;
  for (const auto& e : std::filesystem::recursive_directory_iterator(root)) {
    if (!e.is_regular_file()) continue;
    if (e.path().extension() == ".png") {
      ++c.pngs;
      std::ifstream f(e.path(), std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(f)), {});
      EXPECT_EQ(bytes.substr(8), e.path().stem().string()) << e.path();
    } else {
      ++c.others;
    }
  }
  return c;
}

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_FARM_CHECKS_H_
