#ifndef ZFARM_SCHEDULER_HTTP_THUMBNAIL_H_
#define ZFARM_SCHEDULER_HTTP_THUMBNAIL_H_

// File: thumbnail.h
// Small pictures of results for the dashboard, and the text a PNG carries.
//
//   ZFARM_ASSIGN_OR_RETURN(std::string small, MakePngThumbnail(png_bytes, 256));
//   ZFARM_ASSIGN_OR_RETURN(auto text, PngTextChunks(png_bytes));   // "parameters" -> ...
//
// Decoding and encoding use libpng (its simplified png_image API); the picture
// is scaled down by box filtering (averaging the source pixels under each
// target pixel), never up. Stateless; thread-safe.

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace zfarm::scheduler::http {

// A PNG of `png` scaled so that its longer side is at most `max_side` pixels
// (aspect kept; a picture already that small is re-encoded as is).
// INVALID_ARGUMENT when `png` is not a readable PNG or max_side < 1.
absl::StatusOr<std::string> MakePngThumbnail(absl::string_view png, int max_side);

// keyword -> text of the tEXt and uncompressed iTXt chunks of `png`.
// INVALID_ARGUMENT when it is not a PNG or a chunk is cut off.
absl::StatusOr<std::map<std::string, std::string>> PngTextChunks(absl::string_view png);

}  // namespace zfarm::scheduler::http

#endif  // ZFARM_SCHEDULER_HTTP_THUMBNAIL_H_
