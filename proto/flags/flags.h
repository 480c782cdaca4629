#ifndef ZFARM_PROTO_FLAGS_FLAGS_H_
#define ZFARM_PROTO_FLAGS_FLAGS_H_

// File: flags.h
// The flag parser of zfarm's three binaries: every `zfarm` and `zfarm-worker`
// subcommand and `zfarm-scheduler` owns one FlagSet and parses only its own
// argv, so a command has exactly the flags its --help lists (absl::flags is
// process-global: every flag of the binary in one namespace). Depends on absl
// only: no gRPC, no contract, no torch.
//
// Accepted forms: `--name=value`, `--name value`, `--bool`, `--bool=false`,
// and `--` to end flags. Everything else that does not start with `-` is a
// positional argument, returned in order. `-h` and `--help` ask for help.
// Unknown flags, single-dash flags, missing and malformed values are errors
// (INVALID_ARGUMENT naming the flag). A flag given twice keeps its last value,
// except Repeated(), which appends every value.
//
// Example:
//   FlagSet flags("zfarm status JOB");
//   bool json = false;
//   flags.Bool("json", &json, "one JSON object per line");
//   bool help = false;
//   ZFARM_ASSIGN_OR_RETURN(std::vector<std::string> args, flags.Parse(argv, &help));
//   if (help) std::cout << flags.Help();
//
// The value a bound variable holds when it is defined is its default (shown by
// Help() with set_show_defaults()); Parse() only assigns the flags it is
// given. Not thread-safe; the bound variables must outlive Parse().

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace zfarm::flags {

class FlagSet {
 public:
  // `usage` is the synopsis after "usage: ", e.g. "zfarm status JOB [flags]".
  explicit FlagSet(std::string usage) : usage_(std::move(usage)) {}

  // How Help() reads; each is empty or off until set.
  // Printed as is (lines broken by the caller) between the usage line and the
  // flag list: what the command does.
  void set_description(std::string text) { description_ = std::move(text); }
  // Printed as is after the flag list: exit status, examples, notes.
  void set_footer(std::string text) { footer_ = std::move(text); }
  // Help() ends each flag's text with "(default: V)" when its variable held a
  // non-zero, non-empty value when the flag was defined.
  void set_show_defaults(bool on) { show_defaults_ = on; }
  // `_` may stand for `-` in a flag's name: --state_dir is --state-dir.
  void set_underscores_as_dashes(bool on) { underscores_as_dashes_ = on; }

  // Defines --name bound to *out. `help` is one sentence or more (Help() wraps
  // it); `value_name` names the value in Help() ("--out FILE").
  void String(std::string name, std::string* out, std::string help,
              std::string value_name = "TEXT");
  // Integers; a value outside the type's range is an error naming the flag.
  void Int(std::string name, int64_t* out, std::string help, std::string value_name = "N");
  void Int(std::string name, int32_t* out, std::string help, std::string value_name = "N");
  void Double(std::string name, double* out, std::string help, std::string value_name = "X");
  void Float(std::string name, float* out, std::string help, std::string value_name = "X");
  // --name sets true; --name=VALUE takes true/false, yes/no, 1/0.
  void Bool(std::string name, bool* out, std::string help);
  // Durations (ParseDurationFlag): "90s", "5m", "1h30m" or plain seconds ("30").
  void Duration(std::string name, absl::Duration* out, std::string help);
  // May be given several times; each value is appended.
  void Repeated(std::string name, std::vector<std::string>* out, std::string help,
                std::string value_name = "VALUE");

  // Parses `args` (without the program and subcommand names). Returns the
  // positional arguments. Sets *help_requested when -h/--help is present (the
  // other arguments are still parsed). INVALID_ARGUMENT naming the flag for an
  // unknown flag, a missing value or a value of the wrong type; the variables
  // of the flags before it are already assigned.
  absl::StatusOr<std::vector<std::string>> Parse(const std::vector<std::string>& args,
                                                 bool* help_requested);

  // Whether the last Parse() was given --name (for a flag whose absence means
  // something else than its default, e.g. "random seed"). False for a name
  // that is not defined.
  bool Given(absl::string_view name) const;

  const std::string& usage() const { return usage_; }
  // "usage: ..." with the description, one entry per flag (wrapped at 100
  // columns) and the footer.
  std::string Help() const;

 private:
  struct Flag {
    std::string name;
    std::string value_name;  // empty for booleans
    std::string help;
    std::string default_text;  // empty: none to show
    std::function<absl::Status(absl::string_view)> set;
    bool given = false;
  };
  void Add(Flag flag);
  Flag* Find(absl::string_view name);

  std::string usage_;
  std::string description_, footer_;
  bool show_defaults_ = false;
  bool underscores_as_dashes_ = false;
  std::vector<Flag> flags_;
};

// Parses "90s", "5m", "1h30m", "250ms" or a plain number of seconds.
// INVALID_ARGUMENT for anything else and for negative durations.
absl::StatusOr<absl::Duration> ParseDurationFlag(absl::string_view text);

}  // namespace zfarm::flags

#endif  // ZFARM_PROTO_FLAGS_FLAGS_H_
