#ifndef ZFARM_WORKER_IO_MODEL_FINGERPRINT_H_
#define ZFARM_WORKER_IO_MODEL_FINGERPRINT_H_

// A short identity of a model folder's weights, reported with every result:
// sha256 over every file's relative path and size, the full text of the JSON
// configs and the header of every .safetensors file (cheap: no weight bytes are
// read, yet a different checkpoint or dtype changes it). "sha256:" + 16 hex.

#include <string>

#include "absl/status/statusor.h"

namespace zfarm::worker {

absl::StatusOr<std::string> ModelFingerprint(const std::string& dir);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_MODEL_FINGERPRINT_H_
