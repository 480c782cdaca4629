#ifndef ZFARM_WORKER_SAMPLING_SAMPLING_H_
#define ZFARM_WORKER_SAMPLING_SAMPLING_H_

// Flow-matching sampler math of the Z-Image pipeline, torch-free. Every value is
// computed with the same float32 op sequence as diffusers (ZImagePipeline +
// FlowMatchEulerDiscreteScheduler) so that schedules are bit-identical to the
// reference.
//
// The per-value formulas (Velocity, EulerUpdate, ScaleNoise, InpaintBlend, CfgGuide,
// CfgNormalizationScale) are templates over the value type: float in the span functions
// and the unit tests, at::Tensor in the pipeline's denoising loop, which runs these very
// expressions on whole latents. A value type needs V + V, V - V, V * float, float * V,
// float - V, V / V and -V, and ValueOps<V>::MinOne (below) when it is not a number.
//
// Example (the Turbo default, 8 transformer evaluations):
//   ZFARM_ASSIGN_OR_RETURN(std::vector<float> sigmas, FlowMatchSigmas(8, cfg));
//   for (int k = 0; k < 8; ++k) {
//     float t_in = TimestepInput(sigmas[k]);                 // DiT timestep input (1 - sigma)
//     x = EulerUpdate(x, Velocity(DiT(x, t_in, cap)), sigmas[k], sigmas[k + 1]);
//   }

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/io/model_config.h"

namespace zfarm::worker::sampling {

// The most transformer evaluations a request may ask for.
inline constexpr int kMaxSteps = 50;

// What the formulas below need beyond arithmetic operators: min(v, 1). Numbers use this;
// the pipeline specialises it for at::Tensor (clamp_max, no host sync).
template <typename V>
struct ValueOps {
  static V MinOne(const V& v) { return v < V(1) ? v : V(1); }  // NaN -> 1
};

// The flow-matching velocity: the Z-Image DiT predicts its negative.
template <typename V>
V Velocity(const V& dit_out) {
  return -dit_out;
}

// Euler step of the flow-matching ODE: x + (sigma_next - sigma) * velocity, with the
// step computed in float32.
template <typename V>
V EulerUpdate(const V& x, const V& velocity, float sigma, float sigma_next) {
  const float dt = sigma_next - sigma;
  return x + dt * velocity;
}

// The scheduler's scale_noise: clean latents moved to noise level `sigma` along the
// straight path, noise * sigma + latents * (1 - sigma). Image-to-image starts from it;
// inpainting resets the kept region to it after every step.
template <typename V>
V ScaleNoise(const V& latents, const V& noise, float sigma) {
  return noise * sigma + latents * (1.0f - sigma);
}

// Inpainting after a step: the denoised value where the mask is 1 (repaint), the kept
// (init) value where it is 0: (1 - mask) * kept + mask * denoised.
template <typename V>
V InpaintBlend(const V& kept, const V& denoised, const V& mask) {
  return (1.0f - mask) * kept + mask * denoised;
}

// Classifier-free guidance: pos + g * (pos - neg), with g from GuidanceForStep.
template <typename V>
V CfgGuide(const V& pos, const V& neg, float g) {
  return pos + g * (pos - neg);
}

// CFG normalization's rescale of the guided prediction, for normalization > 0:
// min(1, pos_norm * normalization / pred_norm) from the L2 norms of the positive and the
// guided prediction. (Callers skip the rescale when normalization is 0: off.)
template <typename V>
V CfgNormalizationScale(float normalization, const V& pos_norm, const V& pred_norm) {
  return ValueOps<V>::MinOne(pos_norm * normalization / pred_norm);
}

// The sigma schedule for `steps` transformer evaluations: steps + 1 values,
// sigmas[0] = 1 (pure noise) decreasing to sigmas[steps] = 0.
// As diffusers computes it: s = torch.linspace(1, 1/steps, steps) (float32, ATen's formula),
// sigma = shift*s / (1 + (shift-1)*s) in float32 (static shift from `config`;
// use_dynamic_shifting is not supported), then a trailing 0.
// INVALID_ARGUMENT if steps is outside 1..kMaxSteps, or the config asks for
// dynamic shifting or a non-positive shift / num_train_timesteps.
absl::StatusOr<std::vector<float>> FlowMatchSigmas(int steps, const SchedulerConfig& config);

// The scheduler's timestep for `sigma`: float32(sigma * num_train_timesteps).
float SchedulerTimestep(float sigma, int64_t num_train_timesteps = 1000);

// The DiT's timestep input for `sigma`, as the pipeline computes it:
// (1000 - t) / 1000 with t = SchedulerTimestep(sigma), all float32 (≈ 1 - sigma).
float TimestepInput(float sigma, int64_t num_train_timesteps = 1000);

// EulerUpdate over a vector in place:
// x[i] += (sigma_next - sigma) * velocity[i], with velocity = Velocity(DiT output).
// x and velocity must have the same size (checked in debug builds).
void EulerStep(absl::Span<float> x, absl::Span<const float> velocity, float sigma,
               float sigma_next);

// Image-to-image (diffusers' get_timesteps): the index of the first step kept when
// starting from a picture with `strength` in (0, 1]: t_start = int(max(N - min(N*s, N), 0))
// computed in double as Python does, with s the shortest decimal that reads back as the
// float `strength` (0.6f counts as 0.6). Steps t_start..N-1 run (N - t_start >= 1 of
// them); the picture is noised to sigmas[t_start]. INVALID_ARGUMENT for a strength
// outside (0, 1] (NaN included), naming the limit.
absl::StatusOr<int> ImageToImageStart(int steps, float strength);

// Classifier-free guidance settings (diffusers defaults).
struct CfgOptions {
  float guidance = 0.0f;       // g; guidance is applied only when g > 0
  float truncation = 1.0f;     // a step with t_in > truncation runs without guidance
  float normalization = 0.0f;  // > 0: cap ||pred|| at normalization * ||pos||
};

// The guidance scale for a step with DiT input `t_in`: 0 when guidance is off
// or the step is truncated (truncation <= 1 and t_in > truncation), else g.
float GuidanceForStep(const CfgOptions& options, float t_in);

// True if the step needs the negative branch (GuidanceForStep(...) > 0).
bool CfgActive(const CfgOptions& options, float t_in);

// The factor by which CFG normalization rescales pred, given the L2 norms of
// the positive prediction and of the combined prediction:
// CfgNormalizationScale when normalization > 0, else 1.
float CfgNormalizationFactor(float normalization, float pos_norm, float pred_norm);

// CFG combine on float32 vectors: CfgGuide per value, then CfgNormalizationFactor from
// the vectors' norms (accumulated in double) applied to all of them. `g` is the value of
// GuidanceForStep for this step.
std::vector<float> CfgCombine(absl::Span<const float> pos, absl::Span<const float> neg, float g,
                              float normalization);

}  // namespace zfarm::worker::sampling

#endif  // ZFARM_WORKER_SAMPLING_SAMPLING_H_
