#include "worker/pipeline/pipeline.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <glog/logging.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <deque>
#include <filesystem>
#include <list>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "proto/base/picture_size.h"
#include "proto/base/status_macros.h"
#include "worker/io/image_ops.h"
#include "worker/io/model_folder.h"
#include "worker/io/safetensors.h"
#include "worker/io/weights_cache.h"
#include "worker/model/controlnet.h"
#include "worker/model/fp8.h"
#include "worker/model/fp8_cache.h"
#include "worker/model/fused_ops.h"
#include "worker/model/lora.h"
#include "worker/model/modules.h"
#include "worker/model/weights.h"
#include "worker/sampling/sampling.h"
#include "worker/text/tokenizer.h"

#ifdef ZFARM_TORCH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace zfarm::worker {

// The sampler formulas of worker/sampling run on whole latents: min(v, 1) on the device.
template <>
struct sampling::ValueOps<at::Tensor> {
  static at::Tensor MinOne(const at::Tensor& v) { return v.clamp_max(1.0); }
};

namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

absl::StatusOr<at::Device> ParseDevice(const std::string& s) {
  if (s == "cpu") return at::Device(at::kCPU);
  int index = -1;
  if (absl::StartsWith(s, "cuda:") && absl::SimpleAtoi(s.substr(5), &index) && index >= 0) {
    if (!at::hasCUDA()) {
      return absl::InvalidArgumentError(
          absl::StrCat("device '", s, "': this build or host has no CUDA support"));
    }
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("device '", s, "': expected \"cpu\" or \"cuda:N\""));
}

std::vector<float> ToVector(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU, at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// A fresh generator of the device's kind seeded like torch.Generator(dev).manual_seed(seed).
at::Generator SeededGenerator(uint64_t seed, const at::Device& device) {
  at::Generator gen = at::globalContext().defaultGenerator(device).clone();
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(seed);
  }
  return gen;
}

at::Tensor DrawNoise(uint64_t seed, const std::vector<int64_t>& shape, const at::Device& device) {
  at::Generator gen = SeededGenerator(seed, device);
  return at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat).device(device));
}

// VaeImageProcessor.preprocess of a picture: Lanczos resize to width x height (none at the
// same size), float32 u8 / 255, then 2x - 1. [1, 3, H, W] float32 on the CPU.
at::Tensor PreprocessImage(const InputPicture& p, int width, int height) {
  const std::vector<uint8_t> px = ResizeLanczos(p.rgb, p.width, p.height, 3, width, height);
  at::Tensor t = at::empty({1, 3, height, width}, at::kFloat);
  float* out = t.data_ptr<float>();
  const size_t plane = static_cast<size_t>(width) * height;
  for (size_t i = 0; i < plane; ++i) {
    for (int c = 0; c < 3; ++c) {
      const float v = static_cast<float>(px[i * 3 + c]) / 255.0f;
      out[c * plane + i] = 2.0f * v - 1.0f;
    }
  }
  return t;
}

// The mask processor (do_normalize=False, do_binarize=True, do_convert_grayscale=True):
// Lanczos resize of the RGB mask, then grey, then u8 / 255 >= 0.5. [1, 1, H, W] of 0/1.
at::Tensor PreprocessMask(const InputPicture& p, int width, int height) {
  const std::vector<uint8_t> grey =
      RgbToGrey(ResizeLanczos(p.rgb, p.width, p.height, 3, width, height));
  at::Tensor t = at::empty({1, 1, height, width}, at::kFloat);
  float* out = t.data_ptr<float>();
  for (size_t i = 0; i < grey.size(); ++i) {
    out[i] = static_cast<float>(grey[i]) / 255.0f >= 0.5f ? 1.0f : 0.0f;
  }
  return t;
}

int64_t PeakBytes(const at::Device& device) {
#ifdef ZFARM_TORCH_CUDA
  if (device.is_cuda()) {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return stats.allocated_bytes[0].peak;
  }
#endif
  (void)device;
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

void ResetPeak(const at::Device& device) {
#ifdef ZFARM_TORCH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
  (void)device;
}

void ReleaseCache(const at::Device& device) {
#ifdef ZFARM_TORCH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
  (void)device;
}

// The ControlNet's inputs for one DiT evaluation (undefined context = no ControlNet).
struct ControlInput {
  at::Tensor context;  // [control_in_dim, 1, h, w] in the DiT dtype
  at::Tensor scale;    // 0-dim float32 on the device
};

// One DiT evaluation (with the ControlNet when `control` is set) captured as a CUDA graph,
// with its static inputs and output.
struct DitGraph {
#ifdef ZFARM_TORCH_CUDA
  at::cuda::CUDAGraph graph;
#endif
  at::Tensor latent, t, cap, cap_valid, out;
  ControlInput control;
};

// Whether the ControlNet runs on step i of n (control_guidance_start/end).
bool ControlKept(int i, int n, float start, float end) {
  const double a = static_cast<double>(i) / n, b = static_cast<double>(i + 1) / n;
  return !(a < start || b > end);
}

// Marks the end of each denoising step on the device so that progress is
// reported when a step has finished while the next one is already queued (the
// host never drains the device inside the loop). No-op on the CPU.
class StepFence {
 public:
  StepFence(const at::Device& device, int steps) {
#ifdef ZFARM_TORCH_CUDA
    if (device.is_cuda()) events_.resize(steps);
#endif
    (void)device;
    (void)steps;
  }
  bool active() const { return !events_.empty(); }
  void Record(int k) {
#ifdef ZFARM_TORCH_CUDA
    if (active()) events_[k].record();
#endif
    (void)k;
  }
  void Wait(int k) {
#ifdef ZFARM_TORCH_CUDA
    if (active()) events_[k].synchronize();
#endif
    (void)k;
  }

 private:
#ifdef ZFARM_TORCH_CUDA
  std::vector<at::cuda::CUDAEvent> events_;
#else
  std::vector<int> events_;
#endif
};

}  // namespace

class Pipeline::Impl {
 public:
  PipelineOptions options;
  ModelConfig config;
  at::Device device{at::kCPU};
  at::ScalarType dtype = at::kFloat;
  at::ScalarType vae_dtype = at::kFloat;
  std::unique_ptr<text::Tokenizer> tokenizer;
  model::TextEncoder text_encoder{nullptr};
  model::Transformer transformer{nullptr};
  model::VaeDecoder vae{nullptr};
  model::VaeEncoder vae_encoder{nullptr};  // image-to-image and inpainting
  model::ControlNet controlnet{nullptr};    // PipelineOptions::controlnet
  std::unique_ptr<model::LoraApplier> loras;  // after Specialise()
  double load_seconds = 0;
  bool cache_hit = false;  // the DiT came from the bf16 (or, with fp8, the FP8) weights cache
  bool fp8 = false;        // PipelineOptions::Precision::kFp8
  int fp8_layers = 0;      // Linear layers in FP8 (the recipe's)
  bool time_steps = false;
  // Recently encoded captions (token ids -> [L, cap_feat_dim] on the device), newest last.
  std::deque<std::pair<std::vector<int32_t>, at::Tensor>> captions;
  // Captured DiT graphs by (latent h, latent w, padded caption length, with the ControlNet),
  // newest last, and the shapes whose capture failed (they run eagerly).
  using GraphKey = std::tuple<int64_t, int64_t, int64_t, bool>;
  std::list<std::pair<GraphKey, std::unique_ptr<DitGraph>>> graphs;
  std::set<GraphKey> graph_failed;

