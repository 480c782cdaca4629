#ifndef ZFARM_CLIENT_DEADLINE_H_
#define ZFARM_CLIENT_DEADLINE_H_

// File: deadline.h
// The value of `zfarm submit/batch --deadline`: a duration from now or a time.

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace zfarm::client {

// --deadline: a duration from `now` ("90s", "1h", "-5m") or an RFC 3339 time
// ("2026-12-03T20:00:00Z"). DEADLINE_EXCEEDED naming the flag when the time is
// not after `now` (the CLI exits 4, as for a deadline that passes while waiting);
// INVALID_ARGUMENT when `text` is neither form.
absl::StatusOr<absl::Time> ParseDeadlineFlag(absl::string_view text, absl::Time now);

}  // namespace zfarm::client

#endif  // ZFARM_CLIENT_DEADLINE_H_
