#!/usr/bin/env python3
"""diffusers baseline for pipeline_bench: Z-Image-Turbo's ZImagePipeline at full size.

Builds the full-size configuration directly on the GPU in bf16 with random weights (no model
files): ZImageTransformer2DModel (Turbo config), AutoencoderKL (FLUX.1 VAE config) and a
transformers Qwen3Model (Qwen3-4B config); the tokenizer is the official Qwen3 tokenizer.json
(tests/tools/fetch-tokenizer.sh) with the Qwen3 chat template. Times it the way pipeline_bench
does: warm-up first, torch.cuda.synchronize() at stage borders, median of repetitions, peak
memory per size; per stage (tokenize, encode, each DiT step, VAE decode, postprocess, PNG) and
end to end at 512^2, 768^2, 1024^2 (and 1024x1536), 8 steps.

diffusers comes from its source tree on PYTHONPATH (tests/gpu/run.sh unpacks a carried
snapshot); its commit is recorded in the output.

Usage: diffusers_baseline.py --tokenizer tokenizer.json [--out FILE.md] [--compile]
                             [--sizes 512x512,1024x1024] [--steps 8] [--reps 3]
                             [--diffusers-commit SHA]
"""

import argparse
import datetime
import io
import statistics
import sys
import time

import torch

QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)

PROMPT = ("A photograph of a red fox sitting in fresh snow at dawn, soft golden light, "
          "shallow depth of field, highly detailed fur")


def log(*a):
    print("diffusers_baseline:", *a, file=sys.stderr, flush=True)


def make_tokenizer(path):
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=path)
    tok.pad_token = "<|endoftext|>"
    tok.padding_side = "right"
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    return tok


def build_pipeline(tokenizer_path):
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline,
                           ZImageTransformer2DModel)
    from transformers import Qwen3Config, Qwen3Model

    t0 = time.perf_counter()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            transformer = ZImageTransformer2DModel(
                all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
                n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True,
                cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48],
                axes_lens=[1536, 512, 512])
            vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=16,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
                act_fn="silu", sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True,
                force_upcast=True)
            qcfg = Qwen3Config(
                vocab_size=151936, hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, intermediate_size=9728, hidden_act="silu",
                rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
                attention_bias=False, tie_word_embeddings=True)
            try:
                qcfg._attn_implementation = "sdpa"
            except Exception:  # noqa: BLE001 - older/newer transformers
                pass
            text_encoder = Qwen3Model(qcfg)
    finally:
        torch.set_default_dtype(prev)
    transformer = transformer.to(torch.bfloat16).eval()
    vae = vae.to(torch.bfloat16).eval()
    text_encoder = text_encoder.to(torch.bfloat16).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0,
                                                use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                          tokenizer=make_tokenizer(tokenizer_path), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    torch.cuda.synchronize()
    n = lambda m: sum(p.numel() for p in m.parameters()) / 1e9  # noqa: E731
    log(f"built in {time.perf_counter() - t0:.1f} s: DiT {n(transformer):.2f}B, "
        f"Qwen3 {n(text_encoder):.2f}B, VAE {n(vae) * 1000:.1f}M params")
    return pipe


class StageTimer:
    """Synchronizing wrappers around the pipeline's stages (only while enabled)."""

    def __init__(self, pipe):
        self.enabled = False
        self.reset()
        self._wrap(pipe, "encode_prompt", "encode_prompt")
        self._wrap(pipe.vae, "decode", "vae")
        self._wrap(pipe.image_processor, "postprocess", "postprocess")
        te, tr = pipe.text_encoder, pipe.transformer
        te.register_forward_pre_hook(lambda m, a: self._start("text_encoder"))
        te.register_forward_hook(lambda m, a, o: self._stop("text_encoder"))
        tr.register_forward_pre_hook(lambda m, a: self._start("dit"))
        tr.register_forward_hook(lambda m, a, o: self._stop("dit"))

    def reset(self):
        self.times = {}
        self._t0 = {}

    def _start(self, key):
        if self.enabled:
            torch.cuda.synchronize()
            self._t0[key] = time.perf_counter()

    def _stop(self, key):
        if self.enabled:
            torch.cuda.synchronize()
            self.times.setdefault(key, []).append((time.perf_counter() - self._t0[key]) * 1e3)

    def _wrap(self, obj, name, key):
        fn = getattr(obj, name)

        def wrapped(*a, **k):
            self._start(key)
            out = fn(*a, **k)
            self._stop(key)
            return out

        setattr(obj, name, wrapped)


