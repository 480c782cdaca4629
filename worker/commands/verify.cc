// PLACEHOLDER: replaced by the work that implements `zfarm-worker verify`.
#include <cstdio>

#include "worker/commands/commands.h"

namespace zfarm::worker {

int RunVerify(int, char**) {
  std::fprintf(stderr, "zfarm-worker verify: not built into this version yet\n");
  return 1;
}

}  // namespace zfarm::worker
