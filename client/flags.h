#ifndef ZFARM_CLIENT_FLAGS_H_
#define ZFARM_CLIENT_FLAGS_H_

// File: flags.h
// A small per-subcommand flag parser. Each `zfarm` subcommand owns one
// FlagSet and parses only its own argv, so there are no global flags that can
// collide (absl::flags is process-global).
//
// Accepted forms: `--name=value`, `--name value`, `--bool`, `--bool=false`,
// and `--` to end flags. Everything else that does not start with `-` is a
// positional argument. Unknown flags and missing values are errors
// (INVALID_ARGUMENT naming the flag).
//
// Example:
//   FlagSet flags("zfarm status JOB");
//   bool json = false;
//   flags.Bool("json", &json, "one JSON object per line");
//   ZFARM_ASSIGN_OR_RETURN(std::vector<std::string> args, flags.Parse(argv));
//
// Not thread-safe; the bound variables must outlive Parse().

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace zfarm::client {

class FlagSet {
 public:
  explicit FlagSet(std::string usage) : usage_(std::move(usage)) {}

  void String(std::string name, std::string* out, std::string help,
              std::string value_name = "TEXT");
  void Int(std::string name, int64_t* out, std::string help);
  void Double(std::string name, double* out, std::string help);
  void Bool(std::string name, bool* out, std::string help);
  // Durations: "90s", "5m", "1h30m" or plain seconds ("30").
  void Duration(std::string name, absl::Duration* out, std::string help);
  // May be given several times; each value is appended.
  void Repeated(std::string name, std::vector<std::string>* out, std::string help,
                std::string value_name = "VALUE");

  // Parses `args` (without the program and subcommand names). Returns the
  // positional arguments. Sets *help_requested when -h/--help is present.
  absl::StatusOr<std::vector<std::string>> Parse(const std::vector<std::string>& args,
                                                 bool* help_requested);

  const std::string& usage() const { return usage_; }
  // "usage: ..." followed by one line per flag.
  std::string Help() const;

 private:
  struct Flag {
    std::string name;
    std::string value_name;  // empty for booleans
    std::string help;
    std::function<absl::Status(absl::string_view)> set;
  };
  void Add(Flag flag);

  std::string usage_;
  std::vector<Flag> flags_;
};

// Parses "90s", "5m", "1h30m", "250ms" or a plain number of seconds.
absl::StatusOr<absl::Duration> ParseDurationFlag(absl::string_view text);

// --deadline: a duration from `now` ("90s", "1h", "-5m") or an RFC 3339 time
// ("2026-12-03T20:00:00Z"). DEADLINE_EXCEEDED naming the flag when the time is
// not after `now` (the CLI exits 4, as for a deadline that passes while waiting);
// INVALID_ARGUMENT when `text` is neither form.
absl::StatusOr<absl::Time> ParseDeadlineFlag(absl::string_view text, absl::Time now);

}  // namespace zfarm::client

#endif  // ZFARM_CLIENT_FLAGS_H_
