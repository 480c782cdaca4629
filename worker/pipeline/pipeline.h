#ifndef ZFARM_WORKER_PIPELINE_PIPELINE_H_
#define ZFARM_WORKER_PIPELINE_PIPELINE_H_

// The Z-Image-Turbo text-to-image pipeline (worker/model/README.md, "Pipeline"): tokenize -> Qwen3 text
// encoder -> flow-matching DiT loop -> VAE decode -> 8-bit RGB. Torch-free
// header (pimpl); libtorch stays private to the implementation.
//
//   PipelineOptions opts;
//   opts.model_dir = "/models/Z-Image-Turbo";
//   opts.device = "cuda:0";
//   ZFARM_ASSIGN_OR_RETURN(std::unique_ptr<Pipeline> p, Pipeline::Create(opts));
//   GenerateRequest req;
//   req.prompt = "a red fox in the snow";
//   req.seed = 42;
//   ZFARM_ASSIGN_OR_RETURN(Image img, p->Generate(req, nullptr, nullptr));
//
// Thread-safety: a Pipeline is used by one thread at a time (the worker's
// inference thread, the one that owns the device). CancelToken::Cancel may be called from any
// thread.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/io/model_config.h"
#include "worker/pipeline/request.h"

namespace zfarm::worker {

struct PipelineOptions {
  // Model folder in the diffusers layout. Required unless random_weights.
  std::string model_dir;
  // "cpu" or "cuda:N".
  std::string device = "cpu";
  // Compute precision: kAuto = float32 on CPU, bfloat16 on CUDA. kFp8 (`--precision fp8`):
  // the DiT's attention and FFN matmuls in e4m3 FP8 (the recipe of worker/model/fp8.h),
  // everything else bfloat16; only on CUDA devices of compute capability >= 8.9 (Create()
  // fails naming the flag and the capability elsewhere) unless fp8_reference.
  enum class Precision { kAuto, kFloat32, kBFloat16, kFp8 };
  Precision precision = Precision::kAuto;
  // kFp8 on the CPU for tests and `zfarm-worker compare`: the same quantized weights and
  // activations through fp8.h's float32 reference matmul, bf16 elsewhere (slow).
  bool fp8_reference = false;
  // Run the VAE in float32 even when the rest runs in bf16 (the official repo's choice).
  bool vae_fp32 = false;
  // Keep the text encoder on the CPU and run it there (the device holds only the
  // DiT and the VAE; a new prompt costs a CPU encode, a cached one nothing).
  bool offload_text_encoder = false;
  // Folder of weight copies (zfarm-worker cache-weights, worker/io/weights_cache.h):
  // when the compute dtype is bf16 and a current bf16 copy of the DiT is there, it is
  // read instead of the float32 shards (half the bytes); with kFp8 its FP8 copy (about a
  // quarter). A damaged copy falls back to the source with a warning. Empty = off.
  std::string weights_cache_dir;
  // Decode the VAE in overlapping latent tiles (diffusers' tiled_decode blending).
  bool vae_tiling = false;
  int vae_tile_latent = 64;   // tile side in latent pixels (64 -> 512 px)
  int vae_tile_overlap = 16;  // overlap in latent pixels (25 %)
  // Benchmarks/tests: build the architecture of `config` with deterministic
  // random weights instead of reading model_dir's weights. If model_dir is
  // empty, requests must carry prompt_ids (no tokenizer).
  bool random_weights = false;
  // Speed paths, on by default; benchmarks switch them off to measure each.
  // Fused projections (one GEMM for q/k/v and one for w1/w3) and, on CUDA in bf16,
  // the fused kernels of worker/model/fused_ops.h.
  bool fused_ops = true;
  // CUDA: replay each DiT step from a CUDA graph captured on first use per (image
  // size, caption length rounded up to 32) and kept for the next jobs of that
  // shape (at most max_cuda_graphs, least recently used dropped first). Capture
  // costs about two extra DiT evaluations on the first job of a shape.
  bool cuda_graphs = true;
  int max_cuda_graphs = 4;
  // CUDA: let cuDNN benchmark convolution algorithms (the VAE) per shape.
  bool cudnn_benchmark = true;
  // CUDA: run the VAE decoder in channels-last memory format.
  bool vae_channels_last = false;
  // CUDA: cap this process's share of the device memory (0 = no cap), e.g.
  // to share a GPU or to provoke out-of-memory in tests.
  double max_device_memory_fraction = 0;
  std::optional<ModelConfig> config;
  uint64_t random_weights_seed = 0;
  // A Z-Image-Turbo-Fun-Controlnet-Union (1.0, 2.0 or 2.1; a diffusers folder or the single
  // .safetensors file) kept resident beside the DiT for requests with `control`. Empty = none.
  std::string controlnet;
  // Benchmarks/tests with random_weights: a ControlNet of this configuration with random
  // weights instead of reading `controlnet`.
  std::optional<ControlNetConfig> random_controlnet;
};

// Optional intermediate tensors (float32, flattened) for parity tests.
struct GenerateTrace {
  std::vector<int32_t> ids;
  std::vector<float> caption;               // [L, cap_feat_dim]
  std::vector<float> noise;                 // the noise draw (text-to-image: the initial latents)
  std::vector<float> init_image;            // image-to-image: preprocessed [1, 3, H, W] in [-1, 1]
  std::vector<float> image_latents;         // image-to-image: encoded, shifted, scaled [1, C, h, w]
  std::vector<float> latents0;              // image-to-image: the noised start [1, C, h, w]
  std::vector<float> mask;                  // inpainting: binarised [1, 1, H, W]
  std::vector<std::vector<float>> t_emb;    // adaLN input of every step [adaln_dim]
  std::vector<float> dit_out0;              // first DiT output (positive branch) [C, 1, h, w]
  std::vector<std::vector<float>> latents;  // after every step
  std::vector<float> decoded;               // VAE output [3, H, W] before post-processing
  std::vector<float> control_context;       // ControlNet: [1, control_in_dim, 1, h, w]
  std::vector<float> control_hint0;         // ControlNet: first step's first hint [1, S, dim]
};

class Pipeline {
 public:
  // Loads configs, tokenizer and weights (strict) onto the device.
  // INVALID_ARGUMENT: bad device string / options, missing component (named),
  // wrong-shaped weights (key, expected and found). RESOURCE_EXHAUSTED: out of memory.
  static absl::StatusOr<std::unique_ptr<Pipeline>> Create(const PipelineOptions& options);
  ~Pipeline();