  absl::Status Load();
  // compute_dtype(): kFp8 with fp8, else the dtype's.
  PipelineOptions::Precision Precision() const;
  // Load's steps: the device, dtypes and memory cap; the options, configs and tokenizer
  // checked; the modules allocated (random weights filled in); the weights read
  // strictly, component by component (the DiT from the bf16 cache when current).
  absl::Status ConfigureDevice();
  // kFp8: OK where the device runs FP8 GEMMs (or the CPU with fp8_reference).
  absl::Status CheckFp8();
  absl::Status LoadConfig();
  absl::Status CreateModules();
  absl::Status LoadTextEncoderWeights();
  absl::Status LoadTransformerWeights();
  // A fresh, unloaded DiT module in place of `transformer`.
  absl::Status NewTransformer();
  absl::Status LoadVaeWeights();
  absl::Status LoadControlNetWeights();  // PipelineOptions::controlnet, when set
  // After the weights are in: fused projections, kernels, cuDNN and layout choices.
  absl::Status Specialise();
  absl::StatusOr<Image> Run(const GenerateRequest& r, const StepCallback& on_step,
                            const CancelToken* cancel, GenerateTrace* trace);

  // Run's stages.
  // The request's LoRA set applied to the DiT (a no-op when it already is); the
  // result's LoRAs with their sha256.
  absl::Status ApplyLoras(const GenerateRequest& r, Image* img);
  // The sigmas, the first step that runs (image-to-image) and the guidance settings.
  struct Schedule {
    std::vector<float> sigmas;
    int t_start = 0;
    int steps = 0;
    sampling::CfgOptions cfg;
    bool any_cfg = false;  // some step runs the negative branch
  };
  absl::StatusOr<Schedule> MakeSchedule(const GenerateRequest& r);
  // The latents the loop starts from: the seed's noise, or the init picture encoded
  // and noised to the first kept step (with the noise and mask inpainting re-applies).
  struct Latents {
    at::Tensor x, noise, image_latents, mask;
    ControlInput ctl;  // ControlNet jobs: the control context and scale (StartControl)
  };
  Latents StartLatents(const GenerateRequest& r, const Schedule& sc, GenerateTrace* trace,
                       Image* img);
  // ControlNet jobs: the control context into l->ctl (ControlContext), timed as the image
  // encode; a no-op without r.control.
  absl::Status StartControl(const GenerateRequest& r, Latents* l, GenerateTrace* trace, Image* img);
  // The captions padded for the DiT (the negative one only when guidance runs).
  struct Captions {
    at::Tensor cap, cap_valid, neg, neg_valid;
  };
  // The DiT steps of the schedule on `l.x`; CANCELLED at a step boundary.
  absl::Status Denoise(const GenerateRequest& r, const Schedule& sc, const Captions& caps,
                       Latents& l, const StepCallback& on_step, const CancelToken* cancel,
                       GenerateTrace* trace, Image* img);
  // VAE decode (tiled when asked) and diffusers' post-processing to 8-bit RGB HWC.
  std::vector<uint8_t> Decode(at::Tensor x, GenerateTrace* trace);
  absl::StatusOr<text::PromptTokens> Tokens(const std::string& prompt,
                                            const std::vector<int32_t>& ids);
  at::Tensor Encode(const std::vector<int32_t>& ids);
  // Encode() through the caption cache.
  at::Tensor CachedEncode(const std::vector<int32_t>& ids);
  bool Cached(const std::vector<int32_t>& ids) const;
  // One DiT evaluation: replayed from a CUDA graph when enabled, else eager.
  // cap/cap_valid from TransformerImpl::PadCaption. The result may be a static
  // buffer overwritten by the next call: consume it before.
  at::Tensor Dit(const at::Tensor& xin, float t_in, const at::Tensor& cap,
                 const at::Tensor& cap_valid, const ControlInput& control);
  // The eager evaluation Dit() replays: the DiT alone, or the ControlNet's hints added to it.
  at::Tensor Step(const at::Tensor& xin, const at::Tensor& t, const at::Tensor& cap,
                  const at::Tensor& cap_valid, const ControlInput& control);
  // The graph for this shape, captured now if new; nullptr if capture failed.
  DitGraph* Graph(const at::Tensor& xin, const at::Tensor& cap, const at::Tensor& cap_valid,
                  const ControlInput& control);
  // ControlNet: the control context of `r` ([1, control_in_dim, h, w] in the DiT dtype).
  absl::StatusOr<at::Tensor> ControlContext(const GenerateRequest& r, int64_t lh, int64_t lw);
  // VAE-encoded latent mean of a preprocessed picture, shifted and scaled (retrieve_latents
  // with sample_mode="argmax"), in the VAE dtype.
  at::Tensor EncodeMean(const at::Tensor& pre);
};

at::Tensor Pipeline::Impl::Dit(const at::Tensor& xin, float t_in, const at::Tensor& cap,
                               const at::Tensor& cap_valid, const ControlInput& control) {
  if (options.cuda_graphs && device.is_cuda()) {
    if (DitGraph* g = Graph(xin, cap, cap_valid, control); g != nullptr) {
      g->latent.copy_(xin);
      g->t.fill_(t_in);
      g->cap.copy_(cap);
      g->cap_valid.copy_(cap_valid);
      if (control.context.defined()) {
        g->control.context.copy_(control.context);
        g->control.scale.copy_(control.scale);
      }
#ifdef ZFARM_TORCH_CUDA
      g->graph.replay();
#endif
      return g->out;
    }
  }
  return Step(xin, at::full({1}, t_in, xin.options().dtype(at::kFloat)), cap, cap_valid, control);
}

at::Tensor Pipeline::Impl::Step(const at::Tensor& xin, const at::Tensor& t, const at::Tensor& cap,
                                const at::Tensor& cap_valid, const ControlInput& control) {
  if (!control.context.defined()) return transformer->Forward(xin, t, cap, cap_valid);
  model::DitTokens tok = transformer->Embed(xin, t, cap, cap_valid);
  at::Tensor x = transformer->RefineImage(tok, nullptr);
  std::vector<at::Tensor> hints =
      controlnet->forward(*transformer, tok, x, control.context, control.scale);
  return transformer->Finish(tok, x, &hints);
}

