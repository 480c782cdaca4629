// zfarm-worker: one process per device. See `zfarm-worker --help`.
#include <cstdio>
#include <cstring>
#include <string_view>

#include "glog/logging.h"
#include "proto/base/version.h"
#include "worker/commands/commands.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

constexpr Command kCommands[] = {
    {"serve", zfarm::worker::RunServe, "load and warm the model, then take jobs from a scheduler"},
    {"generate", zfarm::worker::RunGenerate, "render images locally, no scheduler"},
    {"verify", zfarm::worker::RunVerify, "check a model folder against the official md5 manifest"},
    {"tokenize", zfarm::worker::RunTokenize, "JSON Lines prompts on stdin -> token ids"},
    {"doctor", zfarm::worker::RunDoctor, "pre-flight checks: files, device, load test"},
    {"cache-weights", zfarm::worker::RunCacheWeights,
     "write the bf16 (or --precision fp8) DiT copy that --weights-cache loads (faster cold starts)"},
    {"info", zfarm::worker::RunInfo,
     "the format, size and generation parameters of a PNG, JPEG or WebP result"},
    {"lora-inspect", zfarm::worker::RunLoraInspect,
     "a LoRA file's format, modules, rank and alpha; --model: does it fit"},
    {"compare", zfarm::worker::RunCompare,
     "render prompts with two precisions (--a bf16 --b fp8): PSNR, SSIM, side by side"},
};

void PrintUsage(FILE* out) {
  std::fprintf(out,
               "usage: zfarm-worker <command> [flags]   (zfarm-worker <command> --help)\n\n"
               "commands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-13s %s\n", c.name, c.summary);
  std::fprintf(out, "\n  --version  print the version\n");
}

}  // namespace

int main(int argc, char** argv) {
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  if (argc < 2) {
    PrintUsage(stderr);
    return 2;
  }
  std::string_view cmd = argv[1];
  if (cmd == "--version" || cmd == "version") {
    std::printf("zfarm-worker %s\n", ZFARM_VERSION);
    return 0;
  }
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    PrintUsage(stdout);
    return 0;
  }
  for (const Command& c : kCommands) {
    if (cmd == c.name) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "zfarm-worker: unknown command '%s'\n", argv[1]);
  PrintUsage(stderr);
  return 2;
}
