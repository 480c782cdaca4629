#include "worker/io/image_parameters.h"

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace zfarm::worker {
namespace {

std::string FormatFloat(float v) { return absl::StrFormat("%g", v); }

}  // namespace

std::string A1111Parameters(const ImageParameters& p) {
  std::string s = p.prompt;
  for (const LoraUse& l : p.loras) absl::StrAppend(&s, " <lora:", l.name, ":", FormatFloat(l.scale), ">");
  if (!p.negative_prompt.empty()) absl::StrAppend(&s, "\nNegative prompt: ", p.negative_prompt);
  absl::StrAppend(&s, "\nSteps: ", p.steps,
                  ", Sampler: Euler, CFG scale: ", FormatFloat(p.guidance), ", Seed: ", p.seed,
                  ", Size: ", p.width, "x", p.height, ", Model: ", p.model);
  if (!p.loras.empty()) {
    std::vector<std::string> hashes;
    for (const LoraUse& l : p.loras) hashes.push_back(absl::StrCat(l.name, ": ", l.sha256.substr(0, 12)));
    absl::StrAppend(&s, ", Lora hashes: \"", absl::StrJoin(hashes, ", "), "\"");
  }
  if (!p.init_image_sha256.empty()) {
    absl::StrAppend(&s, ", Denoising strength: ", FormatFloat(p.strength),
                    ", Init image sha256: ", p.init_image_sha256);
  }
  if (!p.mask_sha256.empty()) absl::StrAppend(&s, ", Mask sha256: ", p.mask_sha256);
  if (p.precision == "fp8") absl::StrAppend(&s, ", Precision: fp8");
  if (!p.control_image_sha256.empty()) {
    absl::StrAppend(&s, ", ControlNet: ", p.controlnet, ", Control image sha256: ",
                    p.control_image_sha256, ", Control weight: ", FormatFloat(p.control_scale));
    if (p.control_start != 0.0f || p.control_end != 1.0f) {
      absl::StrAppend(&s, ", Control start: ", FormatFloat(p.control_start),
                      ", Control end: ", FormatFloat(p.control_end));
    }
  }
  return s;
}

std::string ParametersJson(const ImageParameters& p) {
  nlohmann::json j;
  j["prompt"] = p.prompt;
  j["negative_prompt"] = p.negative_prompt;
  j["steps"] = p.steps;
  j["guidance"] = p.guidance;
  j["seed"] = p.seed;
  j["width"] = p.width;
  j["height"] = p.height;
  j["sampler"] = "euler";
  j["model"] = p.model;
  j["device"] = p.device;
  if (!p.precision.empty()) j["precision"] = p.precision;
  j["prompt_tokens"] = p.prompt_tokens;
  j["prompt_truncated"] = p.prompt_truncated;
  if (!p.loras.empty()) {
    nlohmann::json loras = nlohmann::json::array();
    for (const LoraUse& l : p.loras) {
      // The scale as written in the parameters text (0.7, not 0.699999988 from the float).
      loras.push_back(
          {{"name", l.name}, {"sha256", l.sha256}, {"scale", std::strtod(FormatFloat(l.scale).c_str(), nullptr)}});
    }
    j["loras"] = std::move(loras);
  }
  if (!p.init_image_sha256.empty()) {
    j["strength"] = std::strtod(FormatFloat(p.strength).c_str(), nullptr);
    j["init_image_sha256"] = p.init_image_sha256;
  }
  if (!p.mask_sha256.empty()) j["mask_sha256"] = p.mask_sha256;
  if (!p.control_image_sha256.empty()) {
    auto num = [](float v) { return std::strtod(FormatFloat(v).c_str(), nullptr); };
    j["control"] = {{"controlnet", p.controlnet},
                    {"image_sha256", p.control_image_sha256},
                    {"scale", num(p.control_scale)},
                    {"start", num(p.control_start)},
                    {"end", num(p.control_end)}};
  }
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace zfarm::worker
