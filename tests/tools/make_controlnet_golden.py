#!/usr/bin/env python3
"""Tiny Z-Image ControlNets (Union 2.0 and 2.1 layouts, random weights) and golden outputs of
diffusers' ZImageControlNetPipeline and ZImageControlNetInpaintPipeline on the tiny Z-Image
folder.

Same host and rules as make_golden.py / make_img2img_golden.py (CPU, float32, diffusers from
its source tree on PYTHONPATH; PIL encodes the input pictures):

    PYTHONPATH=/tmp/diffusers/src python3 tests/tools/make_controlnet_golden.py \
        --model TINY_MODEL_DIR --out OUT [--diffusers-commit SHA]

Writes OUT/controlnet-2.0/ and OUT/controlnet-2.1/ (diffusers folders written by
save_pretrained in bfloat16: config.json + diffusion_pytorch_model.safetensors; the goldens use
these bf16 values in float32), OUT/golden/<case>.safetensors (all F32), the input pictures
OUT/golden/<case>_control.png (and _init.png, _mask.png for inpainting) as the pipeline read
them, and OUT/versions.json.

Every parameter is random (diffusers zero-initialises before_proj/after_proj, which would make
the hints vanish and the test unable to fail): weights N(0, 1/fan_in), biases N(0, 0.02), norm
weights 1 + N(0, 0.1).

Per case: control_context [1, control_in_dim, 1, h, w] (what the ControlNet got at the first
step: the control latents, zero-padded for plain control, or [control, mask, masked init
latents] for inpainting), hint0 [1, S, dim] (the first place's scaled hint at the first step),
noise [1, C, h, w], latents [steps, 1, C, h, w] (after every step), image_u8 [H, W, 3] (uint8
values). Metadata: the case parameters.
"""

import argparse
import json
import math
import os
import sys
import traceback

import numpy as np
import torch
from safetensors.torch import save_file

# layout name -> ZImageControlNetModel settings besides the DiT's sizes
LAYOUTS = {
    # 2.0: the control layers run twice; two of them give the noise refiner's hints.
    "2.0": dict(control_layers_places=[0, 1], control_refiner_layers_places=[0, 1],
                add_control_noise_refiner="control_layers", control_in_dim=33,
                n_refiner_layers=2),
    # 2.1: a control noise refiner of its own (one block here, hint for refiner block 0).
    "2.1": dict(control_layers_places=[0], control_refiner_layers_places=[0],
                add_control_noise_refiner="control_noise_refiner", control_in_dim=33,
                n_refiner_layers=1),
}

# name, layout, prompt, width, height, control picture (w0, h0), inpaint (init, mask sizes)
# or None, steps, scale, seed
CASES = [
    # Plain control (context zero-padded to 33 channels), a control picture of another size
    # (Lanczos-resized to 48x32), diffusers' default scale.
    ("control20_48x32", "2.0", "a red fox in the snow", 48, 32, (61, 45), None, 3, 0.75, 42),
    # The other layout and orientation, a scale above 1.
    ("control21_32x48", "2.1", "a lighthouse at dusk", 32, 48, (32, 48), None, 3, 1.3, 7),
    # ControlNet inpainting: [control, mask, masked init latents], pure noise start.
    ("control21_inpaint_48x48", "2.1", "a cat on a sofa", 48, 48, (48, 48), ((48, 48), (40, 44)),
     3, 0.9, 123),
]


