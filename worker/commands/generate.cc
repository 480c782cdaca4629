// zfarm-worker generate: render images with no scheduler (the seed's
// run_z_image.py). Parses its own argv (no global flags).
#include <algorithm>
#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "proto/base/files.h"
#include "proto/base/picture_size.h"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"
#include "worker/io/canny.h"
#include "worker/io/file_util.h"
#include "worker/io/image_decode.h"
#include "worker/io/image_file.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

constexpr char kUsage[] =
    "usage: zfarm-worker generate --model DIR (--prompt TEXT --out FILE.png |\n"
    "                             --prompts FILE --out-dir DIR)\n"
    "  [--width 1024] [--height 1024] [--steps 8] [--seed N (random if absent)]\n"
    "  [--guidance 0] [--negative-prompt TEXT] [--device cpu|cuda:N]\n"
    "  [--vae-fp32] [--offload-text-encoder] [--vae-tiling]\n"
    "  [--no-cuda-graphs] [--reference-ops]   (speed paths off: less memory / debugging)\n"
    "  [--precision fp8|bf16|fp32]  (default bf16 on CUDA, fp32 on cpu; fp8: the DiT's\n"
    "                          attention and FFN matmuls in e4m3, compute capability >= 8.9)\n"
    "  [--weights-cache DIR]   (the bf16 or fp8 DiT copy of `zfarm-worker cache-weights`)\n"
    "  [--lora FILE[:SCALE]]... (repeatable, at most 8, scale in [-4, 4], default 1)\n"
    "  [--lora-dir DIR]        (--lora NAME[:SCALE] then means DIR/NAME.safetensors)\n"
    "  [--output-format png|jpeg|webp] [--quality 1-100 (jpeg/webp, default 90)]\n"
    "  [--init-image FILE.png|.jpg [--strength 0.6] [--mask FILE]]   (image-to-image;\n"
    "                          with --mask inpainting, white = repaint; the size defaults\n"
    "                          to the picture's, rounded down to multiples of 16)\n"
    "  [--controlnet DIR|FILE --control-image FILE [--control-scale 0.75]\n"
    "   [--control-start 0] [--control-end 1] [--canny]]   (Z-Image-Turbo-Fun-Controlnet-Union\n"
    "                          1.0/2.0/2.1; --canny: use the picture's Canny edges;\n"
    "                          the control picture is resized to the render size (1024x1024\n"
    "                          or --width/--height, as diffusers); with --init-image and\n"
    "                          --mask: ControlNet inpainting, 2.x only)\n"
    "Steps are transformer evaluations: the model card's \"9 steps\" are 8 here.\n";

const std::vector<std::string> kBoolFlags = {"vae-fp32",       "offload-text-encoder",
                                             "vae-tiling",     "no-cuda-graphs",
                                             "reference-ops",  "help", "canny"};
const std::vector<std::string> kValueFlags = {"model",   "prompt",   "prompts",         "out",
                                              "out-dir", "width",    "height",          "steps",
                                              "seed",    "guidance", "negative-prompt", "device",
                                              "weights-cache", "lora", "lora-dir",
                                              "output-format", "quality",
                                              "init-image", "strength", "mask",
                                              "controlnet", "control-image", "control-scale",
                                              "control-start", "control-end", "precision"};

// The largest input picture file read (the scheduler's default --max-input-bytes).
constexpr uint64_t kMaxPictureBytes = 16u << 20;

absl::StatusOr<InputPicture> ReadPicture(const std::string& flag, const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadSmallFile(path, kMaxPictureBytes);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<DecodedImage> d = DecodeImage(*bytes, absl::StrCat(flag, " ", path));
  if (!d.ok()) return d.status();
  return InputPicture{d->width, d->height, std::move(d->rgb), base::Sha256Hex(*bytes)};
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "zfarm-worker generate: %s\n%s", why.c_str(), kUsage);
  return 2;
}

// A failure after the flags were understood: exit status 1.
int Fail(const std::string& why) {
  std::fprintf(stderr, "zfarm-worker generate: %s\n", why.c_str());
  return 1;
}

// An integer flag into *out when given; false when it does not parse.
bool GetInt(const ParsedFlags& f, const std::string& k, int* out) {
  return !f.Has(k) || absl::SimpleAtoi(f.Get(k), out);
}

// Size, steps, guidance, seed (random when absent: *random_seed), negative prompt, LoRAs.
// 0, or the exit status after printing why.
int ParseRequest(const ParsedFlags& f, GenerateRequest* req, bool* random_seed) {
  if (!GetInt(f, "width", &req->width) || !GetInt(f, "height", &req->height) ||
      !GetInt(f, "steps", &req->steps)) {
    return Usage("--width, --height and --steps take integers");
  }
  if (f.Has("guidance") && !absl::SimpleAtof(f.Get("guidance"), &req->guidance)) {
    return Usage("--guidance takes a number");
  }
  *random_seed = !f.Has("seed");
  if (!*random_seed && !absl::SimpleAtoi(f.Get("seed"), &req->seed)) {
    return Usage("--seed takes a non-negative integer");
  }
  if (*random_seed) req->seed = std::random_device{}() & 0xffffffffu;
  req->negative_prompt = f.Get("negative-prompt");
  for (const std::string& v : f.GetAll("lora")) {
    absl::StatusOr<LoraFlag> l = ParseLoraFlag(v, f.Get("lora-dir"));
    if (!l.ok()) return Usage(std::string(l.status().message()));
    // Hashed once here, not for every image.
    absl::StatusOr<std::string> sha = base::Sha256OfFile(l->path);
    if (!sha.ok()) return Fail(std::string(sha.status().message()));
    req->loras.push_back({l->name, l->path, *sha, l->scale});
  }
  return 0;
}

