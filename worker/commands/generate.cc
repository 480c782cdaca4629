// zfarm-worker generate: render images with no scheduler (the seed's
// run_z_image.py). Parses its own argv (no global flags).
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/commands/commands.h"
#include "worker/commands/flags.h"
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
    "  [--weights-cache DIR]   (the bf16 DiT copy of `zfarm-worker cache-weights`)\n"
    "  [--lora FILE[:SCALE]]... (repeatable, at most 8, scale in [-4, 4], default 1)\n"
    "  [--lora-dir DIR]        (--lora NAME[:SCALE] then means DIR/NAME.safetensors)\n"
    "  [--output-format png|jpeg|webp] [--quality 1-100 (jpeg/webp, default 90)]\n"
    "  [--init-image FILE.png|.jpg [--strength 0.6] [--mask FILE]]   (image-to-image;\n"
    "                          with --mask inpainting, white = repaint; the size defaults\n"
    "                          to the picture's, rounded down to multiples of 16)\n"
    "Steps are transformer evaluations: the model card's \"9 steps\" are 8 here.\n";

const std::vector<std::string> kBoolFlags = {"vae-fp32",       "offload-text-encoder",
                                             "vae-tiling",     "no-cuda-graphs",
                                             "reference-ops",  "help"};
const std::vector<std::string> kValueFlags = {"model",   "prompt",   "prompts",         "out",
                                              "out-dir", "width",    "height",          "steps",
                                              "seed",    "guidance", "negative-prompt", "device",
                                              "weights-cache", "lora", "lora-dir",
                                              "output-format", "quality",
                                              "init-image", "strength", "mask"};

// The largest input picture file read (the scheduler's default --max-input-bytes).
constexpr uint64_t kMaxPictureBytes = 16u << 20;

absl::StatusOr<InputPicture> ReadPicture(const std::string& flag, const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadSmallFile(path, kMaxPictureBytes);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<DecodedImage> d = DecodeImage(*bytes, absl::StrCat(flag, " ", path));
  if (!d.ok()) return d.status();
  return InputPicture{d->width, d->height, std::move(d->rgb), Sha256Hex(*bytes)};
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "zfarm-worker generate: %s\n%s", why.c_str(), kUsage);
  return 2;
}

}  // namespace

