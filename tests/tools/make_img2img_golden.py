#!/usr/bin/env python3
"""Golden outputs of diffusers' ZImageImg2ImgPipeline and ZImageInpaintPipeline on the tiny
Z-Image folder, and of the tiny folder re-saved by today's diffusers/transformers.

Same host and rules as make_golden.py (CPU, float32, diffusers from its source tree on
PYTHONPATH; PIL, which diffusers needs anyway, encodes the input pictures):

    PYTHONPATH=/tmp/diffusers/src python3 tests/tools/make_img2img_golden.py \
        --model TINY_MODEL_DIR --out OUT [--diffusers-commit SHA]

Writes OUT/golden/<case>.safetensors (all F32), OUT/golden/<case>_init.{png,jpg} and
<case>_mask.png (the exact bytes the pipeline read, through PIL's
Image.open(path).convert("RGB"): the C++ tests decode the same files), and OUT/resaved/: the
tiny folder loaded in bfloat16 and written again with save_pretrained (the layout current
libraries write: rope_parameters, dtype, new optional keys), with OUT/golden/resaved_*.safetensors
rendered from it by ZImagePipeline. OUT/versions.json names the library versions.

Per case: init_rgb [h0, w0, 3] (the decoded input before any resize), init_pre [1, 3, H, W]
(VaeImageProcessor output in [-1, 1]), moments [1, 2C, h, w] (the VAE encoder's mean and
log-variance of the init image), image_latents [1, C, h, w] (sampled, shifted and scaled),
noise [1, C, h, w], latents0 (scale_noise of the first kept timestep), latents [steps, 1, C, h,
w] (after every step, the inpainting blend included), image_f32 [H, W, 3], image_u8; inpainting
also mask_pre [1, 1, H, W] (the binarised mask). Metadata: the case parameters.
"""

import argparse
import json
import os
import shutil
import sys
import traceback

import numpy as np
import torch
from safetensors.torch import save_file

# name, kind, prompt, init (w0, h0, ext), mask (w, h) or None, steps, strength, seed
CASES = [
    # Non-square, an init picture that is not a multiple of 16 (Lanczos-resized to 48x32).
    ("img2img_48x32_s06", "img2img", "a red fox in the snow", (61, 45, "png"), None, 4, 0.6, 42),
    # The other orientation, a JPEG input, a lower strength (2 of 4 steps run).
    ("img2img_32x48_s03", "img2img", "a lighthouse at dusk", (32, 48, "jpg"), None, 4, 0.3, 7),
    # Inpainting with a soft RGB mask of another size (resized, then grey, then binarised).
    ("inpaint_48x48_s07", "inpaint", "a cat on a sofa", (48, 48, "png"), (40, 44), 4, 0.7, 123),
]
RESAVED_CASES = [
    # name, prompt, width, height, steps, seed
    ("resaved_48x32_s2", "a red fox in the snow", 48, 32, 2, 42),
]


