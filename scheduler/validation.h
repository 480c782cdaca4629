#ifndef ZFARM_SCHEDULER_VALIDATION_H_
#define ZFARM_SCHEDULER_VALIDATION_H_

// Edge validation of client requests. Every check returns INVALID_ARGUMENT with a
// message naming the field and the limit, e.g.
//   "spec.width_px: 300 is not a multiple of 16 (allowed: multiples of 16 in [256, 2048])".
// Pure functions, no I/O; thread-safe.

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "zfarm/v1/job.pb.h"

namespace zfarm::scheduler {

// Limits applied at the edge (defaults = the "Bad input" section).
struct Limits {
  int max_prompt_bytes = 4000;
  int min_size_px = 256;
  int max_size_px = 2048;
  int min_steps = 1;
  int max_steps = 50;
  float max_guidance = 20.0f;
  int max_output_name_bytes = 128;
  int max_labels = 32;
  int max_label_bytes = 256;  // per key and per value
  int max_batch_jobs = 1000;
  int max_request_id_bytes = 256;
  int min_priority = -100;
  int max_priority = 100;
  // Checks a non-empty spec.webhook_url against the configured allow-list (the
  // scheduler binds WebhookSender::Validate here). Unset: webhooks are disabled
  // and every webhook_url is refused ("allow-list is empty").
  std::function<absl::Status(const std::string& url)> webhook_validator;
};

// Checks `spec` and fills defaults (width/height 1024, steps 8). Does not pick a
// seed. `field` prefixes messages ("spec" or "jobs[3].spec").
absl::Status ValidateAndNormalizeSpec(const Limits& limits, const std::string& field,
                                      zfarm::v1::JobSpec* spec);

// Checks a request id (empty is allowed: no deduplication).
absl::Status ValidateRequestId(const Limits& limits, const std::string& field,
                               const std::string& request_id);

// Checks a "key=value" selector.
absl::Status ValidateLabelSelector(const std::string& field, const std::string& label);

// Deterministic fingerprint (hex sha256) of a normalized spec, used to compare an
// idempotent resubmission with the original. An absent seed is part of the
// fingerprint, so "no seed" only matches "no seed".
std::string SpecFingerprint(const zfarm::v1::JobSpec& normalized_spec);

// True if `s` is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
bool IsValidUtf8(const std::string& s);

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_VALIDATION_H_
