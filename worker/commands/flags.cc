#include "worker/commands/flags.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace zfarm::worker {

std::optional<int> ParseCommandFlags(const char* command, flags::FlagSet& flags, int argc,
                                     char** argv, std::vector<std::string>* positional,
                                     size_t max_positional) {
  bool help = false;
  absl::StatusOr<std::vector<std::string>> args =
      flags.Parse(std::vector<std::string>(argv + std::min(argc, 1), argv + argc), &help);
  if (help) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  if (!args.ok()) return UsageError(command, flags, args.status().message());
  if (args->size() > max_positional) {
    return UsageError(command, flags,
                      absl::StrCat("unexpected argument '", (*args)[max_positional], "'"));
  }
  if (positional != nullptr) *positional = *std::move(args);
  return std::nullopt;
}

int UsageError(const char* command, const flags::FlagSet& flags, absl::string_view why) {
  std::fprintf(stderr, "zfarm-worker %s: %s\n%s", command, std::string(why).c_str(),
               flags.Help().c_str());
  return 2;
}

absl::StatusOr<LoraFlag> ParseLoraFlag(const std::string& value, const std::string& lora_dir) {
  LoraFlag l;
  l.path = value;
  if (const size_t colon = value.rfind(':'); colon != std::string::npos) {
    float scale = 0;
    if (absl::SimpleAtof(value.substr(colon + 1), &scale)) {
      l.path = value.substr(0, colon);
      l.scale = scale;
    }
  }
  struct stat st {};
  const bool is_file = ::stat(l.path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
  if (!is_file && !lora_dir.empty() && l.path.find('/') == std::string::npos) {
    l.path = absl::StrCat(lora_dir, "/", l.path, ".safetensors");
  } else if (!is_file) {
    return absl::InvalidArgumentError(absl::StrCat("--lora ", value, ": no such file"));
  }
  std::string stem = l.path.substr(l.path.rfind('/') + 1);
  if (absl::EndsWith(stem, ".safetensors")) stem.resize(stem.size() - 12);
  l.name = stem;
  return l;
}

absl::StatusOr<std::vector<std::string>> ReadPromptsFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::vector<std::string> prompts;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) prompts.push_back(line);
  }
  if (prompts.empty()) return absl::InvalidArgumentError(absl::StrCat(path, " has no prompts"));
  return prompts;
}

absl::StatusOr<std::pair<int, int>> ParseSize(const std::string& flag, const std::string& value) {
  std::vector<std::string> parts = absl::StrSplit(value, 'x');
  int w = 0, h = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &w) || !absl::SimpleAtoi(parts[1], &h) ||
      w <= 0 || h <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " '", value, "': expected WIDTHxHEIGHT, e.g. 1024x1024"));
  }
  return std::make_pair(w, h);
}

}  // namespace zfarm::worker