// --output-format and --quality; 0 or 2 after printing why.
int ParseOutputFormat(const ParsedFlags& f, ImageFormat* format, int* quality) {
  if (f.Has("output-format")) {
    absl::StatusOr<ImageFormat> parsed =
        ParseImageFormat(f.Get("output-format"), "--output-format");
    if (!parsed.ok()) return Usage(std::string(parsed.status().message()));
    *format = *parsed;
  }
  if (!GetInt(f, "quality", quality) || (*quality != 0 && (*quality < 1 || *quality > 100))) {
    return Usage("--quality takes an integer in [1, 100]");
  }
  if (*quality != 0 && *format == ImageFormat::kPng) {
    return Usage("--quality needs --output-format jpeg or webp (png is lossless)");
  }
  return 0;
}

// --init-image, --mask and --strength (image-to-image, inpainting); 0 or the exit status.
int ParsePictures(const ParsedFlags& f, GenerateRequest* req) {
  if (!f.Has("init-image") && (f.Has("mask") || f.Has("strength"))) {
    return Usage("--mask and --strength need --init-image");
  }
  if (f.Has("strength") && !absl::SimpleAtof(f.Get("strength"), &req->strength)) {
    return Usage("--strength takes a number in (0, 1]");
  }
  if (!f.Has("init-image")) return 0;
  absl::StatusOr<InputPicture> init = ReadPicture("--init-image", f.Get("init-image"));
  if (!init.ok()) return Fail(std::string(init.status().message()));
  // diffusers' default: the picture's own size rounded down to multiples of 16.
  if (!f.Has("width")) req->width = base::RoundDownPictureSide(init->width);
  if (!f.Has("height")) req->height = base::RoundDownPictureSide(init->height);
  req->init_image = *std::move(init);
  if (f.Has("mask")) {
    absl::StatusOr<InputPicture> mask = ReadPicture("--mask", f.Get("mask"));
    if (!mask.ok()) return Fail(std::string(mask.status().message()));
    req->mask_image = *std::move(mask);
  }
  return 0;
}

// --controlnet with --control-image, --control-scale, --control-start, --control-end;
// 0 or the exit status.
int ParseControl(const ParsedFlags& f, GenerateRequest* req) {
  const bool control_flags = f.Has("control-image") || f.Has("control-scale") ||
                             f.Has("control-start") || f.Has("control-end") || f.Has("canny");
  if (control_flags != f.Has("controlnet") || (control_flags && !f.Has("control-image"))) {
    return Usage("--controlnet and --control-image go together (with --control-scale/-start/-end)");
  }
  if (!f.Has("control-image")) return 0;
  ControlRequest c;
  if ((f.Has("control-scale") && !absl::SimpleAtof(f.Get("control-scale"), &c.scale)) ||
      (f.Has("control-start") && !absl::SimpleAtof(f.Get("control-start"), &c.start)) ||
      (f.Has("control-end") && !absl::SimpleAtof(f.Get("control-end"), &c.end))) {
    return Usage("--control-scale, --control-start and --control-end take numbers");
  }
  absl::StatusOr<InputPicture> pic = ReadPicture("--control-image", f.Get("control-image"));
  if (!pic.ok()) return Fail(std::string(pic.status().message()));
  if (f.True("canny")) {
    absl::StatusOr<std::vector<uint8_t>> edges = CannyRgb(pic->rgb, pic->width, pic->height);
    if (!edges.ok()) return Fail(std::string(edges.status().message()));
    pic->rgb = *std::move(edges);
  }
  c.image = *std::move(pic);
  req->control = std::move(c);
  return 0;
}

PipelineOptions OptionsFromFlags(const ParsedFlags& f) {
  PipelineOptions opts;
  opts.model_dir = f.Get("model");
  opts.device = f.Get("device", "cpu");
  opts.vae_fp32 = f.True("vae-fp32");
  opts.offload_text_encoder = f.True("offload-text-encoder");
  opts.vae_tiling = f.True("vae-tiling");
  opts.cuda_graphs = !f.True("no-cuda-graphs");
  opts.fused_ops = !f.True("reference-ops");
  if (f.Has("weights-cache")) opts.weights_cache_dir = f.Get("weights-cache");
  if (f.Has("controlnet")) opts.controlnet = f.Get("controlnet");
  return opts;
}

