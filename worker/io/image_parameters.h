#ifndef ZFARM_WORKER_IO_IMAGE_PARAMETERS_H_
#define ZFARM_WORKER_IO_IMAGE_PARAMETERS_H_

// What produced an image, and the two text forms it is stored in inside every
// result file (PNG text chunks, JPEG/WebP EXIF and XMP): the AUTOMATIC1111
// "parameters" text that web UIs and image viewers show, and zfarm's JSON.
// Pure functions; thread-safe.

#include <cstdint>
#include <string>
#include <vector>

namespace zfarm::worker {

// A LoRA an image was rendered with.
struct LoraUse {
  std::string name;
  std::string sha256;  // lower-case hex of the file
  float scale = 1.0f;
};

// What produced an image (written into the text chunks).
struct ImageParameters {
  std::string prompt;
  std::string negative_prompt;
  int steps = 8;
  float guidance = 0.0f;
  uint64_t seed = 0;
  int width = 0, height = 0;
  std::string model = "z-image-turbo";
  std::string device;
  // What the model computed in ("float32", "bfloat16", "fp8"; empty = not recorded).
  std::string precision;
  bool prompt_truncated = false;
  int prompt_tokens = 0;
  std::vector<LoraUse> loras;  // in the order applied
  // Image-to-image / inpainting: the strength and the lower-case hex sha256 of the
  // encoded init picture and mask files (empty = text-to-image / no mask).
  float strength = 0.0f;
  std::string init_image_sha256;
  std::string mask_sha256;
  // ControlNet: the lower-case hex sha256 of the control picture file (empty = none), the
  // ControlNet's name (its file or folder name), conditioning scale and start/end fractions.
  std::string control_image_sha256;
  std::string controlnet;
  float control_scale = 0.0f, control_start = 0.0f, control_end = 1.0f;
};

// "prompt\nNegative prompt: ...\nSteps: 8, Sampler: Euler, CFG scale: 0, Seed: 42,
//  Size: 1024x1024, Model: z-image-turbo" (the negative line only when non-empty).
// With LoRAs, as AUTOMATIC1111 writes them: " <lora:NAME:SCALE>" after the prompt and
// `, Lora hashes: "NAME: SHA12, ..."` (the first 12 hex digits of each file's sha256).
// Image-to-image appends `, Denoising strength: S, Init image sha256: HEX` (A1111's
// name for the strength) and inpainting `, Mask sha256: HEX` (full digests); ControlNet
// `, ControlNet: NAME, Control image sha256: HEX, Control weight: S` (A1111's word for the
// scale) and `, Control start: A, Control end: B` unless 0 and 1. An FP8 render appends
// `, Precision: fp8` (bf16 on CUDA and fp32 on the CPU are the defaults, left unsaid).
std::string A1111Parameters(const ImageParameters& p);
// The JSON object stored in the "zfarm" chunk ("loras": [{name, sha256, scale}] with LoRAs;
// "strength", "init_image_sha256" and "mask_sha256" when set; "control": {controlnet,
// image_sha256, scale, start, end} with a ControlNet; "precision" when recorded).
std::string ParametersJson(const ImageParameters& p);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_IO_IMAGE_PARAMETERS_H_
