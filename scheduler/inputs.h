#ifndef ZFARM_SCHEDULER_INPUTS_H_
#define ZFARM_SCHEDULER_INPUTS_H_

// File: inputs.h
// The scheduler's input store: the pictures of image-to-image and inpainting jobs
// (JobSpec.init_image, JobSpec.mask_image, JobSpec.control.image), kept content-addressed as
// <dir>/<sha256> so the journal holds a 64-hex reference instead of up to
// --max-input-bytes per picture.
//
//   At submit:      Intern() reads a path under --input-root (confined with
//                   security::ResolveBeneath, like the output root) or takes the
//                   request's bytes, checks the limit, the format (PNG or JPEG) and
//                   the side, writes the file (temp + rename, fsynced) and replaces
//                   the source with ImageInput.sha256 -- all before the job is
//                   journaled and acknowledged.
//   At lease send:  Fill() puts the bytes back into the spec sent to the worker,
//                   checking their sha256.
//   Retention:      Sweep() removes files no remaining job references (jobs are
//                   pruned by the scheduler's --retention / --max-finished-jobs).
//
//   ZFARM_ASSIGN_OR_RETURN(auto store, InputStore::Open({.dir = state + "/inputs"}));
//   ZFARM_RETURN_IF_ERROR(store->Intern("spec", request.mutable_spec()));
//
// Thread-safe: the store has no mutable state besides the files; concurrent
// Intern() of the same bytes write the same content under the same name.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "scheduler/validation.h"
#include "zfarm/v1/job.pb.h"

namespace zfarm::scheduler {

class InputStore {
 public:
  struct Options {
    // The store folder (created if missing), normally <state-dir>/inputs.
    std::string dir;
    // --input-root: ImageInput.path is relative to it. Empty = paths are refused.
    std::string input_root;
    // max_input_bytes, min/max_size_px are used.
    Limits limits;
  };

  static absl::StatusOr<std::unique_ptr<InputStore>> Open(Options options);

  // For spec.init_image, spec.mask_image and spec.control.image (when set): refuses a client-set
  // sha256, reads a path under input_root, checks bytes <= max_input_bytes, that
  // the header is PNG or JPEG (worker/io/image_decode.h) and that neither side exceeds max_size_px, stores
  // the bytes and sets the ImageInput to their sha256. A width_px / height_px of 0
  // is taken from init_image, rounded down to a multiple of 16 (the resize rule of
  // diffusers' image processor for Z-Image). INVALID_ARGUMENT naming
  // `field`.init_image.data / .path and the limit; INTERNAL if the store cannot be
  // written. On error nothing was stored, but `spec` may have lost its bytes
  // (discard it).
  absl::Status Intern(const std::string& field, zfarm::v1::JobSpec* spec) const;

  // Replaces every ImageInput.sha256 of `spec` by the stored bytes. NOT_FOUND if a
  // file is missing, DATA_LOSS if its content no longer has its sha256.
  absl::Status Fill(zfarm::v1::JobSpec* spec) const;

  // Adds the sha256 references of `spec` to `out`.
  static void AddReferences(const zfarm::v1::JobSpec& spec, absl::flat_hash_set<std::string>* out);

  // Removes stored files (and leftover temporary files) not in `referenced`
  // whose last store or reuse is older than `min_age` (a submit between its
  // Intern() and its journal write is not yet referenced). Returns how many
  // were removed.
  absl::StatusOr<int> Sweep(const absl::flat_hash_set<std::string>& referenced,
                            absl::Duration min_age) const;

  const std::string& dir() const { return options_.dir; }

 private:
  explicit InputStore(Options options) : options_(std::move(options)) {}
  // One ImageInput read (path) or taken (data) and checked.
  struct Loaded {
    std::string bytes;
    std::string sha256;
    int width = 0;
    int height = 0;
  };
  absl::StatusOr<Loaded> Load(const std::string& field, zfarm::v1::ImageInput* input) const;
  absl::StatusOr<std::string> ReadUnderRoot(const std::string& field,
                                            const std::string& relative) const;
  absl::Status Store(const std::string& sha256, const std::string& bytes) const;

  const Options options_;
};

}  // namespace zfarm::scheduler

#endif  // ZFARM_SCHEDULER_INPUTS_H_
