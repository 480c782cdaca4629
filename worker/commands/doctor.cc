// PLACEHOLDER: replaced by the work that implements `zfarm-worker doctor`.
#include <cstdio>

#include "worker/commands/commands.h"

namespace zfarm::worker {

int RunDoctor(int, char**) {
  std::fprintf(stderr, "zfarm-worker doctor: not built into this version yet\n");
  return 1;
}

}  // namespace zfarm::worker
