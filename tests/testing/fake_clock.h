#ifndef ZFARM_TESTS_TESTING_FAKE_CLOCK_H_
#define ZFARM_TESTS_TESTING_FAKE_CLOCK_H_

// A manually advanced Clock for tests (thread-safe).
//
//   FakeClock clock(absl::FromUnixSeconds(1'800'000'000));
//   Scheduler::Options o; ... Scheduler::Create(o, &clock);
//   clock.Advance(absl::Seconds(31));   // leases now expired
//   scheduler->Tick();

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "scheduler/clock.h"

namespace zfarm::testing {

class FakeClock final : public zfarm::scheduler::Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'800'000'000)) : now_(start) {}

  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  void Set(absl::Time t) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_FAKE_CLOCK_H_
