#ifndef ZFARM_SCHEDULER_CLOCK_H_
#define ZFARM_SCHEDULER_CLOCK_H_

// Injected time. Queue aging, lease/heartbeat expiry, deadlines and retention read
// the time only through a Clock, so tests drive them with a FakeClock
// (tests/testing/fake_clock.h) and never sleep.
//
// Two time lines: Now() is the wall clock (CLOCK_REALTIME; it can step forwards or
// backwards, e.g. under NTP) and is used only for timestamps shown to users or
// stored in the journal and for user-given absolute deadlines. MonotonicNow() never
// goes backwards and is unaffected by wall-clock steps; every in-process duration
// (worker silence / lease expiry, rate-limit refill, periodic-work intervals) is
// measured with it. Its epoch is arbitrary: compare MonotonicNow() values only with
// each other, never with Now().

#include <chrono>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace zfarm::scheduler {

// Thread-safe source of the current time.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  virtual absl::Time MonotonicNow() const = 0;

  // The process-wide wall clock (never null, never deleted).
  static Clock* Real();
};

inline Clock* Clock::Real() {
  class RealClock final : public Clock {
   public:
    absl::Time Now() const override { return absl::Now(); }
    absl::Time MonotonicNow() const override {
      return absl::UnixEpoch() +
             absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
    }
  };
  static RealClock* clock = new RealClock;
  return clock;
}

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_CLOCK_H_
