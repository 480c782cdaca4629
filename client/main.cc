// zfarm: the command line client. All logic lives in client/cli.cc.
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "client/cli.h"
#include "glog/logging.h"

int main(int argc, char** argv) {
  // The CLI logs to stderr, warnings and worse, unless GLOG_* says otherwise
  // (GLOG_minloglevel=0 shows the key=value retry lines).
  if (std::getenv("GLOG_log_dir") == nullptr) FLAGS_logtostderr = true;
  if (std::getenv("GLOG_minloglevel") == nullptr) FLAGS_minloglevel = 1;
  google::InitGoogleLogging(argv[0]);
  std::vector<std::string> args(argv + 1, argv + argc);
  zfarm::client::CliIo io;
  io.out = &std::cout;
  io.err = &std::cerr;
  io.out_is_tty = isatty(STDOUT_FILENO) == 1;
  io.getenv = [](const char* name) -> const char* { return std::getenv(name); };
  return zfarm::client::RunCli(args, io);
}
