#ifndef ZFARM_TESTS_TESTING_SUBPROCESS_H_
#define ZFARM_TESTS_TESTING_SUBPROCESS_H_

// A child process for end-to-end tests: argv exec'd with stdout+stderr to a log
// file; wait for a line in the log, signal it, reap it. The destructor kills a
// child that is still running. RunCommand() runs a shell command to completion.
//
//   Subprocess s({bin, "--listen=127.0.0.1:0"}, dir + "/sched.log");
//   std::string line = s.WaitForLine("listening on ", absl::Seconds(20));
//   int status = s.Stop(SIGTERM);  // waitpid status
//   CommandResult r = RunCommand(cli + " list 2>&1");  // r.exit_code, r.out
//
// Not thread-safe.

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace zfarm::testing {

struct CommandResult {
  int exit_code = -1;  // -1 when it did not exit normally (or could not start)
  std::string out;     // stdout (add 2>&1 to the command for stderr)
};

// Runs `cmd` with /bin/sh and waits for it.
inline CommandResult RunCommand(const std::string& cmd) {
  CommandResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = pclose(p);
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

class Subprocess {
 public:
  Subprocess(const std::vector<std::string>& argv, std::string log) : log_(std::move(log)) {
    pid_ = fork();
    if (pid_ == 0) {
      int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Subprocess() {
    if (pid_ > 0) Stop(SIGKILL);
  }
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& log() const { return log_; }
  std::string ReadLog() const {
    std::ifstream f(log_);
    return std::string((std::istreambuf_iterator<char>(f)), {});
  }

  // The first log line containing `needle` (from the needle on), or "" when the
  // process exits or `timeout` passes first.
  std::string WaitForLine(const std::string& needle, absl::Duration timeout) {
    const absl::Time end = absl::Now() + timeout;
    for (;;) {
      std::ifstream f(log_);
      for (std::string line; std::getline(f, line);) {
        auto p = line.find(needle);
        if (p != std::string::npos) return line.substr(p);
      }
      if (!Running() || absl::Now() > end) return "";
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

  bool Running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      status_ = status;
      return false;
    }
    return true;
  }

  // Waits for the child to exit by itself; its waitpid status, or -1 on timeout.
  int Wait(absl::Duration timeout) {
    const absl::Time end = absl::Now() + timeout;
    while (Running()) {
      if (absl::Now() > end) return -1;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return status_;
  }

  // Sends `sig` and reaps the child; its waitpid status.
  int Stop(int sig) {
    if (pid_ > 0) {
      kill(pid_, sig);
      int status = 0;
      waitpid(pid_, &status, 0);
      pid_ = -1;
      status_ = status;
    }
    return status_;
  }

  void Signal(int sig) {
    if (pid_ > 0) kill(pid_, sig);
  }

 private:
  std::string log_;
  pid_t pid_ = -1;
  int status_ = -1;
};

}  // namespace zfarm::testing

#endif  // ZFARM_TESTS_TESTING_SUBPROCESS_H_