  // Renders one image. INVALID_ARGUMENT for sizes not multiples of 16 or
  // outside 16..8192, steps outside 1..50, an empty prompt without ids, an init picture
  // whose rounded size differs from width x height, a mask without an init picture, a
  // strength outside (0, 1], a control request without a loaded ControlNet, with a bad
  // picture, a scale outside [0, 2], start/end outside 0 <= start < end <= 1, with
  // init_image but no mask_image, or inpainting with a 1.0 ControlNet (each message names
  // the field and the limit), a bad
  // LoRA (count, scale, unreadable or damaged file, a key or shape that does not
  // fit the model: the message names the file and key; the weights stay as they were);
  // CANCELLED if `cancel` fires (checked between steps); RESOURCE_EXHAUSTED on
  // device out-of-memory (the message names the size and suggests a memory
  // mode; the pipeline stays usable). A prompt longer than 512 tokens is
  // truncated and Image::prompt_truncated says so. `on_step`, `cancel` and
  // `trace` may be null.
  absl::StatusOr<Image> Generate(const GenerateRequest& request, const StepCallback& on_step,
                                 const CancelToken* cancel, GenerateTrace* trace = nullptr);

  // Time Create() took, in seconds.
  double load_seconds() const;
  // The configuration in use.
  const ModelConfig& config() const;
  // A short description of the device, dtypes and speed paths for people
  // ("cuda:0 BFloat16, vae BFloat16, fused projections"); programs read compute_dtype().
  std::string Describe() const;
  // The precision the text encoder and the DiT compute in: kFloat32, kBFloat16 or kFp8,
  // never kAuto (resolved for the device at Create()).
  PipelineOptions::Precision compute_dtype() const;
  // Synchronise device work after each step to time it (slower; off by default).
  void set_time_steps(bool on);

  // Tokenizes and encodes `request`'s prompt (and its negative prompt when
  // guidance > 0) now, and keeps the caption for Generate(): the worker calls it
  // between steps of the running job so the next job starts with its caption
  // ready. The last kCaptionCacheSize captions are kept, so a seed sweep over one
  // prompt encodes it once. A no-op with offload_text_encoder (a CPU encode
  // between steps would stall the device). Same thread rules as Generate().
  absl::Status PrepareCaption(const GenerateRequest& request);
  static constexpr int kCaptionCacheSize = 8;

  // Names of the LoRAs applied to the DiT now (those of the last request), in order.
  std::vector<std::string> active_loras() const;
  // The resident ControlNet's configuration; nullptr without one.
  const ControlNetConfig* controlnet() const;

  class Impl;

 private:
  explicit Pipeline(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The precision's name as results, the worker's hello and image metadata report it:
// "float32", "bfloat16", "fp8" ("auto" for kAuto).
const char* PrecisionName(PipelineOptions::Precision precision);
// A `--precision` value: "fp8", "bf16" or "fp32"; INVALID_ARGUMENT naming the flag otherwise.
absl::StatusOr<PipelineOptions::Precision> ParsePrecision(const std::string& value);

// Post-processing on float32 CHW values in [-1, 1]:
// round_half_even(clamp(x * 0.5 + 0.5, 0, 1) * 255) -> uint8 HWC.
std::vector<uint8_t> ToRgb8(const float* chw, int height, int width);

// Draws the initial latents as the reference does: float32 randn of shape
// [1, 16, h/8, w/8] from a generator seeded with `seed` on `device` ("cpu":
// torch.Generator("cpu").manual_seed(seed) numbers). Returned flattened.
absl::StatusOr<std::vector<float>> InitialNoise(uint64_t seed, const std::vector<int64_t>& shape,
                                                const std::string& device);

}  // namespace zfarm::worker

#endif  // ZFARM_WORKER_PIPELINE_PIPELINE_H_
