#ifndef ZFARM_TESTS_TESTING_FAKE_CLOCK_H_
#define ZFARM_TESTS_TESTING_FAKE_CLOCK_H_

// A manually advanced Clock for tests (thread-safe). Keeps a wall time (Now()) and
// a separate monotonic time (MonotonicNow()): Advance() moves both, as real time
// passing does; JumpWall() steps only the wall time, as an NTP step or an operator's
// `date -s` does.
//
//   FakeClock clock(absl::FromUnixSeconds(1'800'000'000));
//   Scheduler::Options o; ... Scheduler::Create(o, &clock);
//   clock.Advance(absl::Seconds(31));   // leases now expired
//   clock.JumpWall(absl::Hours(1));     // wall clock steps; no lease expires
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
  absl::Time MonotonicNow() const override {
    absl::MutexLock lock(&mu_);
    return mono_;
  }
  // Time passes: both clocks move by `d` (a negative `d` moves only the wall clock,
  // since monotonic time never goes backwards).
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
    if (d > absl::ZeroDuration()) mono_ += d;
  }
  // The wall clock steps by `d` (either sign); monotonic time does not move.
  void JumpWall(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  // Sets the wall clock; monotonic time does not move.
  void Set(absl::Time t) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  // Arbitrary epoch, deliberately far from now_ so that mixing the two shows.
  absl::Time mono_ ABSL_GUARDED_BY(mu_) = absl::UnixEpoch() + absl::Hours(1000);
};

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_FAKE_CLOCK_H_
