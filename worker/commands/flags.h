#ifndef ZFARM_WORKER_COMMANDS_FLAGS_H_
#define ZFARM_WORKER_COMMANDS_FLAGS_H_

// The subcommands' own argv parsing: "--name value", "--name=value" and boolean
// "--flag" (or "--flag=false"). No globals, so every subcommand has exactly the
// flags its --help lists.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace zfarm::worker {

struct ParsedFlags {
  std::map<std::string, std::string> values;  // the last value of each flag
  std::map<std::string, std::vector<std::string>> all;  // every value, in order (repeatable flags)

  bool Has(const std::string& k) const { return values.count(k) > 0; }
  std::string Get(const std::string& k, const std::string& def = "") const {
    auto it = values.find(k);
    return it == values.end() ? def : it->second;
  }
  std::vector<std::string> GetAll(const std::string& k) const {
    auto it = all.find(k);
    return it == all.end() ? std::vector<std::string>() : it->second;
  }
  // A boolean flag: present and not "false"/"0".
  bool True(const std::string& k) const {
    auto it = values.find(k);
    return it != values.end() && it->second != "false" && it->second != "0";
  }
};

// INVALID_ARGUMENT naming the flag for unknown flags, positional arguments and
// value flags without a value.
absl::StatusOr<ParsedFlags> ParseFlags(int argc, char** argv,
                                       const std::vector<std::string>& bool_flags,
                                       const std::vector<std::string>& value_flags);

// ParseFlags for a subcommand, with the usual answers: --help prints `usage` on stdout
// (returns 0); an unknown flag or missing value prints "zfarm-worker COMMAND: why" and
// `usage` on stderr (returns 2); nullopt = parsed into *out, go on.
std::optional<int> ParseCommandFlags(const char* command, const char* usage, int argc, char** argv,
                                     const std::vector<std::string>& bool_flags,
                                     const std::vector<std::string>& value_flags, ParsedFlags* out);

// "--lora PATH[:SCALE]" (scale 1 when absent). A value that is not a file but a bare name
// resolves to LORA_DIR/NAME.safetensors when `lora_dir` is set. The name is the file's stem.
// INVALID_ARGUMENT naming the flag for a bad scale or a missing file.
struct LoraFlag {
  std::string name, path;
  float scale = 1.0f;
};
absl::StatusOr<LoraFlag> ParseLoraFlag(const std::string& value, const std::string& lora_dir);

// The non-empty lines of a --prompts file (CR LF or LF). NOT_FOUND "cannot read PATH",
// INVALID_ARGUMENT "PATH has no prompts".
absl::StatusOr<std::vector<std::string>> ReadPromptsFile(const std::string& path);

// "WxH" -> {W, H}; INVALID_ARGUMENT naming `flag` otherwise.
absl::StatusOr<std::pair<int, int>> ParseSize(const std::string& flag, const std::string& value);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_COMMANDS_FLAGS_H_
