// PLACEHOLDER: replaced by the work that implements `zfarm-worker generate`.
#include <cstdio>

#include "worker/commands/commands.h"

namespace zfarm::worker {

int RunGenerate(int, char**) {
  std::fprintf(stderr, "zfarm-worker generate: not built into this version yet\n");
  return 1;
}

}  // namespace zfarm::worker
