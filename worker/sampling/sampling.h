#ifndef ZFARM_WORKER_SAMPLING_SAMPLING_H_
#define ZFARM_WORKER_SAMPLING_SAMPLING_H_

// Flow-matching sampler math of the Z-Image pipeline (spec §5), as pure,
// torch-free functions. Every value is computed with the same float32 op
// sequence as diffusers (ZImagePipeline at HEAD + FlowMatchEulerDiscreteScheduler)
// so that schedules are bit-identical to the reference.
//
// Example (the Turbo default, 8 transformer evaluations):
//   ZFARM_ASSIGN_OR_RETURN(std::vector<float> sigmas, FlowMatchSigmas(8, cfg));
//   for (int k = 0; k < 8; ++k) {
//     float t_in = TimestepInput(sigmas[k]);        // DiT timestep input (1 - sigma)
//     ... v = -DiT(x, t_in, cap) ...
//     EulerStep(x, v, sigmas[k], sigmas[k + 1]);     // x += (s[k+1] - s[k]) * v
//   }

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/io/model_config.h"

namespace zfarm::worker::sampling {

// The most transformer evaluations a request may ask for.
inline constexpr int kMaxSteps = 50;

// The sigma schedule for `steps` transformer evaluations: steps + 1 values,
// sigmas[0] = 1 (pure noise) decreasing to sigmas[steps] = 0.
// DIFF-P HEAD: s = torch.linspace(1, 1/steps, steps) (float32, ATen's formula),
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

// Euler step of the flow-matching ODE in float32:
// x[i] += (sigma_next - sigma) * velocity[i], with velocity = -DiT output.
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

// Classifier-free guidance settings (spec §5.4; diffusers defaults).
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
// min(1, normalization * pos_norm / pred_norm) when normalization > 0, else 1.
float CfgNormalizationFactor(float normalization, float pos_norm, float pred_norm);

// CFG combine on float32 values (the reference for the pipeline's tensor code):
// pred = pos + g * (pos - neg), then the normalization of `options` applied
// over the whole vector. `g` is the value of GuidanceForStep for this step.
std::vector<float> CfgCombine(absl::Span<const float> pos, absl::Span<const float> neg, float g,
                              float normalization);

}  // namespace zfarm::worker::sampling

#endif  // ZFARM_WORKER_SAMPLING_SAMPLING_H_