DitGraph* Pipeline::Impl::Graph(const at::Tensor& xin, const at::Tensor& cap,
                                const at::Tensor& cap_valid, const ControlInput& control) {
  const GraphKey key{xin.size(2), xin.size(3), cap.size(0), control.context.defined()};
  for (auto it = graphs.begin(); it != graphs.end(); ++it) {
    if (it->first == key) {
      graphs.splice(graphs.end(), graphs, it);
      return graphs.back().second.get();
    }
  }
  if (graph_failed.count(key) > 0) return nullptr;
#ifdef ZFARM_TORCH_CUDA
  const auto t0 = Clock::now();
  auto g = std::make_unique<DitGraph>();
  g->latent = xin.clone();
  g->t = at::full({1}, 0.5f, xin.options().dtype(at::kFloat));
  g->cap = cap.clone();
  g->cap_valid = cap_valid.clone();
  if (control.context.defined()) {
    g->control.context = control.context.clone();
    g->control.scale = control.scale.clone();
  }
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, device.index());
  try {
    c10::cuda::getCurrentCUDAStream(device.index()).synchronize();
    {
      c10::cuda::CUDAStreamGuard guard(side);
      // Warm-up on the capture stream: cuBLAS workspaces, cuDNN plans.
      (void)Step(g->latent, g->t, g->cap, g->cap_valid, g->control);
      side.synchronize();
      g->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      g->out = Step(g->latent, g->t, g->cap, g->cap_valid, g->control);
      g->graph.capture_end();
    }
    side.synchronize();
  } catch (const c10::Error& e) {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(side.stream(), &status) == cudaSuccess &&
        status != cudaStreamCaptureStatusNone) {
      cudaGraph_t stray = nullptr;
      (void)cudaStreamEndCapture(side.stream(), &stray);
      if (stray != nullptr) (void)cudaGraphDestroy(stray);
    }
    (void)cudaGetLastError();
    graph_failed.insert(key);
    LOG(WARNING) << "event=cuda_graph_capture_failed latent=" << std::get<0>(key) << "x"
                 << std::get<1>(key) << " caption_rows=" << std::get<2>(key) << " error=\""
                 << e.what_without_backtrace() << "\" fallback=eager";
    return nullptr;
  }
  LOG(INFO) << "event=cuda_graph_captured latent=" << std::get<0>(key) << "x" << std::get<1>(key)
            << " caption_rows=" << std::get<2>(key) << " controlnet=" << std::get<3>(key)
            << " ms=" << static_cast<int64_t>(Seconds(t0, Clock::now()) * 1000)
            << " cached=" << graphs.size() + 1;
  graphs.emplace_back(key, std::move(g));
  while (graphs.size() > static_cast<size_t>(std::max(1, options.max_cuda_graphs))) {
    graphs.pop_front();
  }
  return graphs.back().second.get();
#else
  (void)cap_valid;
  (void)control;
  graph_failed.insert(key);
  return nullptr;
#endif
}

absl::Status Pipeline::Impl::Load() {
  ZFARM_RETURN_IF_ERROR(ConfigureDevice());
  ZFARM_RETURN_IF_ERROR(LoadConfig());
  ZFARM_RETURN_IF_ERROR(CreateModules());
  if (!options.random_weights) {
    ZFARM_RETURN_IF_ERROR(LoadTextEncoderWeights());
    ZFARM_RETURN_IF_ERROR(LoadTransformerWeights());
    ZFARM_RETURN_IF_ERROR(LoadVaeWeights());
    ZFARM_RETURN_IF_ERROR(LoadControlNetWeights());
  }
  return Specialise();
}

absl::Status Pipeline::Impl::ConfigureDevice() {
  ZFARM_ASSIGN_OR_RETURN(device, ParseDevice(options.device));
  switch (options.precision) {
    case PipelineOptions::Precision::kAuto:
      dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
      break;
    case PipelineOptions::Precision::kFloat32:
      dtype = at::kFloat;
      break;
    case PipelineOptions::Precision::kBFloat16:
      dtype = at::kBFloat16;
      break;
    case PipelineOptions::Precision::kFp8:
      fp8 = true;
      dtype = at::kBFloat16;  // everything outside the FP8 layers, on every device
      ZFARM_RETURN_IF_ERROR(CheckFp8());
      break;
  }
  vae_dtype = options.vae_fp32 ? at::kFloat : dtype;
  if (options.max_device_memory_fraction < 0 || options.max_device_memory_fraction > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_device_memory_fraction must be within 0..1, got ",
                     options.max_device_memory_fraction));
  }
#ifdef ZFARM_TORCH_CUDA
  if (device.is_cuda() && options.max_device_memory_fraction > 0) {
    try {
      // The caching allocator initialises lazily: allocate once before capping it.
      (void)at::empty({1}, at::TensorOptions().device(device));
      c10::cuda::CUDACachingAllocator::setMemoryFraction(options.max_device_memory_fraction,
                                                         device.index());
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat("setting the device memory fraction: ", e.what_without_backtrace()));
    }
  }
#endif
  return absl::OkStatus();
}

absl::Status Pipeline::Impl::CheckFp8() {
  if (!device.is_cuda()) {
    if (options.fp8_reference) return absl::OkStatus();
    return model::CheckFp8Device(options.device, "", 0, 0);
  }
  std::string name;
  int major = 0, minor = 0;
#ifdef ZFARM_TORCH_CUDA
  try {
    const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device.index());
    name = prop->name;
    major = prop->major;
    minor = prop->minor;
  } catch (const c10::Error& e) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--precision fp8: cannot query ", options.device, ": ", e.what_without_backtrace()));
  }
#endif
  return model::CheckFp8Device(options.device, name, major, minor);
}

absl::Status Pipeline::Impl::LoadConfig() {
  if (options.vae_tile_latent < 8 || options.vae_tile_overlap < 0 ||
      options.vae_tile_overlap >= options.vae_tile_latent) {
    return absl::InvalidArgumentError(
        absl::StrCat("vae tiling: need tile >= 8 and 0 <= overlap < tile latent pixels, got tile=",
                     options.vae_tile_latent, " overlap=", options.vae_tile_overlap));
  }
  if (options.random_weights && options.config.has_value()) {
    config = *options.config;
  } else if (!options.model_dir.empty()) {
    ZFARM_ASSIGN_OR_RETURN(config, LoadModelConfig(options.model_dir));
  } else if (!options.random_weights) {
    return absl::InvalidArgumentError("PipelineOptions: model_dir is required");
  }
  ZFARM_RETURN_IF_ERROR(ValidateModelConfig(config));
  if (!config.tokenizer_json_path.empty() && std::filesystem::exists(config.tokenizer_json_path)) {
    ZFARM_ASSIGN_OR_RETURN(tokenizer, text::Tokenizer::FromFile(config.tokenizer_json_path));
  } else if (!options.random_weights) {
    return absl::InvalidArgumentError(
        absl::StrCat("model folder ", options.model_dir, ": missing tokenizer/tokenizer.json"));
  }
  return absl::OkStatus();
}

