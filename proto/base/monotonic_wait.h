#ifndef ZFARM_PROTO_BASE_MONOTONIC_WAIT_H_
#define ZFARM_PROTO_BASE_MONOTONIC_WAIT_H_

// File: monotonic_wait.h
// Timed waits that a wall-clock step cannot stretch or cut short.
//
// Abseil 20220623's timed waits (Mutex::AwaitWithTimeout, Notification::
// WaitForNotificationWithTimeout, CondVar::WaitWithTimeout) sleep until an
// absolute CLOCK_REALTIME deadline: a backward step of the host clock (NTP,
// an operator, a VM resume) stretches them by the size of the step, a forward
// step cuts them short. These helpers measure the timeout on the monotonic
// clock and sleep in short relative slices (nanosleep) instead, so a waiter
// sees its condition within one slice (10 ms) of it becoming true.
//
//   // No lock: `done` is evaluated as is.
//   PollFor(absl::Seconds(5), [&] { return stop.HasBeenNotified(); });
//   // With a mutex: `mu` held on entry and on return, released while sleeping.
//   absl::MutexLock lock(&mu_);
//   if (!AwaitMonotonic(&mu_, absl::Condition(&idle), grace)) { ... timed out ... }
//
// Thread-safe.

#include <algorithm>
#include <chrono>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace zfarm::base {

inline constexpr absl::Duration kMonotonicWaitSlice = absl::Milliseconds(10);

// True as soon as done() is true; false after `timeout` (monotonic).
template <typename Done>
bool PollFor(absl::Duration timeout, Done done) {
  const auto end = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
  for (;;) {
    if (done()) return true;
    const auto now = std::chrono::steady_clock::now();
    if (now >= end) return false;
    absl::SleepFor(std::min(kMonotonicWaitSlice, absl::FromChrono(end - now)));
  }
}

// Mutex::AwaitWithTimeout measured on the monotonic clock: true when `cond`
// holds (under `mu`), false after `timeout`. An infinite timeout waits without
// polling (Mutex::Await: no deadline, nothing for a clock step to move).
inline bool AwaitMonotonic(absl::Mutex* mu, const absl::Condition& cond, absl::Duration timeout)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
  if (timeout == absl::InfiniteDuration()) {
    mu->Await(cond);
    return true;
  }
  const auto end = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
  for (;;) {
    if (cond.Eval()) return true;
    const auto now = std::chrono::steady_clock::now();
    if (now >= end) return false;
    mu->Unlock();
    absl::SleepFor(std::min(kMonotonicWaitSlice, absl::FromChrono(end - now)));
    mu->Lock();
  }
}

}  // namespace zfarm::base

#endif  // ZFARM_PROTO_BASE_MONOTONIC_WAIT_H_
