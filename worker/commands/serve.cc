// PLACEHOLDER: replaced by the work that implements `zfarm-worker serve`.
#include <cstdio>

#include "worker/commands/commands.h"

namespace zfarm::worker {

int RunServe(int, char**) {
  std::fprintf(stderr, "zfarm-worker serve: not built into this version yet\n");
  return 1;
}

}  // namespace zfarm::worker
