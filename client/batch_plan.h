#ifndef ZFARM_CLIENT_BATCH_PLAN_H_
#define ZFARM_CLIENT_BATCH_PLAN_H_

// File: batch_plan.h
// Pure pieces of `zfarm batch`: the prompts file, seed sweeps and the
// deterministic request ids that make re-runs safe.
//
// Prompts file: one entry per line. A line that starts with `{` is a JSON
// object (JSON Lines) with "prompt" (required) and optional
// "negative_prompt", "width", "height", "steps", "guidance", "seed",
// "priority", "output_name", "model", "labels" ({"k": "v"}), "output_format"
// ("png", "jpeg", "webp"), "quality" (1..100, JPEG/WebP) and "seeds"
// ([1, 2, 3]); for image-to-image and inpainting "init_image" and "mask" (local
// files, relative to the current folder, sent as bytes), "init_image_path" and
// "mask_path" (paths under the scheduler's --input-root), "strength" (a number in
// (0, 1]) and "loras" (an array of "NAME[:SCALE]" strings, e.g. ["ink:0.8",
// "detail"]; {name, scale} objects are refused); for ControlNet "control_image" (a local
// file, sent) or "control_image_path" (under --input-root), "control_scale" ([0, 2]),
// "control_start" and "control_end" (fractions of the steps). Any other line is a plain
// prompt. An empty line, invalid JSON
// or a bad key is an error naming the line: the whole file is rejected
// (nothing is submitted).
//
// Request ids: "<prefix>-<line>-<hash>" where <hash> is 16 hex digits of the
// SHA-256 of the canonical spec (deterministic protobuf serialization, the
// deadline left out since it is relative to the run). Input pictures sent as bytes
// are part of the spec, so a changed picture gives a new id; a picture named by
// its --input-root path is hashed by its path only. Running the same batch
// again with the same prefix therefore yields the same ids, and the scheduler
// returns the existing jobs instead of creating new ones.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "zfarm/v1/job.pb.h"

namespace zfarm::client {

// One job to submit: where it came from and what it asks for.
struct PlannedJob {
  int line = 0;     // 1-based line in the prompts file (or 1 for `submit`)
  int variant = 0;  // 0-based index within the line's seed sweep
  zfarm::v1::JobSpec spec;
  std::string request_id;
};

// Seed sweep options applied to every line (a line's own "seed"/"seeds" win).
struct SweepOptions {
  std::vector<uint64_t> seeds;  // --seeds 1,2,3
  int variants = 1;             // --variants N
};

// "png", "jpeg" (or "jpg"), "webp", case-insensitive; INVALID_ARGUMENT naming
// `field` and the accepted names otherwise.
absl::StatusOr<zfarm::v1::OutputFormat> ParseOutputFormat(absl::string_view name,
                                                          absl::string_view field);

// Parses "1,2,3" (also "1, 2 ,3"). Empty items and non-numbers are errors.
absl::StatusOr<std::vector<uint64_t>> ParseSeedList(absl::string_view text);

// Reads a local input picture ("init_image", "mask", --init-image, --mask).
using FileReader = std::function<absl::StatusOr<std::string>(const std::string& path)>;

// Reads the file at `path` whole; INVALID_ARGUMENT naming it when it cannot.
absl::StatusOr<std::string> ReadLocalFile(const std::string& path);

// "NAME" (scale absent: 1) or "NAME:SCALE" (the text after the last ':' when it is
// a number). INVALID_ARGUMENT for an empty name or scale.
absl::StatusOr<zfarm::v1::LoraRef> ParseLoraRef(absl::string_view text);

// Width and height left at 0 become kDefaultSizePx (job_defaults.h), except for image-to-image (init_image
// set), where 0 lets the scheduler take them from the picture.
void FillSizeDefaults(zfarm::v1::JobSpec* spec);

// Parses the prompts file contents. Every line starts from `defaults` (sizes of 0
// are filled by FillSizeDefaults). Local pictures are read with `read_file` (null:
// such keys are an error). Errors name the file ("<name>:<line>: ...").
absl::StatusOr<std::vector<PlannedJob>> ParsePromptsFile(absl::string_view contents,
                                                         absl::string_view file_name,
                                                         const zfarm::v1::JobSpec& defaults,
                                                         const SweepOptions& sweep,
                                                         const FileReader& read_file = nullptr);

// Reads `path` then ParsePromptsFile. An unreadable file is an error naming it.
absl::StatusOr<std::vector<PlannedJob>> LoadPromptsFile(const std::string& path,
                                                        const zfarm::v1::JobSpec& defaults,
                                                        const SweepOptions& sweep);

// 64 hex chars of the SHA-256 of the canonical spec (deadline excluded).
std::string CanonicalSpecHash(const zfarm::v1::JobSpec& spec);

// "<prefix>-<line>-<first 16 hex of hash>", plus "-v<variant>" when the
// variant has no seed of its own (so variants stay distinct).
std::string DeriveRequestId(absl::string_view prefix, const PlannedJob& job);

// Fills request_id of every job from `prefix`.
void AssignRequestIds(absl::string_view prefix, std::vector<PlannedJob>* jobs);

// The default prefix: $BUILD_TAG when set and non-empty, else `fallback`.
std::string DefaultRequestIdPrefix(const char* build_tag, absl::string_view fallback);

// A batch id derived from the request ids (stable across re-runs).
std::string DeriveBatchId(absl::string_view prefix, const std::vector<PlannedJob>& jobs);

}  // namespace zfarm::client

#endif  // ZFARM_CLIENT_BATCH_PLAN_H_