absl::Status Pipeline::Impl::CreateModules() {
  try {
    at::NoGradGuard no_grad;
    const at::Device te_device = options.offload_text_encoder ? at::Device(at::kCPU) : device;
    text_encoder =
        model::TextEncoder(config.text_encoder, at::TensorOptions().dtype(dtype).device(te_device));
    ZFARM_RETURN_IF_ERROR(NewTransformer());
    vae = model::VaeDecoder(config.vae, at::TensorOptions().dtype(vae_dtype).device(device));
    vae_encoder =
        model::VaeEncoder(config.vae, at::TensorOptions().dtype(vae_dtype).device(device));
    if (options.random_weights) {
      model::InitRandom(*text_encoder, options.random_weights_seed);
      model::InitRandom(*transformer, options.random_weights_seed + 1);
      model::InitRandom(*vae, options.random_weights_seed + 2);
      model::InitRandom(*vae_encoder, options.random_weights_seed + 3);
      if (options.random_controlnet.has_value()) {
        controlnet = model::ControlNet(*options.random_controlnet, config.transformer,
                                       at::TensorOptions().dtype(dtype).device(device));
        model::InitRandom(*controlnet, options.random_weights_seed + 4);
      }
    }
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "out of memory allocating the model on ", options.device, "; try --offload-text-encoder"));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("creating the model: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status Pipeline::Impl::LoadTextEncoderWeights() {
  const std::string& dir = options.model_dir;
  ZFARM_ASSIGN_OR_RETURN(auto ws, WeightSet::Open(dir + "/text_encoder"));
  model::LoadSpec spec;
  spec.component = "text_encoder";
  spec.key_map = [](std::string_view k) { return std::string(StripModelPrefix(k)); };
  model::TextEncoderImpl* te = text_encoder.get();
  spec.ignore = [te](const std::string& k) { return te->IsUnusedKey(k); };
  return model::LoadWeights(*text_encoder, *ws, spec);
}

absl::Status Pipeline::Impl::LoadTransformerWeights() {
  const std::string& dir = options.model_dir;
  model::LoadSpec spec;
  spec.component = "transformer";
  const std::string source = dir + "/transformer";
  // A current copy (--weights-cache) when computing in bf16 (the bf16 copy) or fp8 (the
  // FP8 copy); anything wrong with it (damaged, incomplete) falls back to the source
  // with a warning.
  if (!options.weights_cache_dir.empty() && dtype == at::kBFloat16) {
    const char* kind = fp8 ? model::kFp8CacheKind : "bf16";
    absl::StatusOr<std::string> cached = WeightsCacheDir(options.weights_cache_dir, source, kind);
    const bool present = cached.ok() && WeightsCachePresent(*cached);
    absl::Status s = cached.status();
    if (present) {
      if (fp8) model::PrepareFp8Layers(*transformer);
      auto ws = WeightSet::Open(*cached);
      s = ws.ok() ? model::LoadWeights(*transformer, **ws, spec) : ws.status();
      cache_hit = s.ok();
      // The FP8 layers hold bytes now: the source needs the module as created.
      if (!cache_hit && fp8) ZFARM_RETURN_IF_ERROR(NewTransformer());
    }
    LOG(INFO) << "event=weights_cache component=transformer kind=" << kind
              << " dir=" << (cached.ok() ? *cached : options.weights_cache_dir) << " result="
              << (cache_hit ? "hit"
                  : present ? "unusable"
                            : "miss");
    if (present && !cache_hit) {
      LOG(WARNING) << "event=weights_cache_unusable kind=" << kind << " error=\"" << s.message()
                   << "\" (loading the source; rerun zfarm-worker cache-weights"
                   << (fp8 ? " --precision fp8" : "") << ")";
    }
  }
  if (!cache_hit) {
    ZFARM_ASSIGN_OR_RETURN(auto ws, WeightSet::Open(source));
    ZFARM_RETURN_IF_ERROR(model::LoadWeights(*transformer, *ws, spec));
  }
  return absl::OkStatus();
}

absl::Status Pipeline::Impl::NewTransformer() {
  try {
    at::NoGradGuard no_grad;
    transformer = model::Transformer(config.transformer,
                                     at::TensorOptions().dtype(dtype).device(device));
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("out of memory allocating the DiT on ", options.device));
  }
  return absl::OkStatus();
}

absl::Status Pipeline::Impl::LoadVaeWeights() {
  const std::string& dir = options.model_dir;
  ZFARM_ASSIGN_OR_RETURN(auto ws, WeightSet::Open(dir + "/vae"));
  model::LoadSpec spec;
  spec.component = "vae";
  model::VaeDecoderImpl* v = vae.get();
  spec.ignore = [v](const std::string& k) { return v->IsUnusedKey(k); };
  ZFARM_RETURN_IF_ERROR(model::LoadWeights(*vae, *ws, spec));
  model::VaeEncoderImpl* e = vae_encoder.get();
  spec.ignore = [e](const std::string& k) { return e->IsUnusedKey(k); };
  return model::LoadWeights(*vae_encoder, *ws, spec);
}

absl::Status Pipeline::Impl::LoadControlNetWeights() {
  if (options.controlnet.empty()) return absl::OkStatus();
  ZFARM_ASSIGN_OR_RETURN(ControlNetConfig cc,
                         ReadControlNetConfig(options.controlnet, config.transformer));
  try {
    at::NoGradGuard no_grad;
    controlnet = model::ControlNet(cc, config.transformer,
                                   at::TensorOptions().dtype(dtype).device(device));
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "out of memory allocating the ControlNet on ", options.device,
        "; try --offload-text-encoder"));
  }
  ZFARM_RETURN_IF_ERROR(model::LoadControlNet(*controlnet, options.controlnet));
  LOG(INFO) << "event=controlnet_loaded path=" << options.controlnet
            << " layout=" << ControlNetLayoutName(cc.layout) << " config=\"" << cc.source
            << "\" control_layers=" << cc.control_layers_places.size();
  return absl::OkStatus();
}

absl::Status Pipeline::Impl::Specialise() {
  try {
    at::NoGradGuard no_grad;
    // FP8: the recipe's layers quantized now, unless they came quantized from the cache.
    if (fp8) fp8_layers = model::QuantizeFp8Layers(*transformer);
    transformer->set_kernels(options.fused_ops);
    vae->set_kernels(options.fused_ops);
    vae_encoder->set_kernels(options.fused_ops);
    if (options.fused_ops) transformer->FuseProjections();
    if (controlnet) {
      controlnet->set_kernels(options.fused_ops);
      if (options.fused_ops) controlnet->FuseProjections();
    }
    loras = std::make_unique<model::LoraApplier>(*transformer);
    if (device.is_cuda()) {
      at::globalContext().setBenchmarkCuDNN(options.cudnn_benchmark);
      if (options.vae_channels_last) {
        for (at::Tensor& p : vae->parameters()) {
          if (p.dim() == 4) p.set_(p.contiguous(at::MemoryFormat::ChannelsLast));
        }
      }
    }
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("out of memory preparing the model on ", options.device));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("preparing the model: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::StatusOr<text::PromptTokens> Pipeline::Impl::Tokens(const std::string& prompt,
                                                          const std::vector<int32_t>& ids) {
  if (!ids.empty()) {
    text::PromptTokens t;
    t.ids = ids;
    t.untruncated_size = static_cast<int>(ids.size());
    if (t.ids.size() > static_cast<size_t>(text::kMaxPromptTokens)) {
      t.ids.resize(text::kMaxPromptTokens);
      t.truncated = true;
    }
    return t;
  }
  if (tokenizer == nullptr) {
    return absl::InvalidArgumentError("this pipeline has no tokenizer: pass prompt_ids");
  }
  return tokenizer->EncodePrompt(prompt, text::kMaxPromptTokens);
}

at::Tensor Pipeline::Impl::Encode(const std::vector<int32_t>& ids) {
  at::Tensor t = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong);
  c10::InferenceMode guard;
  return text_encoder(t).to(device);
}

