#include "client/flags.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace zfarm::client {

absl::StatusOr<absl::Duration> ParseDurationFlag(absl::string_view text) {
  double seconds = 0;
  if (absl::SimpleAtod(text, &seconds)) {
    if (seconds < 0) return absl::InvalidArgumentError("negative duration");
    return absl::Seconds(seconds);
  }
  absl::Duration d;
  if (!absl::ParseDuration(text, &d) || d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad duration '", text, "' (use e.g. 90s, 5m, 1h30m)"));
  }
  return d;
}

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

void FlagSet::Add(Flag flag) { flags_.push_back(std::move(flag)); }

void FlagSet::String(std::string name, std::string* out, std::string help, std::string value_name) {
  Add({std::move(name), std::move(value_name), std::move(help), [out](absl::string_view v) {
         *out = std::string(v);
         return absl::OkStatus();
       }});
}

void FlagSet::Int(std::string name, int64_t* out, std::string help) {
  Add({name, "N", std::move(help), [out, name](absl::string_view v) {
         if (!absl::SimpleAtoi(v, out)) {
           return absl::InvalidArgumentError(
               absl::StrCat("--", name, ": '", v, "' is not an integer"));
         }
         return absl::OkStatus();
       }});
}

void FlagSet::Double(std::string name, double* out, std::string help) {
  Add({name, "X", std::move(help), [out, name](absl::string_view v) {
         if (!absl::SimpleAtod(v, out)) {
           return absl::InvalidArgumentError(
               absl::StrCat("--", name, ": '", v, "' is not a number"));
         }
         return absl::OkStatus();
       }});
}

void FlagSet::Bool(std::string name, bool* out, std::string help) {
  Add({name, "", std::move(help), [out, name](absl::string_view v) {
         if (!absl::SimpleAtob(v, out)) {
           return absl::InvalidArgumentError(
               absl::StrCat("--", name, ": '", v, "' is not true/false"));
         }
         return absl::OkStatus();
       }});
}

void FlagSet::Duration(std::string name, absl::Duration* out, std::string help) {
  Add({name, "DURATION", std::move(help), [out, name](absl::string_view v) {
         absl::StatusOr<absl::Duration> d = ParseDurationFlag(v);
         if (!d.ok()) {
           return absl::InvalidArgumentError(absl::StrCat("--", name, ": ", d.status().message()));
         }
         *out = *d;
         return absl::OkStatus();
       }});
}

void FlagSet::Repeated(std::string name, std::vector<std::string>* out, std::string help,
                       std::string value_name) {
  Add({std::move(name), std::move(value_name), std::move(help), [out](absl::string_view v) {
         out->emplace_back(v);
         return absl::OkStatus();
       }});
}

absl::StatusOr<std::vector<std::string>> FlagSet::Parse(const std::vector<std::string>& args,
                                                        bool* help_requested) {
  *help_requested = false;
  std::vector<std::string> positional;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      positional.insert(positional.end(), args.begin() + i + 1, args.end());
      break;
    }
    if (arg == "-h" || arg == "--help") {
      *help_requested = true;
      continue;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      positional.push_back(arg);
      continue;
    }
    if (arg[1] != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag '", arg, "' (flags are --long-form)"));
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    const Flag* flag = nullptr;
    for (const Flag& f : flags_) {
      if (f.name == name) flag = &f;
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '--", name, "'"));
    }
    if (!has_value) {
      if (flag->value_name.empty()) {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("flag '--", name, "' needs a value (", flag->value_name, ")"));
      }
    }
    if (absl::Status s = flag->set(value); !s.ok()) return s;
  }
  return positional;
}

std::string FlagSet::Help() const {
  std::string out = absl::StrCat("usage: ", usage_, "\n\nflags:\n");
  for (const Flag& f : flags_) {
    std::string left = absl::StrCat("--", f.name);
    if (!f.value_name.empty()) absl::StrAppend(&left, " ", f.value_name);
    absl::StrAppendFormat(&out, "  %-28s %s\n", left, f.help);
  }
  absl::StrAppendFormat(&out, "  %-28s %s\n", "-h, --help", "show this help");
  return out;
}

}  // namespace zfarm::client