def make_init(w, h, seed):
    """A smooth picture with some edges: gradients, a disc and stripes (uint8 HxWx3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / w * 3.1 + rng.uniform(0, 3))
    g = 60 + 150 * (y / h)
    b = 128 + 90 * np.cos((x + y) / (w + h) * 6.0)
    disc = (x - w * 0.6) ** 2 + (y - h * 0.4) ** 2 < (min(w, h) * 0.25) ** 2
    r = np.where(disc, 230, r)
    g = np.where(disc, 40, g)
    stripes = ((x // 5) % 2 == 0) & (y > h * 0.75)
    b = np.where(stripes, 20, b)
    img = np.stack([r, g, b], -1) + rng.normal(0, 6, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_mask(w, h):
    """An RGB mask: a soft-edged ellipse (white = repaint), slightly tinted so that the
    grey conversion matters."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    d = ((x - w * 0.45) / (w * 0.32)) ** 2 + ((y - h * 0.55) / (h * 0.3)) ** 2
    v = np.clip(1.5 - d, 0, 1) * 255
    img = np.stack([v, np.clip(v * 0.9 + 10, 0, 255), v * 0.8], -1)
    return np.round(img).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--diffusers-commit", default="unknown")
    args = ap.parse_args()

    import PIL
    from PIL import Image
    import diffusers
    import transformers
    from diffusers import ZImageImg2ImgPipeline, ZImageInpaintPipeline, ZImagePipeline

    gold = os.path.join(args.out, "golden")
    os.makedirs(gold, exist_ok=True)
    versions = {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                "torch": torch.__version__, "pillow": PIL.__version__,
                "numpy": np.__version__, "diffusers_commit": args.diffusers_commit}
    with open(os.path.join(args.out, "versions.json"), "w") as f:
        json.dump(versions, f, indent=1)
    print(json.dumps(versions))

    torch.manual_seed(0)
    pipes = {
        "img2img": ZImageImg2ImgPipeline.from_pretrained(args.model, torch_dtype=torch.float32),
        "inpaint": ZImageInpaintPipeline.from_pretrained(args.model, torch_dtype=torch.float32),
    }
    for p in pipes.values():
        p.to("cpu")
        p.set_progress_bar_config(disable=True)

    for case in CASES:
        try:
            run_case(pipes, gold, versions, *case)
        except Exception:  # report and go on with the other cases
            traceback.print_exc()
    try:
        resave(args.model, args.out, gold, versions)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def run_case(pipes, gold, versions, name, kind, prompt, init_spec, mask_size, steps, strength,
             seed):
    from PIL import Image

    (w0, h0, ext) = init_spec
    pipe = pipes[kind]
    init_path = os.path.join(gold, "%s_init.%s" % (name, ext))
    pil = Image.fromarray(make_init(w0, h0, seed))
    if ext == "jpg":
        pil.save(init_path, quality=90)
    else:
        pil.save(init_path)
    init = Image.open(init_path).convert("RGB")
    mask = None
    if mask_size is not None:
        mask_path = os.path.join(gold, "%s_mask.png" % name)
        Image.fromarray(make_mask(*mask_size)).save(mask_path)
        mask = Image.open(mask_path).convert("RGB")

    rec = {"pre": [], "mask": [], "moments": [], "scale": [], "latents": []}
    orig_pre = pipe.image_processor.preprocess
    orig_scale = pipe.scheduler.scale_noise

    def pre(*a, **kw):
        out = orig_pre(*a, **kw)
        rec["pre"].append(out.detach().clone())
        return out

    def scale(sample, timestep, noise=None):
        out = orig_scale(sample, timestep, noise)
        rec["scale"].append((sample.detach().clone(), noise.detach().clone(), out.detach().clone()))
        return out

    def enc_hook(_mod, _inp, out):
        rec["moments"].append(out.detach().clone())

    def on_step(_pipe, _i, _t, kw):
        rec["latents"].append(kw["latents"].detach().clone())
        return kw

    pipe.image_processor.preprocess = pre
    pipe.scheduler.scale_noise = scale
    h = pipe.vae.encoder.register_forward_hook(enc_hook)
    kwargs = {}
    if mask is not None:
        orig_mask = pipe.mask_processor.preprocess

        def mpre(*a, **kw):
            out = orig_mask(*a, **kw)
            rec["mask"].append(out.detach().clone())
            return out

        pipe.mask_processor.preprocess = mpre
        kwargs["mask_image"] = mask
    gen = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        out = pipe(prompt=prompt, image=init, strength=strength, num_inference_steps=steps,
                   guidance_scale=0.0, generator=gen, output_type="np",
                   callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"],
                   **kwargs)
    h.remove()
    pipe.image_processor.preprocess = orig_pre
    pipe.scheduler.scale_noise = orig_scale
    if mask is not None:
        pipe.mask_processor.preprocess = orig_mask
    img = torch.from_numpy(out.images[0]).float()
    sample0, noise0, lat0 = rec["scale"][0]
    tensors = {
        "init_rgb": torch.from_numpy(np.array(init)).float().contiguous(),
        "init_pre": rec["pre"][0].float().contiguous(),
        "moments": rec["moments"][0].float().contiguous(),
        "image_latents": sample0.float().contiguous(),
        "noise": noise0.float().contiguous(),
        "latents0": lat0.float().contiguous(),
        "latents": torch.stack(rec["latents"], 0).float().contiguous(),
        "image_f32": img.contiguous(),
        "image_u8": (img * 255).round().to(torch.uint8).float().contiguous(),
    }
    if mask is not None:
        tensors["mask_pre"] = rec["mask"][0].float().contiguous()
        tensors["mask_rgb"] = torch.from_numpy(np.array(mask)).float().contiguous()
    meta = {"kind": kind, "prompt": prompt, "width": str(img.shape[1]), "height": str(img.shape[0]),
            "init": os.path.basename(init_path), "steps": str(steps), "strength": repr(strength),
            "seed": str(seed), **{k + "_version": v for k, v in versions.items()}}
    if mask is not None:
        meta["mask"] = os.path.basename(mask_path)
    save_file(tensors, os.path.join(gold, name + ".safetensors"), metadata=meta)
    print(json.dumps({"case": name, "steps_run": len(rec["latents"]),
                      **{k: list(v.shape) for k, v in tensors.items()}}))



def resave(model, out_dir, gold, versions):
    from diffusers import ZImagePipeline

    # The tiny folder as current libraries write it (bf16 weights, as users' converted folders).
    resaved = os.path.join(out_dir, "resaved")
    shutil.rmtree(resaved, ignore_errors=True)
    ZImagePipeline.from_pretrained(model, torch_dtype=torch.bfloat16).save_pretrained(resaved)
    pipe = ZImagePipeline.from_pretrained(resaved, torch_dtype=torch.float32)
    pipe.to("cpu")
    pipe.set_progress_bar_config(disable=True)
    for name, prompt, width, height, steps, seed in RESAVED_CASES:
        rec = {"latents": []}

        def on_step(_pipe, _i, _t, kw):
            rec["latents"].append(kw["latents"].detach().clone())
            return kw

        gen = torch.Generator("cpu").manual_seed(seed)
        with torch.no_grad():
            out = pipe(prompt=prompt, width=width, height=height, num_inference_steps=steps,
                       guidance_scale=0.0, generator=gen, output_type="np",
                       callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
        img = torch.from_numpy(out.images[0]).float()
        tensors = {"latents": torch.stack(rec["latents"], 0).float().contiguous(),
                   "image_f32": img.contiguous(),
                   "image_u8": (img * 255).round().to(torch.uint8).float().contiguous()}
        meta = {"prompt": prompt, "width": str(width), "height": str(height), "steps": str(steps),
                "seed": str(seed), **{k + "_version": v for k, v in versions.items()}}
        save_file(tensors, os.path.join(gold, name + ".safetensors"), metadata=meta)
        print(json.dumps({"case": name, **{k: list(v.shape) for k, v in tensors.items()}}))
    for root, _dirs, files in os.walk(resaved):
        for f in sorted(files):
            p = os.path.join(root, f)
            print("resaved", os.path.relpath(p, resaved), os.path.getsize(p))


if __name__ == "__main__":
    sys.exit(main())
