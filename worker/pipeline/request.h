#ifndef ZFARM_WORKER_PIPELINE_REQUEST_H_
#define ZFARM_WORKER_PIPELINE_REQUEST_H_

// What one render is asked for and what it gives back: the request, the image and
// its timings, the cancel token and the step callback. Plain, torch-free types:
// the Pipeline (pipeline.h) takes them, and so does the worker runtime, which links
// this header library only (no libtorch).

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "worker/io/image_parameters.h"

namespace zfarm::worker {

// Largest and smallest image side the model supports (RoPE tables: 512 patches).
inline constexpr int kMinImageSide = 16;
inline constexpr int kMaxImageSide = 8192;

// A LoRA applied to the DiT for one request (formats: worker/model/lora_format.h).
struct LoraRequest {
  std::string name;    // used in messages, image metadata and Pipeline::active_loras()
  std::string path;    // the .safetensors file
  std::string sha256;  // of the file (the worker's catalogue has it); empty = hashed per request
  float scale = 1.0f;  // within [-4, 4]
};

// A decoded input picture (worker/io/image_decode.h): image-to-image and inpainting.
struct InputPicture {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // height * width * 3, row-major RGB
  std::string sha256;        // of the encoded file (image metadata); may be empty
};

// ControlNet conditioning (diffusers' ZImageControlNetPipeline; with init_image and
// mask_image, ZImageControlNetInpaintPipeline).
struct ControlRequest {
  // The control picture as the ControlNet expects it (canny edges, depth, pose... made by the
  // caller), Lanczos-resized to the request's width x height, VAE-encoded (the latent mean).
  InputPicture image;
  // conditioning_scale: the hints are multiplied by it, within [0, 2] (diffusers' default).
  float scale = 0.75f;
  // The ControlNet runs on step i of N when start <= i/N and (i+1)/N <= end (the
  // control_guidance_start/end rule of diffusers' other ControlNet pipelines;
  // ZImageControlNetPipeline has none, which 0 and 1 reproduce). 0 <= start < end <= 1.
  float start = 0.0f, end = 1.0f;
};

struct GenerateRequest {
  std::string prompt;
  std::string negative_prompt;  // used only when guidance > 0
  int width = 1024;
  int height = 1024;
  int steps = 8;  // transformer evaluations, 1..50
  uint64_t seed = 0;
  float guidance = 0.0f;  // CFG scale g (pred = pos + g (pos - neg)); 0 = off (Turbo)
  float cfg_truncation = 1.0f;
  float cfg_normalization = 0.0f;
  // Draw the initial noise with the CPU generator even on CUDA (what diffusers
  // does with generator=torch.Generator("cpu")); default: the device's generator.
  bool cpu_noise = false;
  // Tests/benchmarks: token ids to use instead of tokenizing `prompt`
  // (and negative_prompt_ids for the negative branch).
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> negative_prompt_ids;
  // LoRAs stacked on the DiT, at most 8, each name once; empty = the original weights
  // (restored exactly after LoRA jobs). The pipeline keeps the set applied until a
  // request asks for another, and caches recent files by sha256.
  std::vector<LoraRequest> loras;
  // Image-to-image (diffusers' ZImageImg2ImgPipeline): start from this picture. It is
  // resized as VaeImageProcessor does (Lanczos to its size rounded down to multiples of
  // 16; width x height must equal that size), encoded by the VAE (a latent sample drawn
  // from the seed's generator first, then the noise), noised to the first kept step, and
  // only the last N - t_start of the `steps` steps run (sampling::ImageToImageStart).
  std::optional<InputPicture> init_image;
  // Inpainting (ZImageInpaintPipeline; needs init_image): white = repaint. Resized to the
  // image's size, made grey, binarised at 0.5; after every step the kept region is reset
  // to the init latents noised to the next step's level.
  std::optional<InputPicture> mask_image;
  // How far to move away from init_image, in (0, 1]; ignored without it (and with control).
  float strength = 0.6f;
  // ControlNet (needs PipelineOptions::controlnet). With init_image and mask_image it is
  // ControlNet inpainting (Union 2.x only): no strength, no blending; the control context is
  // [control latents, latent-size mask of the kept region, latents of the init picture with
  // the repainted region blanked], and the render starts from pure noise. init_image without
  // mask_image is refused (diffusers has no ControlNet image-to-image for Z-Image).
  std::optional<ControlRequest> control;
};

// Wall-clock seconds per stage of one Generate call.
struct StageTimings {
  double tokenize_s = 0, encode_s = 0, denoise_s = 0, decode_s = 0, total_s = 0;
  double lora_s = 0;           // applying the request's LoRA set (0 when it was already applied)
  double encode_image_s = 0;   // image-to-image: preprocessing + VAE encode of the init picture
  std::vector<double> step_s;  // per DiT step (synchronised only when timing is requested)
};

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // height * width * 3, row-major RGB
  int prompt_tokens = 0;     // caption length L (template included)
  bool prompt_truncated = false;
  int untruncated_prompt_tokens = 0;
  StageTimings timings;
  int64_t peak_device_bytes = 0;   // CUDA: peak allocated during the call; CPU: process max RSS
  std::vector<LoraRequest> loras;  // the request's LoRAs, sha256 filled in
  int steps_run = 0;               // DiT steps evaluated (fewer than steps for image-to-image)
  // ControlNet renders: the ControlNet's name (the last component of its path without
  // ".safetensors"); empty otherwise.
  std::string controlnet;
  // The pipeline's precision (PrecisionName: "float32", "bfloat16", "fp8").
  std::string precision;
};

// Set by any thread; the pipeline checks it at step boundaries.
class CancelToken {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> cancelled_{false};
};

// Called after each DiT step with (step index from 1, total steps).
using StepCallback = std::function<void(int step, int total)>;

// The parameters a rendered image carries (written into the file's metadata): the
// request's and what the render reports. The caller adds model and device.
ImageParameters ImageParametersOf(const GenerateRequest& request, const Image& image);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_PIPELINE_REQUEST_H_
