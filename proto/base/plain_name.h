#ifndef ZFARM_PROTO_BASE_PLAIN_NAME_H_
#define ZFARM_PROTO_BASE_PLAIN_NAME_H_

// The rule for names that become one file name under a folder the farm controls
// (JobSpec.output_name, LoRA names = <name>.safetensors in --lora-dir): at most
// `max_bytes` bytes, no '/', '\\', "..", or control characters. UTF-8 validity is
// the caller's check (the scheduler's IsValidUtf8).

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace zfarm::base {

inline constexpr size_t kMaxPlainNameBytes = 128;

// "" when `name` follows the rule, else the reason ("must not contain \"..\"").
inline std::string PlainNameProblem(std::string_view name, size_t max_bytes = kMaxPlainNameBytes) {
  if (name.size() > max_bytes) {
    return absl::StrCat(name.size(), " bytes exceeds the limit of ", max_bytes, " bytes");
  }
  for (unsigned char c : name) {
    if (c == '/' || c == '\\' || c < 0x20 || c == 0x7F) {
      return "must not contain '/', '\\' or control characters";
    }
  }
  if (name.find("..") != std::string_view::npos) return "must not contain \"..\"";
  return "";
}

}  // namespace zfarm::base

#endif  // ZFARM_PROTO_BASE_PLAIN_NAME_H_
