#ifndef ZFARM_TESTS_CLIENT_FAKE_SCHEDULER_H_
#define ZFARM_TESTS_CLIENT_FAKE_SCHEDULER_H_

// File: fake_scheduler.h
// An in-memory JobService + AdminService + grpc.health.v1 on loopback for the
// CLI tests (the real scheduler's fixture had not landed when these were
// written). Idempotent by request id, batches all-or-nothing, WatchJob(s)
// send the current state first then every change. Job state survives Stop()
// and Start() on the same port, like a scheduler restarted on its journal.
//
// Behaviour per prompt: a prompt containing "FAIL" ends FAILED, "CANCEL"
// ends CANCELLED, anything else SUCCEEDED with a small PNG-like file under
// output_root. With auto_complete=false, jobs stay QUEUED until
// CompleteAll().
//
// Thread-safe.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "grpcpp/server.h"
#include "zfarm/v1/admin_service.grpc.pb.h"
#include "zfarm/v1/job_service.grpc.pb.h"

namespace zfarm::testing {

class FakeScheduler {
 public:
  FakeScheduler(std::string output_root, bool auto_complete);
  ~FakeScheduler();

  // Starts serving on 127.0.0.1:`port` (0 = pick one; later Start() calls
  // reuse the first port). Returns the address.
  std::string Start(int port = 0);
  // Shuts the server down, cancelling open streams.
  void Stop();

  // Moves every non-final job to its final state.
  void CompleteAll();
  // Blocks until at least `n` jobs exist.
  void AwaitJobs(int n);

  int jobs_created() const;
  int submit_calls() const;
  std::vector<zfarm::v1::Job> jobs() const;
  std::string address() const { return address_; }

 private:
  class JobServiceImpl;
  class AdminServiceImpl;
  friend class JobServiceImpl;

  zfarm::v1::Job SubmitLocked(const zfarm::v1::SubmitJobRequest& req, const std::string& batch_id,
                              bool* created) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishLocked(zfarm::v1::Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string output_root_;
  const bool auto_complete_;
  int port_ = 0;
  std::string address_;
  std::unique_ptr<JobServiceImpl> job_service_;
  std::unique_ptr<AdminServiceImpl> admin_service_;
  std::unique_ptr<grpc::Server> server_;

  mutable absl::Mutex mu_;
  std::map<std::string, zfarm::v1::Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> order_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> by_request_ ABSL_GUARDED_BY(mu_);
  int64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  int created_ ABSL_GUARDED_BY(mu_) = 0;
  int submit_calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> drained_ ABSL_GUARDED_BY(mu_);
};

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_CLIENT_FAKE_SCHEDULER_H_