bool Pipeline::Impl::Cached(const std::vector<int32_t>& ids) const {
  for (const auto& [k, v] : captions) {
    if (k == ids) return true;
  }
  return false;
}

at::Tensor Pipeline::Impl::CachedEncode(const std::vector<int32_t>& ids) {
  for (auto it = captions.begin(); it != captions.end(); ++it) {
    if (it->first == ids) {
      auto entry = std::move(*it);
      captions.erase(it);
      captions.push_back(std::move(entry));
      return captions.back().second;
    }
  }
  at::Tensor cap = Encode(ids);
  captions.emplace_back(ids, cap);
  while (captions.size() > static_cast<size_t>(Pipeline::kCaptionCacheSize)) captions.pop_front();
  return cap;
}

at::Tensor Pipeline::Impl::EncodeMean(const at::Tensor& pre) {
  at::Tensor mean = vae_encoder(pre.to(device, vae_dtype)).chunk(2, 1)[0];
  return (mean - config.vae.shift_factor) * config.vae.scaling_factor;
}

absl::StatusOr<at::Tensor> Pipeline::Impl::ControlContext(const GenerateRequest& r, int64_t lh,
                                                          int64_t lw) {
  // ZImageControlNetPipeline / ZImageControlNetInpaintPipeline: the control picture resized to
  // the request's size and VAE-encoded (argmax), kept in the VAE dtype as diffusers does.
  const int64_t c = config.transformer.in_channels, want = controlnet->config().control_in_dim;
  at::Tensor ctl = EncodeMean(PreprocessImage(r.control->image, r.width, r.height));
  if (r.mask_image.has_value()) {
    if (want != 2 * c + 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "control: inpainting with a ControlNet needs a Union 2.x ControlNet (control_in_dim ",
          2 * c + 1, "); the loaded one is ", ControlNetLayoutName(controlnet->config().layout),
          " with control_in_dim ", want));
    }
    // The mask processor's binarised mask; the init picture with the repainted region
    // blanked (0 in [-1, 1]), encoded; the kept region (1 - mask) at latent size.
    at::Tensor m = PreprocessMask(*r.mask_image, r.width, r.height);
    at::Tensor init = PreprocessImage(*r.init_image, r.width, r.height) * m.lt(0.5);
    at::Tensor init_lat = EncodeMean(init);
    const std::vector<int64_t> size = {lh, lw};
    at::Tensor keep = at::upsample_nearest2d(1 - m, at::IntArrayRef(size)).to(device, vae_dtype);
    ctl = at::cat({ctl, keep, init_lat}, 1);
  } else if (want > c) {
    // Union 2.x without inpainting: the missing channels are zeros.
    ctl = at::cat({ctl, at::zeros({1, want - c, lh, lw}, ctl.options())}, 1);
  } else if (want != c) {
    return absl::InvalidArgumentError(absl::StrCat("control: the ControlNet's control_in_dim ",
                                                   want, " is below the latent channels ", c));
  }
  return ctl.to(dtype);
}

absl::Status Pipeline::Impl::ApplyLoras(const GenerateRequest& r, Image* img) {
  if (fp8 && !r.loras.empty()) {
    // The applier merges into bf16 weights; the FP8 layers hold e4m3 bytes.
    return absl::InvalidArgumentError(
        "loras: not supported with --precision fp8 (render LoRA jobs with bf16)");
  }
  std::vector<model::LoraApplier::Entry> set;
  for (const LoraRequest& l : r.loras) set.push_back({l.name, l.path, l.sha256, l.scale});
  ZFARM_ASSIGN_OR_RETURN(std::vector<std::string> shas, loras->Apply(set));
  img->loras = r.loras;
  for (size_t i = 0; i < shas.size(); ++i) img->loras[i].sha256 = shas[i];
  // The weight updates run on the device's stream: wait for them to time them (the
  // device is idle between jobs, so this costs nothing).
  if (device.is_cuda()) (void)at::zeros({1}, at::TensorOptions().device(device)).cpu();
  return absl::OkStatus();
}

absl::StatusOr<Pipeline::Impl::Schedule> Pipeline::Impl::MakeSchedule(const GenerateRequest& r) {
  Schedule sc;
  ZFARM_ASSIGN_OR_RETURN(sc.sigmas, sampling::FlowMatchSigmas(r.steps, config.scheduler));
  // Image-to-image runs the last steps_run steps of the schedule (get_timesteps); ControlNet
  // inpainting starts from noise.
  if (r.init_image.has_value() && !r.control.has_value()) {
    ZFARM_ASSIGN_OR_RETURN(sc.t_start, sampling::ImageToImageStart(r.steps, r.strength));
  }
  sc.steps = r.steps;
  sc.cfg = sampling::CfgOptions{r.guidance, r.cfg_truncation, r.cfg_normalization};
  for (int k = sc.t_start; k < r.steps; ++k) {
    sc.any_cfg = sc.any_cfg || sampling::CfgActive(sc.cfg, sampling::TimestepInput(sc.sigmas[k]));
  }
  return sc;
}

Pipeline::Impl::Latents Pipeline::Impl::StartLatents(const GenerateRequest& r, const Schedule& sc,
                                                     GenerateTrace* trace, Image* img) {
  const int64_t lh = 2 * (r.height / 16), lw = 2 * (r.width / 16);
  const std::vector<int64_t> latent_shape = {1, config.transformer.in_channels, lh, lw};
  const at::Device noise_device = r.cpu_noise ? at::Device(at::kCPU) : device;
  Latents l;
  // ControlNet jobs (inpainting too) start from the seed's noise as text-to-image does: the
  // VAE encodes of ControlContext() draw no random numbers.
  if (!r.init_image.has_value() || r.control.has_value()) {
    l.x = DrawNoise(r.seed, latent_shape, noise_device).to(device);
    if (trace != nullptr) trace->noise = ToVector(l.x);
    return l;
  }
  // ZImageImg2ImgPipeline.prepare_latents: one generator, drawn first for the VAE's
  // latent sample (retrieve_latents: mean + std * randn), then for the noise.
  const auto te = Clock::now();
  at::Generator gen = SeededGenerator(r.seed, noise_device);
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat).device(noise_device);
  at::Tensor pre = PreprocessImage(*r.init_image, r.width, r.height);
  if (trace != nullptr) trace->init_image = ToVector(pre);
  std::vector<at::Tensor> moments = vae_encoder(pre.to(device)).to(at::kFloat).chunk(2, 1);
  at::Tensor stdev = at::exp(0.5 * moments[1].clamp(-30.0, 20.0));
  at::Tensor sample = moments[0] + stdev * at::randn(latent_shape, gen, f32).to(device);
  l.image_latents = (sample - config.vae.shift_factor) * config.vae.scaling_factor;
  l.noise = at::randn(latent_shape, gen, f32).to(device);
  // Noised to the first kept step.
  l.x = sampling::ScaleNoise(l.image_latents, l.noise, sc.sigmas[sc.t_start]);
  if (r.mask_image.has_value()) {
    at::Tensor m = PreprocessMask(*r.mask_image, r.width, r.height);
    if (trace != nullptr) trace->mask = ToVector(m);
    const std::vector<int64_t> size = {lh, lw};
    l.mask = at::upsample_nearest2d(m, at::IntArrayRef(size)).to(device);
  }
  if (trace != nullptr) {
    trace->image_latents = ToVector(l.image_latents);
    trace->noise = ToVector(l.noise);
    trace->latents0 = ToVector(l.x);
  }
  if (device.is_cuda()) (void)l.x.sum().item<float>();  // finish the encode to time it
  img->timings.encode_image_s = Seconds(te, Clock::now());
  return l;
}