def run_once(pipe, h, w, steps, seed):
    gen = torch.Generator("cuda").manual_seed(seed)
    out = pipe(prompt=PROMPT, height=h, width=w, num_inference_steps=steps, guidance_scale=0.0,
               generator=gen, output_type="pil")
    torch.cuda.synchronize()
    return out.images[0]


def png_ms(image):
    t0 = time.perf_counter()
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return (time.perf_counter() - t0) * 1e3


def bench_size(pipe, timer, h, w, steps, reps):
    run_once(pipe, h, w, steps, 0)  # warm-up (allocator, cuDNN/cuBLAS plans, compile)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    e2e = []
    for r in range(reps):
        t0 = time.perf_counter()
        image = run_once(pipe, h, w, steps, 1 + r)
        e2e.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30
    # One more run with synchronizing stage timers.
    timer.reset()
    timer.enabled = True
    image = run_once(pipe, h, w, steps, 100)
    timer.enabled = False
    t = timer.times
    enc_total = t["encode_prompt"][0]
    encode = t["text_encoder"][0]
    dit = t["dit"]
    return {
        "size": f"{w}x{h}" if w != h else f"{h}x{w}",
        "tokenize": enc_total - encode,  # chat template + tokenizer (+ list handling)
        "encode": encode,
        "dit": dit,
        "vae": t["vae"][0],
        "post": t["postprocess"][0],
        "png": png_ms(image),
        "e2e": statistics.median(e2e),
        "e2e_min": min(e2e),
        "peak": peak,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="the official Qwen3 tokenizer.json")
    ap.add_argument("--out", help="markdown file to write")
    ap.add_argument("--compile", action="store_true", help="torch.compile the transformer (~5 min)")
    ap.add_argument("--sizes", default="512x512,768x768,1024x1024,1024x1536",
                    help="HxW list (height x width)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--diffusers-commit", default="unknown")
    ap.add_argument("--zfarm-commit", default="unknown")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        log("no CUDA device visible: nothing to measure")
        return 0

    import diffusers
    torch.backends.cuda.matmul.allow_tf32 = False
    pipe = build_pipeline(args.tokenizer)
    mode = "eager"
    if args.compile:
        pipe.transformer.compile()  # in place: hooks and the pipeline's module stay the same
        mode = "torch.compile (transformer)"
        log("compiling (first call of each size compiles)")
    timer = StageTimer(pipe)

    rows = []
    for item in args.sizes.split(","):
        h, w = (int(v) for v in item.split("x"))
        t0 = time.perf_counter()
        r = bench_size(pipe, timer, h, w, args.steps, args.reps)
        r["size"] = f"{h}x{w}"
        log(f"{item}: {time.perf_counter() - t0:.1f} s incl. warm-up; e2e {r['e2e']:.3f} s")
        rows.append(r)

    gpu = torch.cuda.get_device_name(0)
    lines = [
        f"## diffusers baseline ({mode})",
        "",
        f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, GPU {gpu}, "
        f"torch {torch.__version__}, diffusers {diffusers.__version__} @ {args.diffusers_commit[:12]}, "
        f"zfarm @ {args.zfarm_commit}; full-size random bf16 weights, {args.steps} steps, "
        f"guidance 0, SDPA default backend; median of {args.reps} end-to-end runs after a warm-up, "
        "stages from one further run with synchronizing timers. diffusers caches no caption: "
        "every image runs the text encoder, as a new prompt does in zfarm; images/min = 60 / "
        "end to end.",
        "",
        "| image (HxW) | tokenize ms | encode ms | DiT step ms (mean / min / max) | VAE ms | "
        "postprocess ms | PNG ms | end to end s | images/min | peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        d = r["dit"]
        lines.append(
            f"| {r['size']} | {r['tokenize']:.1f} | {r['encode']:.1f} | "
            f"{statistics.mean(d):.1f} / {min(d):.1f} / {max(d):.1f} | {r['vae']:.1f} | "
            f"{r['post']:.1f} | {r['png']:.1f} | {r['e2e']:.3f} | {60 / r['e2e']:.1f} | "
            f"{r['peak']:.1f} |")
    lines.append("")
    text = "\n".join(lines)
    print(text, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
