#include "worker/sampling/sampling.h"

#include <algorithm>
#include <cassert>
#include <charconv>
#include <cmath>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace zfarm::worker::sampling {

absl::StatusOr<std::vector<float>> FlowMatchSigmas(int steps, const SchedulerConfig& config) {
  if (steps < 1 || steps > kMaxSteps) {
    return absl::InvalidArgumentError(
        absl::StrCat("steps must be within 1..", kMaxSteps, ", got ", steps));
  }
  if (config.use_dynamic_shifting) {
    return absl::InvalidArgumentError(
        "scheduler_config.json: use_dynamic_shifting=true is not supported");
  }
  if (!(config.shift > 0.0) || config.num_train_timesteps <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler_config.json: shift must be > 0 and num_train_timesteps > 0, got shift=",
        config.shift, " num_train_timesteps=", config.num_train_timesteps));
  }
  // get_default_z_image_sigmas: torch.linspace(1.0, 1/steps, steps) in float32
  // (ATen's kernel: start + step*i for the first half, end - step*(steps-1-i) after).
  const float start = 1.0f;
  const float end = static_cast<float>(1.0 / steps);
  const float step = steps > 1 ? (end - start) / static_cast<float>(steps - 1) : 0.0f;
  const int halfway = steps / 2;
  // Then FlowMatchEulerDiscreteScheduler: shift*s / (1 + (shift-1)*s) on a float32
  // numpy array (the python-float shift acts as float32).
  const float shift = static_cast<float>(config.shift);
  const float shift_minus_one = static_cast<float>(config.shift - 1.0);
  std::vector<float> sigmas;
  sigmas.reserve(steps + 1);
  for (int i = 0; i < steps; ++i) {
    const float s = steps == 1    ? start
                    : i < halfway ? start + step * static_cast<float>(i)
                                  : end - step * static_cast<float>(steps - 1 - i);
    const float num = shift * s;
    const float den = 1.0f + shift_minus_one * s;
    sigmas.push_back(num / den);
  }
  sigmas.push_back(0.0f);
  return sigmas;
}

float SchedulerTimestep(float sigma, int64_t num_train_timesteps) {
  return sigma * static_cast<float>(num_train_timesteps);
}

float TimestepInput(float sigma, int64_t num_train_timesteps) {
  const float t = SchedulerTimestep(sigma, num_train_timesteps);
  return (1000.0f - t) / 1000.0f;
}

void EulerStep(absl::Span<float> x, absl::Span<const float> velocity, float sigma,
               float sigma_next) {
  assert(x.size() == velocity.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = EulerUpdate(x[i], velocity[i], sigma, sigma_next);
}

absl::StatusOr<int> ImageToImageStart(int steps, float strength) {
  if (!(strength > 0.0f && strength <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("strength must be within (0, 1], got ", strength));
  }
  if (steps < 1 || steps > kMaxSteps) {
    return absl::InvalidArgumentError(
        absl::StrCat("steps must be within 1..", kMaxSteps, ", got ", steps));
  }
  // The shortest decimal of the float, read back as a double (what a user typed).
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), strength);
  double s = strength;
  if (ec == std::errc()) std::from_chars(buf, end, s);
  const double n = steps;
  const double init_timestep = std::min(n * s, n);
  return static_cast<int>(std::max(n - init_timestep, 0.0));
}

float GuidanceForStep(const CfgOptions& options, float t_in) {
  if (!(options.guidance > 0.0f)) return 0.0f;
  if (options.truncation <= 1.0f && t_in > options.truncation) return 0.0f;
  return options.guidance;
}

bool CfgActive(const CfgOptions& options, float t_in) {
  return GuidanceForStep(options, t_in) > 0.0f;
}

float CfgNormalizationFactor(float normalization, float pos_norm, float pred_norm) {
  if (!(normalization > 0.0f)) return 1.0f;
  return CfgNormalizationScale(normalization, pos_norm, pred_norm);
}

std::vector<float> CfgCombine(absl::Span<const float> pos, absl::Span<const float> neg, float g,
                              float normalization) {
  assert(pos.size() == neg.size());
  std::vector<float> pred(pos.size());
  double pos_sq = 0.0, pred_sq = 0.0;
  for (size_t i = 0; i < pos.size(); ++i) {
    pred[i] = CfgGuide(pos[i], neg[i], g);
    pos_sq += static_cast<double>(pos[i]) * pos[i];
    pred_sq += static_cast<double>(pred[i]) * pred[i];
  }
  const float f = CfgNormalizationFactor(normalization, static_cast<float>(std::sqrt(pos_sq)),
                                         static_cast<float>(std::sqrt(pred_sq)));
  if (f != 1.0f) {
    for (float& v : pred) v *= f;
  }
  return pred;
}

}  // namespace zfarm::worker::sampling