def make_picture(w, h, seed):
    """Edges on a dark ground, like a canny map: a circle, a box and lines (uint8 HxWx3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w), np.float64)
    r = np.hypot(x - w * 0.4, y - h * 0.5)
    img[np.abs(r - min(w, h) * 0.28) < 1.2] = 255
    box = ((np.abs(x - w * 0.72) < w * 0.15) & (np.abs(y - h * 0.3) < h * 0.15))
    edge = box & ~((np.abs(x - w * 0.72) < w * 0.15 - 1.5) & (np.abs(y - h * 0.3) < h * 0.15 - 1.5))
    img[edge] = 255
    img[(np.abs(y - (h * 0.8 + (x - w / 2) * 0.3)) < 1.0)] = 200
    img = img + rng.normal(0, 4, img.shape)
    return np.clip(np.round(np.stack([img, img * 0.95, img], -1)), 0, 255).astype(np.uint8)


def make_init(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / w * 3.1 + rng.uniform(0, 3))
    g = 60 + 150 * (y / h)
    b = 128 + 90 * np.cos((x + y) / (w + h) * 6.0)
    img = np.stack([r, g, b], -1) + rng.normal(0, 6, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_mask(w, h):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    d = ((x - w * 0.45) / (w * 0.32)) ** 2 + ((y - h * 0.55) / (h * 0.3)) ** 2
    v = np.clip(1.5 - d, 0, 1) * 255
    return np.round(np.stack([v, np.clip(v * 0.9 + 10, 0, 255), v * 0.8], -1)).astype(np.uint8)


def randomise(module, seed):
    g = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--diffusers-commit", default="unknown")
    args = ap.parse_args()

    import PIL
    import diffusers
    import transformers
    from diffusers import (ZImageControlNetInpaintPipeline, ZImageControlNetModel,
                           ZImageControlNetPipeline, ZImagePipeline)

    gold = os.path.join(args.out, "golden")
    os.makedirs(gold, exist_ok=True)
    versions = {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                "torch": torch.__version__, "pillow": PIL.__version__,
                "numpy": np.__version__, "diffusers_commit": args.diffusers_commit}
    with open(os.path.join(args.out, "versions.json"), "w") as f:
        json.dump(versions, f, indent=1)
    print(json.dumps(versions))

    base = ZImagePipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    tc = base.transformer.config
    nets = {}
    for i, (layout, settings) in enumerate(sorted(LAYOUTS.items())):
        net = ZImageControlNetModel(all_patch_size=tuple(tc.all_patch_size),
                                    all_f_patch_size=tuple(tc.all_f_patch_size), dim=tc.dim,
                                    n_heads=tc.n_heads, n_kv_heads=tc.n_kv_heads,
                                    norm_eps=tc.norm_eps, qk_norm=tc.qk_norm, **settings)
        randomise(net, 1000 + i)
        folder = os.path.join(args.out, "controlnet-" + layout)
        net.to(torch.bfloat16).save_pretrained(folder)
        nets[layout] = ZImageControlNetModel.from_pretrained(folder, torch_dtype=torch.float32)
        for f in sorted(os.listdir(folder)):
            print("controlnet", layout, f, os.path.getsize(os.path.join(folder, f)))

    status = 0
    for case in CASES:
        try:
            run_case(base, nets, gold, versions, *case)
        except Exception:  # report and go on with the other cases
            traceback.print_exc()
            status = 1
    return status


def run_case(base, nets, gold, versions, name, layout, prompt, width, height, control_size,
             inpaint, steps, scale, seed):
    from PIL import Image
    from diffusers import ZImageControlNetInpaintPipeline, ZImageControlNetPipeline

    cls = ZImageControlNetInpaintPipeline if inpaint else ZImageControlNetPipeline
    pipe = cls(scheduler=base.scheduler, vae=base.vae, text_encoder=base.text_encoder,
               tokenizer=base.tokenizer, transformer=base.transformer,
               controlnet=nets[layout])
    pipe.to("cpu")
    pipe.set_progress_bar_config(disable=True)

    def save_picture(arr, suffix):
        path = os.path.join(gold, "%s_%s.png" % (name, suffix))
        Image.fromarray(arr).save(path)
        return Image.open(path).convert("RGB"), os.path.basename(path)

    control, control_file = save_picture(make_picture(*control_size, seed), "control")
    kwargs = {}
    meta = {}
    if inpaint:
        (iw, ih), (mw, mh) = inpaint
        kwargs["image"], meta["init"] = save_picture(make_init(iw, ih, seed + 1), "init")
        kwargs["mask_image"], meta["mask"] = save_picture(make_mask(mw, mh), "mask")

    rec = {"context": [], "hints": [], "latents": [], "noise": []}
    orig_cn = pipe.controlnet.forward
    orig_latents = pipe.prepare_latents

    def cn(*a, **kw):
        rec["context"].append(a[3][0].detach().clone())
        out = orig_cn(*a, **kw)
        rec["hints"].append(out[pipe.controlnet.control_layers_places[0]].detach().clone())
        return out

    def latents(*a, **kw):
        out = orig_latents(*a, **kw)
        rec["noise"].append(out.detach().clone())
        return out

    def on_step(_pipe, _i, _t, kw):
        rec["latents"].append(kw["latents"].detach().clone())
        return kw

    pipe.controlnet.forward = cn
    pipe.prepare_latents = latents
    gen = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        out = pipe(prompt=prompt, control_image=control, width=width, height=height,
                   controlnet_conditioning_scale=scale, num_inference_steps=steps,
                   guidance_scale=0.0, generator=gen, output_type="np",
                   callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"],
                   **kwargs)
    pipe.controlnet.forward = orig_cn
    img = torch.from_numpy(out.images[0]).float()
    tensors = {
        "control_context": rec["context"][0].unsqueeze(0).float().contiguous(),
        "hint0": rec["hints"][0].float().contiguous(),
        "noise": rec["noise"][0].float().contiguous(),
        "latents": torch.stack(rec["latents"], 0).float().contiguous(),
        "image_u8": (img * 255).round().to(torch.uint8).float().contiguous(),
    }
    meta.update({"kind": "inpaint" if inpaint else "control", "layout": layout,
                 "prompt": prompt, "width": str(width), "height": str(height),
                 "control": control_file, "steps": str(steps), "scale": repr(scale),
                 "seed": str(seed), **{k + "_version": v for k, v in versions.items()}})
    save_file(tensors, os.path.join(gold, name + ".safetensors"), metadata=meta)
    print(json.dumps({"case": name, **{k: list(v.shape) for k, v in tensors.items()}}))


if __name__ == "__main__":
    sys.exit(main())
