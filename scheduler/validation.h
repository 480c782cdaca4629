#ifndef ZFARM_SCHEDULER_VALIDATION_H_
#define ZFARM_SCHEDULER_VALIDATION_H_

// Edge validation of client requests. Every check returns INVALID_ARGUMENT with a
// message naming the field and the limit, e.g.
//   "spec.width_px: 300 is not a multiple of 16 (allowed: multiples of 16 in [256, 2048])".
// Pure functions, no I/O; thread-safe.

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "proto/base/job_defaults.h"
#include "zfarm/v1/job.pb.h"

namespace zfarm::scheduler {

// Largest JobSpec.control.conditioning_scale.
inline constexpr float kMaxControlScale = 2.0f;
// Pictures one job can carry (init_image, mask_image, control.image): request and lease
// size limits leave room for this many at --max-input-bytes.
inline constexpr int kMaxPicturesPerJob = 3;

// Limits applied at the edge (defaults: README "Bad input").
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
  // Largest init_image / mask_image in bytes (--max-input-bytes).
  int64_t max_input_bytes = 16 << 20;
  int max_input_path_bytes = 1024;
  int max_loras = 8;
  float max_lora_scale = 4.0f;  // scales in [-max, max]
  // Checks a non-empty spec.webhook_url against the configured allow-list (the
  // scheduler binds WebhookSender::Validate here). Unset: webhooks are disabled
  // and every webhook_url is refused ("allow-list is empty").
  std::function<absl::Status(const std::string& url)> webhook_validator;
};

// Checks `spec` and fills defaults (job_defaults.h: width/height, steps, strength when
// init_image is set). Does not pick a seed. `field` prefixes messages ("spec" or
// "jobs[3].spec"). Image inputs are checked as far as that needs no I/O: which
// source is set, the byte limit of `data`, that a mask or a strength comes with an
// init_image; decoding and --input-root paths are InputStore's (inputs.h). LoRAs:
// at most max_loras, each name once and following the output-name rule, scale
// finite and in [-max_lora_scale, max_lora_scale].
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

// "16 MiB" for whole MiB, else "17.2 MiB" (one decimal).
std::string FormatMiB(int64_t bytes);

// True if `s` is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
bool IsValidUtf8(const std::string& s);

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_VALIDATION_H_