int RunGenerate(int argc, char** argv) {
  absl::StatusOr<ParsedFlags> parsed = ParseFlags(argc, argv, kBoolFlags, kValueFlags);
  if (!parsed.ok()) return Usage(std::string(parsed.status().message()));
  std::map<std::string, std::string> f = parsed->values;
  if (f.count("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  auto flag_true = [&](const std::string& k) {
    return f.count(k) && f[k] != "false" && f[k] != "0";
  };
  if (!f.count("model")) return Usage("--model is required");
  const bool single = f.count("prompt") > 0;
  if (single == (f.count("prompts") > 0))
    return Usage("give exactly one of --prompt and --prompts");
  if (single && !f.count("out")) return Usage("--prompt needs --out FILE.png");
  if (!single && !f.count("out-dir")) return Usage("--prompts needs --out-dir DIR");

  GenerateRequest req;
  auto get_int = [&](const std::string& k, int* out) {
    return !f.count(k) || absl::SimpleAtoi(f[k], out);
  };
  if (!get_int("width", &req.width) || !get_int("height", &req.height) ||
      !get_int("steps", &req.steps)) {
    return Usage("--width, --height and --steps take integers");
  }
  if (f.count("guidance") && !absl::SimpleAtof(f["guidance"], &req.guidance)) {
    return Usage("--guidance takes a number");
  }
  bool random_seed = !f.count("seed");
  if (!random_seed && !absl::SimpleAtoi(f["seed"], &req.seed)) {
    return Usage("--seed takes a non-negative integer");
  }
  if (random_seed) req.seed = std::random_device{}() & 0xffffffffu;
  req.negative_prompt = f.count("negative-prompt") ? f["negative-prompt"] : "";
  for (const std::string& v : parsed->GetAll("lora")) {
    absl::StatusOr<LoraFlag> l = ParseLoraFlag(v, parsed->Get("lora-dir"));
    if (!l.ok()) return Usage(std::string(l.status().message()));
    // Hashed once here, not for every image.
    absl::StatusOr<std::string> sha = Sha256OfFile(l->path);
    if (!sha.ok()) {
      std::fprintf(stderr, "zfarm-worker generate: %s\n", std::string(sha.status().message()).c_str());
      return 1;
    }
    req.loras.push_back({l->name, l->path, *sha, l->scale});
  }

  ImageFormat format = ImageFormat::kPng;
  int quality = 0;
  if (f.count("output-format")) {
    absl::StatusOr<ImageFormat> parsed_format = ParseImageFormat(f["output-format"], "--output-format");
    if (!parsed_format.ok()) return Usage(std::string(parsed_format.status().message()));
    format = *parsed_format;
  }
  if (!get_int("quality", &quality) || (quality != 0 && (quality < 1 || quality > 100))) {
    return Usage("--quality takes an integer in [1, 100]");
  }
  if (quality != 0 && format == ImageFormat::kPng) {
    return Usage("--quality needs --output-format jpeg or webp (png is lossless)");
  }
  if (!f.count("init-image") && (f.count("mask") || f.count("strength"))) {
    return Usage("--mask and --strength need --init-image");
  }
  if (f.count("strength") && !absl::SimpleAtof(f["strength"], &req.strength)) {
    return Usage("--strength takes a number in (0, 1]");
  }
  if (f.count("init-image")) {
    absl::StatusOr<InputPicture> init = ReadPicture("--init-image", f["init-image"]);
    if (!init.ok()) {
      std::fprintf(stderr, "zfarm-worker generate: %s\n", std::string(init.status().message()).c_str());
      return 1;
    }
    // diffusers' default: the picture's own size rounded down to multiples of 16.
    if (!f.count("width")) req.width = init->width - init->width % 16;
    if (!f.count("height")) req.height = init->height - init->height % 16;
    req.init_image = *std::move(init);
    if (f.count("mask")) {
      absl::StatusOr<InputPicture> mask = ReadPicture("--mask", f["mask"]);
      if (!mask.ok()) {
        std::fprintf(stderr, "zfarm-worker generate: %s\n", std::string(mask.status().message()).c_str());
        return 1;
      }
      req.mask_image = *std::move(mask);
    }
  }

  std::vector<std::string> prompts;
  if (single) {
    prompts.push_back(f["prompt"]);
  } else {
    std::ifstream in(f["prompts"]);
    if (!in) {
      std::fprintf(stderr, "zfarm-worker generate: cannot read %s\n", f["prompts"].c_str());
      return 1;
    }
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) prompts.push_back(line);
    }
    if (prompts.empty()) {
      std::fprintf(stderr, "zfarm-worker generate: %s has no prompts\n", f["prompts"].c_str());
      return 1;
    }
  }

  PipelineOptions opts;
  opts.model_dir = f["model"];
  opts.device = f.count("device") ? f["device"] : "cpu";
  opts.vae_fp32 = flag_true("vae-fp32");
  opts.offload_text_encoder = flag_true("offload-text-encoder");
  opts.vae_tiling = flag_true("vae-tiling");
  opts.cuda_graphs = !flag_true("no-cuda-graphs");
  opts.fused_ops = !flag_true("reference-ops");
  if (f.count("weights-cache")) opts.weights_cache_dir = f["weights-cache"];
  auto pipeline = Pipeline::Create(opts);
  if (!pipeline.ok()) {
    std::fprintf(stderr, "zfarm-worker generate: %s\n", pipeline.status().ToString().c_str());
    return 1;
  }
  std::printf("loaded %s in %.2f s (%s)\n", opts.model_dir.c_str(), (*pipeline)->load_seconds(),
              (*pipeline)->Describe().c_str());

  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateRequest r = req;
    r.prompt = prompts[i];
    if (i > 0 && random_seed) r.seed = std::random_device{}() & 0xffffffffu;
    std::string out =
        single ? f["out"] : absl::StrFormat("%s/%05d%s", f["out-dir"], static_cast<int>(i + 1),
                                         ImageFormatExtension(format));
    std::printf("[%zu/%zu] seed %llu -> %s\n", i + 1, prompts.size(),
                static_cast<unsigned long long>(r.seed), out.c_str());
    std::fflush(stdout);
    auto img = (*pipeline)->Generate(
        r,
        [](int step, int total) {
          std::fprintf(stderr, "\rstep %d/%d", step, total);
          if (step == total) std::fputc('\n', stderr);
        },
        nullptr);
    if (!img.ok()) {
      std::fprintf(stderr, "zfarm-worker generate: %s\n", img.status().ToString().c_str());
      return 1;
    }
    if (img->prompt_truncated) {
      std::printf("warning: prompt truncated from %d to %d tokens\n",
                  img->untruncated_prompt_tokens, img->prompt_tokens);
    }
    ImageParameters p;
    p.prompt = r.prompt;
    p.negative_prompt = r.guidance > 0 ? r.negative_prompt : "";
    p.steps = r.steps;
    p.guidance = r.guidance;
    p.seed = r.seed;
    p.width = r.width;
    p.height = r.height;
    p.device = opts.device;
    p.prompt_tokens = img->prompt_tokens;
    p.prompt_truncated = img->prompt_truncated;
    for (const LoraRequest& l : img->loras) p.loras.push_back({l.name, l.sha256, l.scale});
    if (r.init_image.has_value()) {
      p.strength = r.strength;
      p.init_image_sha256 = r.init_image->sha256;
      if (r.mask_image.has_value()) p.mask_sha256 = r.mask_image->sha256;
    }
    if (absl::Status s = WriteImage(out, img->rgb, p, format, quality); !s.ok()) {
      std::fprintf(stderr, "zfarm-worker generate: %s\n", s.ToString().c_str());
      return 1;
    }
    const StageTimings& t = img->timings;
    for (const LoraRequest& l : img->loras) {
      std::printf("lora %s x%g (%s, sha256 %.12s)\n", l.name.c_str(), l.scale, l.path.c_str(),
                  l.sha256.c_str());
    }
    if (!img->loras.empty()) std::printf("loras applied in %.3f s\n", t.lora_s);
    if (r.init_image.has_value()) {
      std::printf("%s from %dx%d, strength %g: %d of %d steps, image encode %.3f s\n",
                  r.mask_image.has_value() ? "inpainting" : "image-to-image", r.init_image->width,
                  r.init_image->height, r.strength, img->steps_run, r.steps, t.encode_image_s);
    }
    std::printf(
        "tokenize %.3f s, encode %.3f s, denoise %.3f s (%.3f s/step), decode %.3f s, total %.3f "
        "s, "
        "peak memory %.1f MiB\n",
        t.tokenize_s, t.encode_s, t.denoise_s, t.denoise_s / std::max(1, img->steps_run),
        t.decode_s, t.total_s,
        img->peak_device_bytes / 1048576.0);
  }
  return 0;
}

}  // namespace zfarm::worker
