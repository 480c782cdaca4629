#include "proto/security/paths.h"

#include <limits.h>
#include <stdlib.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace zfarm::security {
namespace {

absl::StatusOr<std::string> RealPath(const std::string& p) {
  char buf[PATH_MAX];
  if (::realpath(p.c_str(), buf) == nullptr) {
    return absl::NotFoundError(absl::StrCat(p, " does not exist"));
  }
  return std::string(buf);
}

}  // namespace

absl::Status CheckRelativePath(absl::string_view what, absl::string_view relative) {
  if (relative.empty() || relative[0] == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", relative, "': must be relative to its root"));
  }
  for (absl::string_view part : absl::StrSplit(relative, '/')) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " '", relative, "': empty, '.' or '..' component"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ResolveBeneath(const std::string& root, const std::string& relative) {
  if (absl::Status s = CheckRelativePath("output path", relative); !s.ok()) return s;
  absl::StatusOr<std::string> real_root = RealPath(root);
  if (!real_root.ok()) return real_root.status();
  absl::StatusOr<std::string> real = RealPath(*real_root + "/" + relative);
  if (!real.ok()) {
    return absl::NotFoundError(
        absl::StrCat("output path '", relative, "' does not exist under the output root"));
  }
  const std::string prefix = *real_root == "/" ? "/" : *real_root + "/";
  if (real->compare(0, prefix.size(), prefix) != 0 || real->size() == prefix.size()) {
    return absl::PermissionDeniedError(
        absl::StrCat("output path '", relative, "' resolves outside the output root (symlink?)"));
  }
  return *std::move(real);
}

}  // namespace zfarm::security
