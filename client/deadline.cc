#include "client/deadline.h"

#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace zfarm::client {

absl::StatusOr<absl::Time> ParseDeadlineFlag(absl::string_view text, absl::Time now) {
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, std::string(text), &t, &err)) {
    absl::Duration d;
    double seconds = 0;
    if (absl::SimpleAtod(text, &seconds)) {
      d = absl::Seconds(seconds);
    } else if (!absl::ParseDuration(text, &d)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--deadline: '", text, "' is neither a duration (90s, 1h) nor an RFC 3339 time"));
    }
    t = now + d;
  }
  if (t <= now) {
    return absl::DeadlineExceededError(absl::StrCat(
        "--deadline ", text, ": ", absl::FormatTime(absl::RFC3339_sec, t, absl::UTCTimeZone()),
        " is already past; nothing was submitted"));
  }
  return t;
}

}  // namespace zfarm::client
