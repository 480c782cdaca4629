#ifndef ZFARM_SCHEDULER_CLOCK_H_
#define ZFARM_SCHEDULER_CLOCK_H_

// Injected time. Queue aging, lease/heartbeat expiry, deadlines and retention read
// the time only through a Clock, so tests drive them with a FakeClock
// (tests/testing/fake_clock.h) and never sleep.

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace zfarm::scheduler {

// Thread-safe source of the current time.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // The process-wide wall clock (never null, never deleted).
  static Clock* Real();
};

inline Clock* Clock::Real() {
  class RealClock final : public Clock {
   public:
    absl::Time Now() const override { return absl::Now(); }
  };
  static RealClock* clock = new RealClock;
  return clock;
}

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_CLOCK_H_
