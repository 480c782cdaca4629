#ifndef ZFARM_CLIENT_CLI_H_
#define ZFARM_CLIENT_CLI_H_

// File: cli.h
// The `zfarm` command line: submit, batch, watch, status, get, cancel, list,
// workers, drain, health. main.cc only wires process streams and the
// environment into RunCli(), so tests run the very same code in-process.
//
// Exit codes (client/exit_codes.h): 0 ok, 1 a job failed, 2 usage,
// 3 scheduler unavailable, 4 timeout or deadline, 5 cancelled.
//
// Every RPC carries a deadline; UNAVAILABLE is retried with backoff and the
// same request ids until --timeout (or 30 s of continuous outage).

#include <functional>
#include <ostream>
#include <string>
#include <vector>

namespace zfarm::client {

struct CliIo {
  std::ostream* out = nullptr;
  std::ostream* err = nullptr;
  // When true (and --json is off), progress bars are drawn with '\r'.
  bool out_is_tty = false;
  // Environment lookup (ZFARM_SCHEDULER, ZFARM_OUTPUT_ROOT, BUILD_TAG);
  // returns nullptr when unset.
  std::function<const char*(const char*)> getenv;
};

// Runs one invocation. `args` excludes the program name: {"submit",
// "--prompt", "a cat", ...}. Returns the process exit code.
int RunCli(const std::vector<std::string>& args, const CliIo& io);

}  // namespace zfarm::client

#endif  // ZFARM_CLIENT_CLI_H_
