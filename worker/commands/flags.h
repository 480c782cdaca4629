#ifndef ZFARM_WORKER_COMMANDS_FLAGS_H_
#define ZFARM_WORKER_COMMANDS_FLAGS_H_

// The subcommands' flag handling over zfarm::flags::FlagSet (proto/flags/flags.h):
// every subcommand defines its own typed flags, so each has exactly the flags its
// --help lists; and the value parsers several subcommands share.

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/flags/flags.h"

namespace zfarm::worker {

// Parses a subcommand's arguments (argv[0] is the subcommand's name) into the
// variables `flags` binds, with the answers every subcommand gives: --help
// prints flags.Help() on stdout (returns 0); an unknown flag, a missing or bad
// value, or more than `max_positional` positional arguments print
// "zfarm-worker COMMAND: why" and the help on stderr (returns 2); nullopt =
// parsed, go on. The positional arguments go to *positional when given.
std::optional<int> ParseCommandFlags(const char* command, flags::FlagSet& flags, int argc,
                                     char** argv, std::vector<std::string>* positional = nullptr,
                                     size_t max_positional = 0);

// A usage error found after parsing (a required flag missing, values that do not
// go together): "zfarm-worker COMMAND: why" and the help on stderr. Returns 2.
int UsageError(const char* command, const flags::FlagSet& flags, absl::string_view why);

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
