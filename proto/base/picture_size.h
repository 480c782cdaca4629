#ifndef ZFARM_PROTO_BASE_PICTURE_SIZE_H_
#define ZFARM_PROTO_BASE_PICTURE_SIZE_H_

// File: picture_size.h
// The size rule of rendered pictures: width and height are multiples of
// kPictureSideMultiple, and a job rendered from a picture (image-to-image,
// inpainting) takes that picture's size rounded down to such multiples, as
// diffusers' image-to-image pipelines do (they refuse any other size). One rule for
// the scheduler (it derives a job's size from its init_image and validates sizes),
// the worker's pipeline (it checks a request against its init_image) and
// `zfarm-worker generate` (it takes --init-image's size).
//
//   int32_t w = RoundDownPictureSide(picture.width);   // 300 -> 288
//
// Thread-compatible (pure functions).

#include <cstdint>

namespace zfarm::base {

// Width and height of every rendered picture are multiples of this.
inline constexpr int32_t kPictureSideMultiple = 16;

// `side` rounded down to a multiple of kPictureSideMultiple (0 below it).
inline constexpr int32_t RoundDownPictureSide(int32_t side) {
  return side / kPictureSideMultiple * kPictureSideMultiple;
}

}  // namespace zfarm::base

#endif  // ZFARM_PROTO_BASE_PICTURE_SIZE_H_
