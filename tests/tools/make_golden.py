#!/usr/bin/env python3
"""Golden outputs of diffusers' ZImagePipeline on a tiny Z-Image folder.

Runs on a host with torch >= 2.6, transformers and safetensors, with diffusers
from its source tree on PYTHONPATH (the GPU host; see tests/gpu/README.md).
Everything is computed on the CPU in float32 (CUDA would use TF32 convolutions).

    PYTHONPATH=/tmp/diffusers/src python3 tests/tools/make_golden.py \
        --model DIR_FROM_make_tiny_model --out tests/testdata/golden \
        [--diffusers-commit SHA]

Writes one <case>.safetensors per case (all F32) with: ids [L], caption [L, D],
noise [1, C, h, w], t_emb [steps, A], dit_out0 [C, 1, h, w] (first DiT call),
latents [steps, 1, C, h, w] (after every step), image_f32 [H, W, 3] (post-
processed float in [0, 1]), image_u8 [H, W, 3] (uint8 values); metadata: the case
parameters and the diffusers commit.
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

CASES = [
    # name, prompt, negative, width, height, steps, seed, guidance
    ("fox_48x32_s2", "a red fox in the snow", "", 48, 32, 2, 42, 0.0),
    ("long_80x48_s3",
     "A photograph of a lighthouse on a rocky coast at dusk, waves crashing, warm light in the "
     "windows, seagulls, dramatic clouds, 35mm film grain", "", 80, 48, 3, 7, 0.0),
    ("square_64_s8", "a cat", "", 64, 64, 8, 123, 0.0),
    ("cfg_32x64_s2", "a blue bicycle", "blurry", 32, 64, 2, 5, 2.0),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--diffusers-commit", default="unknown")
    args = ap.parse_args()

    import diffusers
    from diffusers import ZImagePipeline

    torch.manual_seed(0)
    pipe = ZImagePipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.to("cpu")
    pipe.set_progress_bar_config(disable=True)
    os.makedirs(args.out, exist_ok=True)

    for name, prompt, negative, width, height, steps, seed, guidance in CASES:
        rec = {"ids": [], "t_emb": [], "dit": [], "latents": []}

        def te_pre(_mod, a, kw):
            ids = kw.get("input_ids", a[0] if a else None)
            mask = kw.get("attention_mask")
            if mask is not None:
                ids = ids[mask.bool()]
            rec["ids"].append(ids.reshape(-1).to(torch.int32).clone())

        def t_hook(_mod, _inp, out):
            rec["t_emb"].append(out.detach().clone())

        def dit_hook(_mod, _inp, out):
            rec["dit"].append(out[0][0].detach().clone())

        def on_step(_pipe, _i, _t, kw):
            rec["latents"].append(kw["latents"].detach().clone())
            return kw

        h1 = pipe.text_encoder.register_forward_pre_hook(te_pre, with_kwargs=True)
        h2 = pipe.transformer.t_embedder.register_forward_hook(t_hook)
        h3 = pipe.transformer.register_forward_hook(dit_hook)
        gen = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn((1, pipe.transformer.in_channels, height // 8, width // 8),
                            generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        with torch.no_grad():
            caption = pipe.encode_prompt(prompt=prompt, device="cpu",
                                         do_classifier_free_guidance=False)[0][0]
            rec["ids"].clear()
            out = pipe(prompt=prompt, negative_prompt=negative or None, width=width, height=height,
                       num_inference_steps=steps, guidance_scale=guidance, generator=gen,
                       output_type="np", callback_on_step_end=on_step,
                       callback_on_step_end_tensor_inputs=["latents"])
        h1.remove(); h2.remove(); h3.remove()
        img = torch.from_numpy(out.images[0]).float()  # [H, W, 3] in [0, 1]
        t_emb = torch.cat([t[:1] for t in rec["t_emb"]], 0)  # positive row of each step
        tensors = {
            # Integers are stored as float32 (exact) because the project's
            # safetensors reader handles F32/BF16/F16 only.
            "ids": rec["ids"][0].float(),
            "caption": caption.float().contiguous(),
            "noise": noise.contiguous(),
            "t_emb": t_emb.float().contiguous(),
            "dit_out0": rec["dit"][0].float().contiguous(),
            "latents": torch.stack(rec["latents"], 0).float().contiguous(),
            "image_f32": img.contiguous(),
            "image_u8": (img * 255).round().to(torch.uint8).float().contiguous(),
        }
        if guidance > 0 and len(rec["ids"]) > 1:
            tensors["negative_ids"] = rec["ids"][1].float()
        meta = {
            "prompt": prompt, "negative_prompt": negative, "width": str(width),
            "height": str(height), "steps": str(steps), "seed": str(seed),
            "guidance": repr(guidance), "diffusers_commit": args.diffusers_commit,
            "diffusers_version": diffusers.__version__, "torch_version": torch.__version__,
        }
        save_file(tensors, os.path.join(args.out, name + ".safetensors"), metadata=meta)
        print(json.dumps({"case": name, **{k: list(v.shape) for k, v in tensors.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
