#ifndef ZFARM_PROTO_BASE_SCHEDULER_ADDRESSES_H_
#define ZFARM_PROTO_BASE_SCHEDULER_ADDRESSES_H_

// The value of `--scheduler` (CLI, worker): one gRPC address or a comma-separated
// list of them, "a:50051,b:50051", for an active scheduler and its standbys. A
// standby answers UNAVAILABLE, so the caller tries the next address in turn.
//
//   absl::StatusOr<std::vector<std::string>> a =
//       ParseSchedulerAddresses("--scheduler", "sched-0:50051,sched-1:50051");

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace zfarm::base {

inline constexpr size_t kMaxSchedulerAddresses = 16;

// The addresses in order, blanks around commas removed. Refuses an empty entry, a
// repeated one, or more than kMaxSchedulerAddresses, naming `flag`.
inline absl::StatusOr<std::vector<std::string>> ParseSchedulerAddresses(absl::string_view flag,
                                                                        absl::string_view value) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(value, ',')) {
    std::string a(absl::StripAsciiWhitespace(part));
    if (a.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": \"", value, "\" has an empty address (expected HOST:PORT[,HOST:PORT...])"));
    }
    for (const std::string& seen : out) {
      if (seen == a) {
        return absl::InvalidArgumentError(
            absl::StrCat(flag, ": address ", a, " is listed twice"));
      }
    }
    out.push_back(std::move(a));
  }
  if (out.size() > kMaxSchedulerAddresses) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", out.size(),
                                                   " addresses exceeds the limit of ",
                                                   kMaxSchedulerAddresses));
  }
  return out;
}

}  // namespace zfarm::base

#endif  // ZFARM_PROTO_BASE_SCHEDULER_ADDRESSES_H_
