#ifndef ZFARM_WORKER_IO_IMAGE_METADATA_H_
#define ZFARM_WORKER_IO_IMAGE_METADATA_H_

// The metadata blocks JPEG and WebP results carry their generation parameters in:
//
// - EXIF: a big-endian TIFF structure whose Exif IFD holds one UserComment
//   (tag 0x9286) with the character code "UNICODE" and UTF-16BE text. That is
//   where AUTOMATIC1111 writes (and reads back) the "parameters" text of JPEG and
//   WebP images, and what exiftool shows as "User Comment".
// - XMP: a packet with dc:description (the same parameters text, which photo
//   tools show as the description) and zfarm:parameters (zfarm's JSON).
//
// The builders and parsers are pure functions; thread-safe. The parsers accept
// the blocks the builders write and the same structures from other writers
// (either TIFF byte order, UserComment in ASCII or UNICODE); nothing else is
// promised about foreign XMP.
//
// Example:
//   std::string exif = ExifWithUserComment(A1111Parameters(p));
//   absl::StatusOr<std::string> text = UserCommentFromExif(exif);  // == the text

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace zfarm::worker {

// A TIFF/EXIF block (starting with "MM\0*", no "Exif\0\0" prefix) holding
// `utf8_text` as UserComment. Invalid UTF-8 sequences become U+FFFD.
std::string ExifWithUserComment(absl::string_view utf8_text);

// The UserComment of an EXIF block (with or without the "Exif\0\0" prefix) as
// UTF-8. NOT_FOUND when the block has none; INVALID_ARGUMENT naming what is
// malformed (offsets past the end, a bad byte-order mark, a character code
// other than ASCII, UNICODE or undefined).
absl::StatusOr<std::string> UserCommentFromExif(absl::string_view exif);

// An XMP packet with `parameters` as dc:description and `json` as
// zfarm:parameters. XML 1.0 cannot carry control characters other than tab,
// newline and carriage return: those are left out of the packet (the EXIF
// block keeps the text exactly).
std::string XmpPacket(absl::string_view parameters, absl::string_view json);

// What XmpPacket wrote: empty strings for properties the packet lacks.
struct XmpFields {
  std::string parameters;  // dc:description, x-default
  std::string json;        // zfarm:parameters
};
// Reads the two properties back (entities decoded). INVALID_ARGUMENT when
// `xmp` is not an XMP packet (no x:xmpmeta element).
absl::StatusOr<XmpFields> ParseXmp(absl::string_view xmp);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_IMAGE_METADATA_H_
