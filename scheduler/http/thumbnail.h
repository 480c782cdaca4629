#ifndef ZFARM_SCHEDULER_HTTP_THUMBNAIL_H_
#define ZFARM_SCHEDULER_HTTP_THUMBNAIL_H_

// File: thumbnail.h
// Small pictures of results for the dashboard.
//
//   ZFARM_ASSIGN_OR_RETURN(std::string small, MakeThumbnail(result_bytes, 256));
//
// The result (PNG, JPEG or WebP) is decoded with the result-image library
// (worker/io/image_file.h and its per-format decoders), scaled down by box
// filtering (averaging the source pixels under each target pixel), never up,
// and encoded as PNG. Stateless; thread-safe.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace zfarm::scheduler::http {

// A PNG of `image` scaled so that its longer side is at most `max_side` pixels
// (aspect kept; a picture already that small keeps its size). INVALID_ARGUMENT
// when `image` is no readable PNG, JPEG or WebP, or max_side < 1.
absl::StatusOr<std::string> MakeThumbnail(absl::string_view image, int max_side);

}  // namespace zfarm::scheduler::http

#endif  // ZFARM_SCHEDULER_HTTP_THUMBNAIL_H_