// What one image cost, stage by stage, on stdout.
void PrintTimings(const GenerateRequest& r, const Image& img) {
  const StageTimings& t = img.timings;
  for (const LoraRequest& l : img.loras) {
    std::printf("lora %s x%g (%s, sha256 %.12s)\n", l.name.c_str(), l.scale, l.path.c_str(),
                l.sha256.c_str());
  }
  if (!img.loras.empty()) std::printf("loras applied in %.3f s\n", t.lora_s);
  if (r.control.has_value()) {
    std::printf("controlnet %s x%g on %dx%d control picture%s, image encode %.3f s\n",
                img.controlnet.c_str(), r.control->scale, r.control->image.width,
                r.control->image.height, r.mask_image.has_value() ? ", inpainting" : "",
                t.encode_image_s);
  } else if (r.init_image.has_value()) {
    std::printf("%s from %dx%d, strength %g: %d of %d steps, image encode %.3f s\n",
                r.mask_image.has_value() ? "inpainting" : "image-to-image", r.init_image->width,
                r.init_image->height, r.strength, img.steps_run, r.steps, t.encode_image_s);
  }
  std::printf(
      "tokenize %.3f s, encode %.3f s, denoise %.3f s (%.3f s/step), decode %.3f s, total %.3f "
      "s, "
      "peak memory %.1f MiB\n",
      t.tokenize_s, t.encode_s, t.denoise_s, t.denoise_s / std::max(1, img.steps_run), t.decode_s,
      t.total_s, img.peak_device_bytes / 1048576.0);
}

// Renders `r` with step progress on stderr and writes it to `out`; 0 or 1.
int RenderOne(Pipeline& pipeline, const GenerateRequest& r, const std::string& device,
              const std::string& out, ImageFormat format, int quality) {
  auto img = pipeline.Generate(
      r,
      [](int step, int total) {
        std::fprintf(stderr, "\rstep %d/%d", step, total);
        if (step == total) std::fputc('\n', stderr);
      },
      nullptr);
  if (!img.ok()) return Fail(img.status().ToString());
  if (img->prompt_truncated) {
    std::printf("warning: prompt truncated from %d to %d tokens\n", img->untruncated_prompt_tokens,
                img->prompt_tokens);
  }
  ImageParameters p = ImageParametersOf(r, *img);
  p.device = device;
  if (absl::Status s = WriteImage(out, img->rgb, p, format, quality); !s.ok()) {
    return Fail(s.ToString());
  }
  PrintTimings(r, *img);
  return 0;
}

}  // namespace

int RunGenerate(int argc, char** argv) {
  ParsedFlags f;
  if (std::optional<int> rc =
          ParseCommandFlags("generate", kUsage, argc, argv, kBoolFlags, kValueFlags, &f)) {
    return *rc;
  }
  if (!f.Has("model")) return Usage("--model is required");
  const bool single = f.Has("prompt");
  if (single == f.Has("prompts")) return Usage("give exactly one of --prompt and --prompts");
  if (single && !f.Has("out")) return Usage("--prompt needs --out FILE.png");
  if (!single && !f.Has("out-dir")) return Usage("--prompts needs --out-dir DIR");

  GenerateRequest req;
  bool random_seed = false;
  ImageFormat format = ImageFormat::kPng;
  int quality = 0;
  if (int rc = ParseRequest(f, &req, &random_seed); rc != 0) return rc;
  if (int rc = ParseOutputFormat(f, &format, &quality); rc != 0) return rc;
  if (int rc = ParsePictures(f, &req); rc != 0) return rc;
  if (int rc = ParseControl(f, &req); rc != 0) return rc;
  std::vector<std::string> prompts;
  if (single) {
    prompts.push_back(f.Get("prompt"));
  } else {
    absl::StatusOr<std::vector<std::string>> lines = ReadPromptsFile(f.Get("prompts"));
    if (!lines.ok()) return Fail(std::string(lines.status().message()));
    prompts = *std::move(lines);
  }

  PipelineOptions opts = OptionsFromFlags(f);
  if (f.Has("precision")) {
    absl::StatusOr<PipelineOptions::Precision> precision = ParsePrecision(f.Get("precision"));
    if (!precision.ok()) return Usage(std::string(precision.status().message()));
    opts.precision = *precision;
  }
  auto pipeline = Pipeline::Create(opts);
  if (!pipeline.ok()) return Fail(pipeline.status().ToString());
  std::printf("loaded %s in %.2f s (%s)\n", opts.model_dir.c_str(), (*pipeline)->load_seconds(),
              (*pipeline)->Describe().c_str());
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateRequest r = req;
    r.prompt = prompts[i];
    if (i > 0 && random_seed) r.seed = std::random_device{}() & 0xffffffffu;
    const std::string out =
        single ? f.Get("out")
               : absl::StrFormat("%s/%05d%s", f.Get("out-dir"), static_cast<int>(i + 1),
                                 ImageFormatExtension(format));
    std::printf("[%zu/%zu] seed %llu -> %s\n", i + 1, prompts.size(),
                static_cast<unsigned long long>(r.seed), out.c_str());
    std::fflush(stdout);
    if (int rc = RenderOne(**pipeline, r, opts.device, out, format, quality); rc != 0) return rc;
  }
  return 0;
}

}  // namespace zfarm::worker
