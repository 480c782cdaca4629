// PLACEHOLDER: replaced by the work that implements `zfarm-worker tokenize`.
#include <cstdio>

#include "worker/commands/commands.h"

namespace zfarm::worker {

int RunTokenize(int, char**) {
  std::fprintf(stderr, "zfarm-worker tokenize: not built into this version yet\n");
  return 1;
}

}  // namespace zfarm::worker
