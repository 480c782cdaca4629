#include "worker/pipeline/request.h"

namespace zfarm::worker {

ImageParameters ImageParametersOf(const GenerateRequest& request, const Image& image) {
  ImageParameters p;
  p.prompt = request.prompt;
  p.negative_prompt = request.guidance > 0 ? request.negative_prompt : "";
  p.steps = request.steps;
  p.guidance = request.guidance;
  p.seed = request.seed;
  p.width = image.width;
  p.height = image.height;
  p.prompt_tokens = image.prompt_tokens;
  p.prompt_truncated = image.prompt_truncated;
  p.precision = image.precision;
  for (const LoraRequest& l : image.loras) p.loras.push_back({l.name, l.sha256, l.scale});
  if (request.init_image.has_value()) {
    p.strength = request.strength;
    p.init_image_sha256 = request.init_image->sha256;
    if (request.mask_image.has_value()) p.mask_sha256 = request.mask_image->sha256;
  }
  if (request.control.has_value()) {
    if (request.init_image.has_value()) p.strength = 1.0f;  // ControlNet inpainting: from noise
    p.control_image_sha256 = request.control->image.sha256;
    p.controlnet = image.controlnet;
    p.control_scale = request.control->scale;
    p.control_start = request.control->start;
    p.control_end = request.control->end;
  }
  return p;
}

}  // namespace zfarm::worker