absl::Status Pipeline::Impl::StartControl(const GenerateRequest& r, Latents* l,
                                          GenerateTrace* trace, Image* img) {
  if (!r.control.has_value()) return absl::OkStatus();
  const auto te = Clock::now();
  const int64_t lh = 2 * (r.height / 16), lw = 2 * (r.width / 16);
  ZFARM_ASSIGN_OR_RETURN(at::Tensor context, ControlContext(r, lh, lw));
  l->ctl.context = context.squeeze(0).unsqueeze(1);  // [control_in_dim, 1, h, w]
  l->ctl.scale =
      at::full({}, r.control->scale, at::TensorOptions().dtype(at::kFloat).device(device));
  if (trace != nullptr) trace->control_context = ToVector(context);
  if (device.is_cuda()) (void)l->ctl.context.sum().item<float>();  // finish the encode to time it
  img->timings.encode_image_s = Seconds(te, Clock::now());
  return absl::OkStatus();
}

// One straight story: a step of the schedule per iteration (DiT, guidance, Euler,
// inpainting blend, progress), in the order diffusers runs them.
absl::Status Pipeline::Impl::Denoise(const GenerateRequest& r, const Schedule& sc,
                                     const Captions& caps, Latents& l, const StepCallback& on_step,
                                     const CancelToken* cancel, GenerateTrace* trace, Image* img) {
  const std::vector<float>& sigmas = sc.sigmas;
  const int steps_run = sc.steps - sc.t_start;
  // Progress is reported one step late on CUDA: when step k has finished on the
  // device, step k+1 is already queued, so the device never waits for the host.
  StepFence fence(device, time_steps ? 0 : steps_run);
  for (int k = sc.t_start; k < sc.steps; ++k) {
    const int i = k - sc.t_start;  // index among the steps that run
    if (cancel != nullptr && cancel->cancelled()) {
      return absl::CancelledError(
          absl::StrCat("cancelled before step ", i + 1, " of ", steps_run));
    }
    const auto ts = Clock::now();
    const float t_in = sampling::TimestepInput(sigmas[k]);
    const float g = sampling::GuidanceForStep(sc.cfg, t_in);
    at::Tensor xin = l.x.to(dtype).squeeze(0).unsqueeze(1);  // [C, 1, h, w]
    const ControlInput step_ctl =
        l.ctl.context.defined() && ControlKept(i, steps_run, r.control->start, r.control->end)
            ? l.ctl
            : ControlInput{};
    at::Tensor pred = Dit(xin, t_in, caps.cap, caps.cap_valid, step_ctl).to(at::kFloat);
    if (trace != nullptr) {
      trace->t_emb.push_back(ToVector(transformer->TimestepEmbedding(t_in)));
      if (i == 0) trace->dit_out0 = ToVector(pred);
      if (i == 0 && step_ctl.context.defined()) {
        const at::Tensor tt = at::full({1}, t_in, xin.options().dtype(at::kFloat));
        model::DitTokens tok = transformer->Embed(xin, tt, caps.cap, caps.cap_valid);
        std::vector<at::Tensor> hints = controlnet->forward(
            *transformer, tok, transformer->RefineImage(tok, nullptr), l.ctl.context,
            l.ctl.scale);
        trace->control_hint0 = ToVector(hints[controlnet->config().control_layers_places[0]]);
      }
    }
    if (g > 0) {
      at::Tensor negp = Dit(xin, t_in, caps.neg, caps.neg_valid, step_ctl).to(at::kFloat);
      at::Tensor combined = sampling::CfgGuide(pred, negp, g);
      if (r.cfg_normalization > 0) {  // the norms stay on the device: no host sync
        combined = combined * sampling::CfgNormalizationScale(r.cfg_normalization, pred.norm(),
                                                              combined.norm());
      }
      pred = combined;
    }
    // float32 Euler step; [C, 1, h, w] -> [1, C, h, w].
    l.x = sampling::EulerUpdate(l.x, sampling::Velocity(pred).unsqueeze(0).squeeze(2), sigmas[k],
                                sigmas[k + 1]);
    if (l.mask.defined()) {
      // Inpainting: keep the init latents (noised to the next step's level) outside the mask.
      at::Tensor kept = l.image_latents;
      if (k + 1 < sc.steps) kept = sampling::ScaleNoise(l.image_latents, l.noise, sigmas[k + 1]);
      l.x = sampling::InpaintBlend(kept, l.x, l.mask);
    }
    if (trace != nullptr) trace->latents.push_back(ToVector(l.x));
    if (time_steps) {
      (void)l.x.cpu().numel();  // synchronise to time the step
      img->timings.step_s.push_back(Seconds(ts, Clock::now()));
    }
    if (fence.active()) {
      fence.Record(i);
      if (i > 0) {
        fence.Wait(i - 1);
        if (on_step) on_step(i, steps_run);
      }
    } else if (on_step) {
      on_step(i + 1, steps_run);
    }
  }
  if (fence.active()) {
    fence.Wait(steps_run - 1);
    if (on_step) on_step(steps_run, steps_run);
  }
  return absl::OkStatus();
}

std::vector<uint8_t> Pipeline::Impl::Decode(at::Tensor x, GenerateTrace* trace) {
  at::Tensor decoded;
  if (options.vae_channels_last && device.is_cuda()) {
    x = x.contiguous(at::MemoryFormat::ChannelsLast);
  }
  const int64_t tile = options.vae_tile_latent;
  if (options.vae_tiling && (x.size(2) > tile || x.size(3) > tile)) {
    decoded = vae->TiledDecode(x, tile, options.vae_tile_overlap);
  } else {
    decoded = vae(x);
  }
  if (trace != nullptr) trace->decoded = ToVector(decoded);
  // diffusers image_processor: (x / 2 + 0.5).clamp(0, 1) in the VAE dtype, then
  // float32 * 255, numpy round (half to even) -> uint8 HWC.
  at::Tensor rgb = (decoded / 2 + 0.5).clamp(0, 1).to(at::kFloat);
  rgb = (rgb * 255).round().to(at::kByte).squeeze(0).permute({1, 2, 0}).contiguous().cpu();
  return std::vector<uint8_t>(rgb.data_ptr<uint8_t>(), rgb.data_ptr<uint8_t>() + rgb.numel());
}

