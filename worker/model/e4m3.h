#ifndef ZFARM_WORKER_MODEL_E4M3_H_
#define ZFARM_WORKER_MODEL_E4M3_H_

// The FP8 mode's number format, float8 e4m3fn (4 exponent bits, 3 mantissa bits, no
// infinities, largest finite value 448), and its per-row activation scale: torch-free, so
// the CUDA kernels (fused_kernels.cu) and the ATen reference (fp8.cc) share one definition.
//
//   scale_r = max(max_i |x[r, i]|, kE4m3MinAmax) * kE4m3InvMax   (float32)
//   q[r, i] = e4m3fn(clamp(x[r, i] / scale_r, -kE4m3Max, kE4m3Max))   (round to nearest even)

namespace zfarm::worker::model {

inline constexpr float kE4m3Max = 448.0f;
inline constexpr float kE4m3InvMax = 1.0f / 448.0f;
// Keeps an all-zero row's scale positive (its values quantize to 0 whatever the scale).
inline constexpr float kE4m3MinAmax = 1e-12f;

}  // namespace zfarm::worker::model

#endif  // ZFARM_WORKER_MODEL_E4M3_H_
