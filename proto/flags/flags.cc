#include "proto/flags/flags.h"

#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"

namespace zfarm::flags {
namespace {

// Help(): flag names in a column this wide, texts wrapped at kHelpWidth.
constexpr size_t kNameColumn = 28;
constexpr size_t kHelpWidth = 100;

absl::Status NotA(absl::string_view name, absl::string_view value, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("--", name, ": '", value, "' is not ", what));
}

// Help()'s default of a number flag: none for zero.
template <typename T>
std::string NumberDefault(T value) {
  return value == 0 ? "" : absl::StrCat(value);
}

// Parses a number flag's value with `parse` into *out; the error names the flag and
// says what the value is not (`what`: "an integer").
template <typename T>
std::function<absl::Status(absl::string_view)> NumberSetter(std::string name, T* out,
                                                            bool (*parse)(absl::string_view, T*),
                                                            absl::string_view what) {
  return [name = std::move(name), out, parse, what](absl::string_view v) {
    if (!parse(v, out)) return NotA(name, v, what);
    return absl::OkStatus();
  };
}

// Appends `text` to *out, which ends in a line whose length is `column`: words
// fill lines up to kHelpWidth, continuation lines start at `indent`; a newline
// in `text` starts a new line.
void AppendWrapped(absl::string_view text, size_t column, size_t indent, std::string* out) {
  const std::string margin(indent, ' ');
  bool first_line = true;
  for (absl::string_view paragraph : absl::StrSplit(text, '\n')) {
    if (!first_line) {
      absl::StrAppend(out, "\n", margin);
      column = indent;
    }
    first_line = false;
    bool line_empty = true;
    for (absl::string_view word : absl::StrSplit(paragraph, ' ', absl::SkipEmpty())) {
      if (!line_empty && column + 1 + word.size() > kHelpWidth) {
        absl::StrAppend(out, "\n", margin);
        column = indent;
        line_empty = true;
      }
      if (!line_empty) {
        out->push_back(' ');
        ++column;
      }
      absl::StrAppend(out, word);
      column += word.size();
      line_empty = false;
    }
  }
  out->push_back('\n');
}

// "text" as a paragraph of Help(): exactly one newline at its end.
std::string Paragraph(absl::string_view text) {
  return absl::StrCat(absl::StripTrailingAsciiWhitespace(text), "\n");
}

}  // namespace

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

void FlagSet::Add(Flag flag) { flags_.push_back(std::move(flag)); }

FlagSet::Flag* FlagSet::Find(absl::string_view name) {
  std::string wanted(name);
  if (underscores_as_dashes_) absl::StrReplaceAll({{"_", "-"}}, &wanted);
  for (Flag& f : flags_) {
    if (f.name == wanted) return &f;
  }
  return nullptr;
}

void FlagSet::String(std::string name, std::string* out, std::string help, std::string value_name) {
  Add({std::move(name), std::move(value_name), std::move(help), *out, [out](absl::string_view v) {
         *out = std::string(v);
         return absl::OkStatus();
       }});
}

void FlagSet::Int(std::string name, int64_t* out, std::string help, std::string value_name) {
  Add({name, std::move(value_name), std::move(help), NumberDefault(*out),
       NumberSetter(name, out, &absl::SimpleAtoi<int64_t>, "an integer")});
}

void FlagSet::Int(std::string name, int32_t* out, std::string help, std::string value_name) {
  Add({name, std::move(value_name), std::move(help), NumberDefault(*out),
       [out, name](absl::string_view v) {
         // Parsed wide, so that a value out of range is told from one that is no number.
         int64_t wide = 0;
         if (!absl::SimpleAtoi(v, &wide)) return NotA(name, v, "an integer");
         if (wide < std::numeric_limits<int32_t>::min() ||
             wide > std::numeric_limits<int32_t>::max()) {
           return absl::InvalidArgumentError(absl::StrCat(
               "--", name, ": ", v, " is outside [", std::numeric_limits<int32_t>::min(), ", ",
               std::numeric_limits<int32_t>::max(), "]"));
         }
         *out = static_cast<int32_t>(wide);
         return absl::OkStatus();
       }});
}

void FlagSet::Double(std::string name, double* out, std::string help, std::string value_name) {
  Add({name, std::move(value_name), std::move(help), NumberDefault(*out),
       NumberSetter(name, out, &absl::SimpleAtod, "a number")});
}

void FlagSet::Float(std::string name, float* out, std::string help, std::string value_name) {
  Add({name, std::move(value_name), std::move(help), NumberDefault(*out),
       NumberSetter(name, out, &absl::SimpleAtof, "a number")});
}

void FlagSet::Bool(std::string name, bool* out, std::string help) {
  Add({name, "", std::move(help), *out ? "true" : "", [out, name](absl::string_view v) {
         if (!absl::SimpleAtob(v, out)) return NotA(name, v, "true/false");
         return absl::OkStatus();
       }});
}

void FlagSet::Duration(std::string name, absl::Duration* out, std::string help) {
  Add({name, "DURATION", std::move(help),
       *out == absl::ZeroDuration() ? "" : absl::FormatDuration(*out),
       [out, name](absl::string_view v) {
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
  Add({std::move(name), std::move(value_name), std::move(help), "", [out](absl::string_view v) {
         out->emplace_back(v);
         return absl::OkStatus();
       }});
}

absl::StatusOr<std::vector<std::string>> FlagSet::Parse(const std::vector<std::string>& args,
                                                        bool* help_requested) {
  *help_requested = false;
  for (Flag& f : flags_) f.given = false;
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
    Flag* flag = Find(name);
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
    flag->given = true;
  }
  return positional;
}

bool FlagSet::Given(absl::string_view name) const {
  for (const Flag& f : flags_) {
    if (f.name == name) return f.given;
  }
  return false;
}

std::string FlagSet::Help() const {
  std::string out = absl::StrCat("usage: ", usage_, "\n");
  if (!description_.empty()) absl::StrAppend(&out, "\n", Paragraph(description_));
  absl::StrAppend(&out, "\nflags:\n");
  auto entry = [&out](absl::string_view left, absl::string_view help) {
    const std::string head = absl::StrFormat("  %-*s ", static_cast<int>(kNameColumn), left);
    out += head;
    AppendWrapped(help, head.size(), kNameColumn + 3, &out);
  };
  for (const Flag& f : flags_) {
    std::string left = absl::StrCat("--", f.name);
    if (!f.value_name.empty()) absl::StrAppend(&left, " ", f.value_name);
    std::string help = f.help;
    if (show_defaults_ && !f.default_text.empty()) {
      absl::StrAppend(&help, help.empty() ? "" : " ", "(default: ", f.default_text, ")");
    }
    entry(left, help);
  }
  entry("-h, --help", "show this help");
  if (!footer_.empty()) absl::StrAppend(&out, "\n", Paragraph(footer_));
  return out;
}

}  // namespace zfarm::flags