// The stages in order, each timed: LoRAs, schedule, tokens, captions, start latents,
// denoising, decode.
absl::StatusOr<Image> Pipeline::Impl::Run(const GenerateRequest& r, const StepCallback& on_step,
                                          const CancelToken* cancel, GenerateTrace* trace) {
  const auto t0 = Clock::now();
  Image img;
  img.width = r.width;
  img.height = r.height;
  img.precision = PrecisionName(Precision());
  ZFARM_RETURN_IF_ERROR(ApplyLoras(r, &img));
  const auto tl = Clock::now();
  img.timings.lora_s = Seconds(t0, tl);
  ZFARM_ASSIGN_OR_RETURN(const Schedule sc, MakeSchedule(r));
  img.steps_run = r.steps - sc.t_start;

  ZFARM_ASSIGN_OR_RETURN(text::PromptTokens pos, Tokens(r.prompt, r.prompt_ids));
  if (pos.ids.empty()) return absl::InvalidArgumentError("prompt: no tokens");
  text::PromptTokens neg;
  if (sc.any_cfg) {
    ZFARM_ASSIGN_OR_RETURN(neg, Tokens(r.negative_prompt, r.negative_prompt_ids));
  }
  img.prompt_tokens = static_cast<int>(pos.ids.size());
  img.prompt_truncated = pos.truncated;
  img.untruncated_prompt_tokens = pos.untruncated_size;
  if (trace != nullptr) trace->ids = pos.ids;
  const auto t1 = Clock::now();
  img.timings.tokenize_s = Seconds(tl, t1);

  // Text encoder: on the device, or — offloaded — on the CPU where it stays (only
  // the caption features go to the device), so the device never holds it.
  at::Tensor cap = CachedEncode(pos.ids), neg_cap;
  if (sc.any_cfg) neg_cap = CachedEncode(neg.ids);
  if (trace != nullptr) trace->caption = ToVector(cap);
  const auto t2 = Clock::now();
  img.timings.encode_s = Seconds(t1, t2);

  c10::InferenceMode guard;
  Latents latents = StartLatents(r, sc, trace, &img);
  ZFARM_RETURN_IF_ERROR(StartControl(r, &latents, trace, &img));
  if (r.control.has_value()) img.controlnet = ControlNetName(options.controlnet);
  Captions caps;
  std::tie(caps.cap, caps.cap_valid) = model::TransformerImpl::PadCaption(cap);
  if (sc.any_cfg) std::tie(caps.neg, caps.neg_valid) = model::TransformerImpl::PadCaption(neg_cap);
  ZFARM_RETURN_IF_ERROR(Denoise(r, sc, caps, latents, on_step, cancel, trace, &img));
  const auto t3 = Clock::now();
  img.timings.denoise_s = Seconds(t2, t3);

  img.rgb = Decode(latents.x, trace);
  const auto t4 = Clock::now();
  img.timings.decode_s = Seconds(t3, t4);
  img.timings.total_s = Seconds(t0, t4);
  img.peak_device_bytes = PeakBytes(device);
  return img;
}

Pipeline::Pipeline(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Pipeline::~Pipeline() = default;

absl::StatusOr<std::unique_ptr<Pipeline>> Pipeline::Create(const PipelineOptions& options) {
  const auto t0 = Clock::now();
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  ZFARM_RETURN_IF_ERROR(impl->Load());
  impl->load_seconds = Seconds(t0, Clock::now());
  LOG(INFO) << "event=pipeline_loaded device=" << options.device
            << " dtype=" << c10::toString(impl->dtype)
            << " vae_dtype=" << c10::toString(impl->vae_dtype)
            << " precision=" << PrecisionName(impl->Precision()) << " fp8_layers=" << impl->fp8_layers
            << " seconds=" << impl->load_seconds;
  return std::unique_ptr<Pipeline>(new Pipeline(std::move(impl)));
}

namespace {

absl::Status CheckPicture(const InputPicture& p, const char* field) {
  if (p.width < 1 || p.height < 1 || p.width > kMaxImageSide || p.height > kMaxImageSide ||
      p.rgb.size() != static_cast<size_t>(p.width) * p.height * 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": ", p.width, "x", p.height, " with ", p.rgb.size(),
        " RGB bytes; need 1..", kMaxImageSide, " pixels a side and width*height*3 bytes"));
  }
  return absl::OkStatus();
}

// Generate's checks of control: INVALID_ARGUMENT naming the field and the limit.
absl::Status CheckControl(const GenerateRequest& r, const model::ControlNet& net) {
  if (!r.control.has_value()) return absl::OkStatus();
  const ControlRequest& c = *r.control;
  if (!net) {
    return absl::InvalidArgumentError(
        "control: this pipeline has no ControlNet (load one with --controlnet DIR|FILE)");
  }
  ZFARM_RETURN_IF_ERROR(CheckPicture(c.image, "control.image"));
  if (!(c.scale >= 0.0f && c.scale <= 2.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("control.conditioning_scale must be within [0, 2], got ", c.scale));
  }
  if (!(c.start >= 0.0f && c.start < c.end && c.end <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "control.start and control.end must satisfy 0 <= start < end <= 1, got start ", c.start,
        " end ", c.end));
  }
  if (r.init_image.has_value() && !r.mask_image.has_value()) {
    return absl::InvalidArgumentError(
        "control: with init_image a ControlNet needs mask_image (ControlNet inpainting); "
        "image-to-image with a ControlNet is not supported");
  }
  return absl::OkStatus();
}

