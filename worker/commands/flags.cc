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

absl::StatusOr<ParsedFlags> ParseFlags(int argc, char** argv,
                                       const std::vector<std::string>& bool_flags,
                                       const std::vector<std::string>& value_flags) {
  ParsedFlags f;
  auto known = [](const std::vector<std::string>& v, const std::string& k) {
    return std::find(v.begin(), v.end(), k) != v.end();
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "'"));
    }
    a = a.substr(2);
    std::string value;
    bool has_value = false;
    if (auto eq = a.find('='); eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_value = true;
    }
    if (known(bool_flags, a)) {
      f.values[a] = has_value ? value : "true";
      f.all[a].push_back(f.values[a]);
      continue;
    }
    if (!known(value_flags, a)) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", a));
    if (!has_value) {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", a, " needs a value"));
      value = argv[++i];
    }
    f.values[a] = value;
    f.all[a].push_back(value);
  }
  return f;
}

std::optional<int> ParseCommandFlags(const char* command, const char* usage, int argc, char** argv,
                                     const std::vector<std::string>& bool_flags,
                                     const std::vector<std::string>& value_flags,
                                     ParsedFlags* out) {
  absl::StatusOr<ParsedFlags> parsed = ParseFlags(argc, argv, bool_flags, value_flags);
  if (!parsed.ok()) {
    std::fprintf(stderr, "zfarm-worker %s: %s\n%s", command,
                 std::string(parsed.status().message()).c_str(), usage);
    return 2;
  }
  if (parsed->Has("help")) {
    std::fputs(usage, stdout);
    return 0;
  }
  *out = *std::move(parsed);
  return std::nullopt;
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
