// zfarm-worker generate: render images with no scheduler (the seed's
// run_z_image.py). Parses its own argv (no global flags).
#include <algorithm>
#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "proto/base/files.h"
#include "proto/base/picture_size.h"
#include "proto/flags/flags.h"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"
#include "worker/commands/pipeline_flags.h"
#include "worker/io/canny.h"
#include "worker/io/file_util.h"
#include "worker/io/image_decode.h"
#include "worker/io/image_file.h"
#include "worker/pipeline/pipeline.h"

namespace zfarm::worker {
namespace {

constexpr char kCommand[] = "generate";

// Every flag of generate. The request's size, steps, guidance, strength and the
// control scale and step range are bound to `req` and `control` directly, so their
// defaults are the pipeline's.
struct GenerateFlags {
  std::string model, prompt, prompts, out, out_dir, device = "cpu";
  int64_t seed = 0;  // random when --seed is absent
  PipelineFlags pipeline;
  std::string precision, weights_cache, lora_dir;
  std::vector<std::string> loras;
  std::string output_format;
  int32_t quality = 0;  // 0: the format's default
  std::string init_image, mask;
  std::string controlnet, control_image;
  bool canny = false;
  GenerateRequest req;
  ControlRequest control;
};

// The flag list is the help text: one definition per flag.
void DefineFlags(flags::FlagSet* fs, GenerateFlags* f) {
  fs->String("model", &f->model, "model folder (diffusers layout; required)", "DIR");
  fs->String("prompt", &f->prompt, "the prompt of one image (with --out)");
  fs->String("out", &f->out, "where --prompt's image goes", "FILE.png");
  fs->String("prompts", &f->prompts, "one prompt per line, one image each (with --out-dir)",
             "FILE");
  fs->String("out-dir", &f->out_dir, "where --prompts' images go: NNNNN.png", "DIR");
  fs->Int("width", &f->req.width,
          "image width (with --init-image: the picture's, rounded down to a multiple of 16)");
  fs->Int("height", &f->req.height, "image height (as --width)");
  fs->Int("steps", &f->req.steps, "transformer evaluations (see below)");
  fs->Int("seed", &f->seed, "noise seed (random if absent; each --prompts line its own)");
  fs->Float("guidance", &f->req.guidance, "classifier-free guidance scale (0 = off)");
  fs->String("negative-prompt", &f->req.negative_prompt, "negative prompt (with --guidance)");
  fs->String("device", &f->device, "cpu or cuda:N", "D");
  DefinePipelineFlags(fs, &f->pipeline);
  fs->String("precision", &f->precision,
             "compute precision (default bf16 on CUDA, fp32 on cpu); fp8: the DiT's attention and "
             "FFN matmuls in e4m3, compute capability >= 8.9",
             "fp8|bf16|fp32");
  fs->String("weights-cache", &f->weights_cache,
             "the bf16 or fp8 DiT copy of `zfarm-worker cache-weights`", "DIR");
  fs->Repeated("lora", &f->loras,
               "a LoRA on the DiT; repeatable, at most 8, scale in [-4, 4], default 1",
               "FILE[:SCALE]");
  fs->String("lora-dir", &f->lora_dir, "--lora NAME[:SCALE] then means DIR/NAME.safetensors",
             "DIR");
  fs->String("output-format", &f->output_format, "the file format (default png)", "png|jpeg|webp");
  fs->Int("quality", &f->quality, "jpeg/webp quality, 1-100 (default 90)");
  fs->String("init-image", &f->init_image,
             "image-to-image: start from this picture (with --mask: inpainting)", "FILE.png|.jpg");
  fs->Float("strength", &f->req.strength,
            "with --init-image: how far to move away from it, (0, 1]");
  fs->String("mask", &f->mask, "with --init-image: inpainting, white = repaint", "FILE");
  fs->String("controlnet", &f->controlnet,
             "a Z-Image-Turbo-Fun-Controlnet-Union 1.0/2.0/2.1 (folder or .safetensors; with "
             "--control-image)",
             "DIR|FILE");
  fs->String("control-image", &f->control_image,
             "the control picture, resized to the render size (1024x1024 or --width/--height, as "
             "diffusers); with --init-image and --mask: ControlNet inpainting, 2.x only",
             "FILE");
  fs->Float("control-scale", &f->control.scale, "the ControlNet's conditioning scale");
  fs->Float("control-start", &f->control.start,
            "the fraction of the steps where the ControlNet starts");
  fs->Float("control-end", &f->control.end, "the fraction of the steps where it ends");
  fs->Bool("canny", &f->canny, "use --control-image's Canny edges");
}

// The text around the flag list in --help.
void Describe(flags::FlagSet* fs) {
  fs->set_description("Renders images with no scheduler.");
  fs->set_footer(
      "Steps are transformer evaluations: the model card's \"9 steps\" are 8 here.\n\n"
      "examples:\n"
      "  zfarm-worker generate --model /models/Z-Image-Turbo "
      "--prompt \"a red fox in fresh snow\" --out fox.png\n"
      "  zfarm-worker generate --model DIR --prompts prompts.txt --out-dir renders/\n"
      "  zfarm-worker generate ... --lora-dir /loras --lora ink:0.8 "
      "--lora detail:-0.5\n");
  fs->set_show_defaults(true);
}

// The largest input picture file read (the scheduler's default --max-input-bytes).
constexpr uint64_t kMaxPictureBytes = 16u << 20;

absl::StatusOr<InputPicture> ReadPicture(const std::string& flag, const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadSmallFile(path, kMaxPictureBytes);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<DecodedImage> d = DecodeImage(*bytes, absl::StrCat(flag, " ", path));
  if (!d.ok()) return d.status();
  return InputPicture{d->width, d->height, std::move(d->rgb), base::Sha256Hex(*bytes)};
}

// A failure after the flags were understood: exit status 1.
int Fail(const std::string& why) {
  std::fprintf(stderr, "zfarm-worker generate: %s\n", why.c_str());
  return 1;
}

// The seed (random when absent: *random_seed) and the LoRAs into f->req.
// 0, or the exit status after printing why.
int ParseRequest(const flags::FlagSet& fs, GenerateFlags* f, bool* random_seed) {
  GenerateRequest& req = f->req;
  *random_seed = !fs.Given("seed");
  if (!*random_seed && f->seed < 0) {
    return UsageError(kCommand, fs, "--seed takes a non-negative integer");
  }
  req.seed = *random_seed ? std::random_device{}() & 0xffffffffu : static_cast<uint64_t>(f->seed);
  for (const std::string& v : f->loras) {
    absl::StatusOr<LoraFlag> l = ParseLoraFlag(v, f->lora_dir);
    if (!l.ok()) return UsageError(kCommand, fs, l.status().message());
    // Hashed once here, not for every image.
    absl::StatusOr<std::string> sha = base::Sha256OfFile(l->path);
    if (!sha.ok()) return Fail(std::string(sha.status().message()));
    req.loras.push_back({l->name, l->path, *sha, l->scale});
  }
  return 0;
}

// --output-format and --quality; 0 or 2 after printing why.
int ParseOutputFormat(const flags::FlagSet& fs, const GenerateFlags& f, ImageFormat* format) {
  if (!f.output_format.empty()) {
    absl::StatusOr<ImageFormat> parsed = ParseImageFormat(f.output_format, "--output-format");
    if (!parsed.ok()) return UsageError(kCommand, fs, parsed.status().message());
    *format = *parsed;
  }
  if (f.quality != 0 && (f.quality < 1 || f.quality > 100)) {
    return UsageError(kCommand, fs, "--quality takes an integer in [1, 100]");
  }
  if (f.quality != 0 && *format == ImageFormat::kPng) {
    return UsageError(kCommand, fs,
                      "--quality needs --output-format jpeg or webp (png is lossless)");
  }
  return 0;
}

// --init-image, --mask and --strength (image-to-image, inpainting); 0 or the exit status.
int ParsePictures(const flags::FlagSet& fs, GenerateFlags* f) {
  GenerateRequest& req = f->req;
  if (!fs.Given("init-image") && (fs.Given("mask") || fs.Given("strength"))) {
    return UsageError(kCommand, fs, "--mask and --strength need --init-image");
  }
  if (!fs.Given("init-image")) return 0;
  absl::StatusOr<InputPicture> init = ReadPicture("--init-image", f->init_image);
  if (!init.ok()) return Fail(std::string(init.status().message()));
  // diffusers' default: the picture's own size rounded down to multiples of 16.
  if (!fs.Given("width")) req.width = base::RoundDownPictureSide(init->width);
  if (!fs.Given("height")) req.height = base::RoundDownPictureSide(init->height);
  req.init_image = *std::move(init);
  if (fs.Given("mask")) {
    absl::StatusOr<InputPicture> mask = ReadPicture("--mask", f->mask);
    if (!mask.ok()) return Fail(std::string(mask.status().message()));
    req.mask_image = *std::move(mask);
  }
  return 0;
}

// --controlnet with --control-image, --control-scale, --control-start, --control-end;
// 0 or the exit status.
int ParseControl(const flags::FlagSet& fs, GenerateFlags* f) {
  const bool control_flags = fs.Given("control-image") || fs.Given("control-scale") ||
                             fs.Given("control-start") || fs.Given("control-end") ||
                             fs.Given("canny");
  if (control_flags != fs.Given("controlnet") || (control_flags && !fs.Given("control-image"))) {
    return UsageError(kCommand, fs,
                      "--controlnet and --control-image go together (with "
                      "--control-scale/-start/-end)");
  }
  if (!fs.Given("control-image")) return 0;
  absl::StatusOr<InputPicture> pic = ReadPicture("--control-image", f->control_image);
  if (!pic.ok()) return Fail(std::string(pic.status().message()));
  if (f->canny) {
    absl::StatusOr<std::vector<uint8_t>> edges = CannyRgb(pic->rgb, pic->width, pic->height);
    if (!edges.ok()) return Fail(std::string(edges.status().message()));
    pic->rgb = *std::move(edges);
  }
  f->control.image = *std::move(pic);
  f->req.control = std::move(f->control);
  return 0;
}

PipelineOptions OptionsFromFlags(const GenerateFlags& f) {
  PipelineOptions opts;
  opts.model_dir = f.model;
  opts.device = f.device;
  ApplyPipelineFlags(f.pipeline, &opts);
  if (!f.weights_cache.empty()) opts.weights_cache_dir = f.weights_cache;
  if (!f.controlnet.empty()) opts.controlnet = f.controlnet;
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
  GenerateFlags f;
  flags::FlagSet fs(
      "zfarm-worker generate --model DIR (--prompt TEXT --out FILE.png | --prompts FILE "
      "--out-dir DIR) [flags]");
  Describe(&fs);
  DefineFlags(&fs, &f);
  if (std::optional<int> rc = ParseCommandFlags(kCommand, fs, argc, argv)) return *rc;
  if (!fs.Given("model")) return UsageError(kCommand, fs, "--model is required");
  const bool single = fs.Given("prompt");
  if (single == fs.Given("prompts")) {
    return UsageError(kCommand, fs, "give exactly one of --prompt and --prompts");
  }
  if (single && !fs.Given("out")) return UsageError(kCommand, fs, "--prompt needs --out FILE.png");
  if (!single && !fs.Given("out-dir")) {
    return UsageError(kCommand, fs, "--prompts needs --out-dir DIR");
  }

  bool random_seed = false;
  ImageFormat format = ImageFormat::kPng;
  if (int rc = ParseRequest(fs, &f, &random_seed); rc != 0) return rc;
  if (int rc = ParseOutputFormat(fs, f, &format); rc != 0) return rc;
  if (int rc = ParsePictures(fs, &f); rc != 0) return rc;
  if (int rc = ParseControl(fs, &f); rc != 0) return rc;
  std::vector<std::string> prompts;
  if (single) {
    prompts.push_back(f.prompt);
  } else {
    absl::StatusOr<std::vector<std::string>> lines = ReadPromptsFile(f.prompts);
    if (!lines.ok()) return Fail(std::string(lines.status().message()));
    prompts = *std::move(lines);
  }

  PipelineOptions opts = OptionsFromFlags(f);
  if (!f.precision.empty()) {
    absl::StatusOr<PipelineOptions::Precision> precision = ParsePrecision(f.precision);
    if (!precision.ok()) return UsageError(kCommand, fs, precision.status().message());
    opts.precision = *precision;
  }
  auto pipeline = Pipeline::Create(opts);
  if (!pipeline.ok()) return Fail(pipeline.status().ToString());
  std::printf("loaded %s in %.2f s (%s)\n", opts.model_dir.c_str(), (*pipeline)->load_seconds(),
              (*pipeline)->Describe().c_str());
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateRequest r = f.req;
    r.prompt = prompts[i];
    if (i > 0 && random_seed) r.seed = std::random_device{}() & 0xffffffffu;
    const std::string out = single
                                ? f.out
                                : absl::StrFormat("%s/%05d%s", f.out_dir, static_cast<int>(i + 1),
                                                  ImageFormatExtension(format));
    std::printf("[%zu/%zu] seed %llu -> %s\n", i + 1, prompts.size(),
                static_cast<unsigned long long>(r.seed), out.c_str());
    std::fflush(stdout);
    if (int rc = RenderOne(**pipeline, r, opts.device, out, format, f.quality); rc != 0) {
      return rc;
    }
  }
  return 0;
}

}  // namespace zfarm::worker