// Generate's checks of init_image / mask_image / strength: INVALID_ARGUMENT naming the
// field and the limit.
absl::Status CheckPictures(const GenerateRequest& r) {
  if (r.mask_image.has_value() && !r.init_image.has_value()) {
    return absl::InvalidArgumentError("mask_image: inpainting needs an init_image");
  }
  if (!r.init_image.has_value()) return absl::OkStatus();
  const InputPicture& p = *r.init_image;
  ZFARM_RETURN_IF_ERROR(CheckPicture(p, "init_image"));
  if (r.mask_image.has_value()) ZFARM_RETURN_IF_ERROR(CheckPicture(*r.mask_image, "mask_image"));
  if (!(r.strength > 0.0f && r.strength <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("strength must be within (0, 1], got ", r.strength));
  }
  const int w = base::RoundDownPictureSide(p.width), h = base::RoundDownPictureSide(p.height);
  if (w != r.width || h != r.height) {
    return absl::InvalidArgumentError(absl::StrCat(
        "init_image: ", p.width, "x", p.height, " is ", w, "x", h,
        " after rounding down to multiples of 16, but the request is ", r.width, "x", r.height,
        " (the size must match)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Image> Pipeline::Generate(const GenerateRequest& r, const StepCallback& on_step,
                                         const CancelToken* cancel, GenerateTrace* trace) {
  if (r.width % base::kPictureSideMultiple != 0 || r.height % base::kPictureSideMultiple != 0 ||
      r.width < kMinImageSide || r.height < kMinImageSide || r.width > kMaxImageSide ||
      r.height > kMaxImageSide) {
    return absl::InvalidArgumentError(absl::StrCat(
        "size ", r.width, "x", r.height, ": width and height must be multiples of 16 within ",
        kMinImageSide, "..", kMaxImageSide, " pixels"));
  }
  if (r.steps < 1 || r.steps > sampling::kMaxSteps) {
    return absl::InvalidArgumentError(
        absl::StrCat("steps must be within 1..", sampling::kMaxSteps, ", got ", r.steps));
  }
  if (!(r.guidance >= 0.0f) || !std::isfinite(r.guidance)) {
    return absl::InvalidArgumentError(absl::StrCat("guidance must be >= 0, got ", r.guidance));
  }
  ZFARM_RETURN_IF_ERROR(CheckPictures(r));
  ZFARM_RETURN_IF_ERROR(CheckControl(r, impl_->controlnet));
  try {
    // Kernel launches, events and graph capture use the current device: make it ours
    // (a worker on cuda:1 otherwise launches fused kernels on device 0).
    c10::OptionalDeviceGuard device_guard;
    if (impl_->device.is_cuda()) device_guard.reset_device(impl_->device);
    ResetPeak(impl_->device);
    return impl_->Run(r, on_step, cancel, trace);
  } catch (const c10::OutOfMemoryError& e) {
    impl_->graphs.clear();  // their memory pools first
    ReleaseCache(impl_->device);
    LOG(WARNING) << "event=generate_oom size=" << r.width << "x" << r.height
                 << " device=" << impl_->options.device;
    return absl::ResourceExhaustedError(absl::StrCat(
        "out of device memory generating ", r.width, "x", r.height, " on ", impl_->options.device,
        ": try a smaller size, --vae-tiling or --offload-text-encoder"));
  } catch (const c10::Error& e) {
    ReleaseCache(impl_->device);
    return absl::InternalError(absl::StrCat("generate: ", e.what_without_backtrace()));
  }
}

absl::Status Pipeline::PrepareCaption(const GenerateRequest& r) {
  if (impl_->options.offload_text_encoder) return absl::OkStatus();
  try {
    c10::OptionalDeviceGuard device_guard;
    if (impl_->device.is_cuda()) device_guard.reset_device(impl_->device);
    ZFARM_ASSIGN_OR_RETURN(text::PromptTokens pos, impl_->Tokens(r.prompt, r.prompt_ids));
    if (pos.ids.empty()) return absl::InvalidArgumentError("prompt: no tokens");
    impl_->CachedEncode(pos.ids);
    if (r.guidance > 0) {
      ZFARM_ASSIGN_OR_RETURN(text::PromptTokens neg,
                             impl_->Tokens(r.negative_prompt, r.negative_prompt_ids));
      impl_->CachedEncode(neg.ids);
    }
    return absl::OkStatus();
  } catch (const c10::OutOfMemoryError& e) {
    ReleaseCache(impl_->device);
    return absl::ResourceExhaustedError("out of device memory encoding a prompt ahead");
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("prepare caption: ", e.what_without_backtrace()));
  }
}

double Pipeline::load_seconds() const { return impl_->load_seconds; }
PipelineOptions::Precision Pipeline::Impl::Precision() const {
  if (fp8) return PipelineOptions::Precision::kFp8;
  return dtype == at::kBFloat16 ? PipelineOptions::Precision::kBFloat16
                                : PipelineOptions::Precision::kFloat32;
}
PipelineOptions::Precision Pipeline::compute_dtype() const { return impl_->Precision(); }
const ModelConfig& Pipeline::config() const { return impl_->config; }
void Pipeline::set_time_steps(bool on) { impl_->time_steps = on; }
std::vector<std::string> Pipeline::active_loras() const { return impl_->loras->active(); }
const ControlNetConfig* Pipeline::controlnet() const {
  return impl_->controlnet ? &impl_->controlnet->config() : nullptr;
}
std::string Pipeline::Describe() const {
  const PipelineOptions& o = impl_->options;
  const bool cuda = impl_->device.is_cuda();
  return absl::StrCat(impl_->options.device, " ", c10::toString(impl_->dtype), ", vae ",
                      c10::toString(impl_->vae_dtype), o.fused_ops ? ", fused projections" : "",
                      o.fused_ops && cuda && model::FusedKernelsBuilt() ? " + cuda kernels" : "",
                      o.cuda_graphs && cuda ? ", cuda graphs" : "",
                      o.vae_channels_last && cuda ? ", vae channels-last" : "",
                      impl_->options.offload_text_encoder ? ", text encoder offloaded" : "",
                      impl_->options.vae_tiling ? ", tiled vae" : "",
                      impl_->controlnet
                          ? absl::StrCat(", controlnet ",
                                         ControlNetLayoutName(impl_->controlnet->config().layout))
                          : "",
                      impl_->fp8 ? absl::StrCat(", fp8 e4m3 DiT matmuls (", impl_->fp8_layers,
                                                " layers", impl_->device.is_cuda()
                                                               ? ")"
                                                               : ", float32 reference path)")
                                 : "",
                      impl_->cache_hit ? (impl_->fp8 ? ", DiT from the fp8 weights cache"
                                                     : ", DiT from the bf16 weights cache")
                                       : "");
}

const char* PrecisionName(PipelineOptions::Precision precision) {
  switch (precision) {
    case PipelineOptions::Precision::kFloat32:
      return "float32";
    case PipelineOptions::Precision::kBFloat16:
      return "bfloat16";
    case PipelineOptions::Precision::kFp8:
      return "fp8";
    case PipelineOptions::Precision::kAuto:
      break;
  }
  return "auto";
}

absl::StatusOr<PipelineOptions::Precision> ParsePrecision(const std::string& value) {
  if (value == "fp8") return PipelineOptions::Precision::kFp8;
  if (value == "bf16") return PipelineOptions::Precision::kBFloat16;
  if (value == "fp32") return PipelineOptions::Precision::kFloat32;
  return absl::InvalidArgumentError(
      absl::StrCat("--precision '", value, "': expected fp8, bf16 or fp32"));
}

std::vector<uint8_t> ToRgb8(const float* chw, int height, int width) {
  std::vector<uint8_t> out(static_cast<size_t>(height) * width * 3);
  const size_t plane = static_cast<size_t>(height) * width;
  for (int c = 0; c < 3; ++c) {
    for (size_t i = 0; i < plane; ++i) {
      float v = chw[c * plane + i] / 2 + 0.5f;
      v = std::min(1.0f, std::max(0.0f, v));
      out[i * 3 + c] = static_cast<uint8_t>(std::nearbyint(v * 255.0f));  // half to even
    }
  }
  return out;
}

absl::StatusOr<std::vector<float>> InitialNoise(uint64_t seed, const std::vector<int64_t>& shape,
                                                const std::string& device) {
  ZFARM_ASSIGN_OR_RETURN(at::Device d, ParseDevice(device));
  try {
    c10::InferenceMode guard;
    return ToVector(DrawNoise(seed, shape, d));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("noise: ", e.what_without_backtrace()));
  }
}

}  // namespace zfarm::worker
