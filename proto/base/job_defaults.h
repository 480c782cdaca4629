#ifndef ZFARM_PROTO_BASE_JOB_DEFAULTS_H_
#define ZFARM_PROTO_BASE_JOB_DEFAULTS_H_

// File: job_defaults.h
// What a zfarm.v1.JobSpec field left at 0 (or unset) means. The scheduler fills
// these in at submit (scheduler/validation.cc); the CLI names them in its help and
// fills the sizes before it derives request ids (client/batch_plan.cc); the worker
// encodes with the default quality. The Python client's build_spec() sends the same
// values (python_client_test checks them against the scheduler's answer).

#include <cstdint>

namespace zfarm::base {

inline constexpr int32_t kDefaultSizePx = 1024;  // width_px, height_px (no init image)
inline constexpr int32_t kDefaultSteps = 8;      // steps
inline constexpr float kDefaultStrength = 0.6f;  // strength (image-to-image)
inline constexpr int kDefaultQuality = 90;       // quality (JPEG / WebP)

}  // namespace zfarm::base

#endif  // ZFARM_PROTO_BASE_JOB_DEFAULTS_H_
