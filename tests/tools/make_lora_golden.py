#!/usr/bin/env python3
"""Golden outputs of diffusers' ZImagePipeline with LoRAs on the tiny Z-Image folder.

Same host and rules as make_golden.py (CPU, float32, diffusers from its source tree on
PYTHONPATH, peft installed). The LoRA files are those of make_tiny_loras.py:

    PYTHONPATH=/tmp/diffusers/src python3 tests/tools/make_lora_golden.py \
        --model TINY_MODEL_DIR --loras tests/testdata/lora --out tests/testdata/golden

Each case loads two files with load_lora_weights (one adapter each) and stacks them with
set_adapters at different scales. diffusers does not map ComfyUI's fused attention.qkv and
bare attention.out names onto ZImageTransformer2DModel (it leaves those keys unused), so
tiny_comfy is handed to diffusers after the split zfarm applies: lora_B cut by rows into
thirds for to_q / to_k / to_v with lora_A (and alpha) shared, out renamed to_out.0. Every
other file goes to diffusers unchanged. The script checks that every LoRA module of each
file was injected (no silent drops) before rendering.

Writes <case>.safetensors (F32): noise, dit_out0, latents [steps, 1, C, h, w],
image_f32 [H, W, 3], image_u8 [H, W, 3]; metadata: prompt, size, steps, seed, the LoRAs
("name:scale,..."), the diffusers commit.
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

CASES = [
    # name, prompt, width, height, steps, seed, [(lora file stem, scale)]
    ("lora_stack_48x32_s2", "a red fox in the snow", 48, 32, 2, 42,
     [("tiny_diffusers", 0.8), ("tiny_kohya", -1.3)]),
    ("lora_comfy_dot_32x48_s2", "a lighthouse at dusk", 32, 48, 2, 7,
     [("tiny_comfy", 1.0), ("tiny_dot", 0.6)]),
]
# LoRA modules each file must inject (diffusers' count of targeted Linear layers).
EXPECTED_MODULES = {"tiny_diffusers": 8, "tiny_kohya": 6, "tiny_comfy": 6, "tiny_dot": 6}


def comfy_split(sd):
    out = {}
    for k, v in sd.items():
        if ".attention.qkv." in k:
            for i, p in enumerate(("to_q", "to_k", "to_v")):
                nk = k.replace(".attention.qkv.", ".attention.%s." % p)
                out[nk] = torch.chunk(v, 3, dim=0)[i].contiguous() if k.endswith("lora_B.weight") else v.clone()
        else:
            out[k.replace(".attention.out.", ".attention.to_out.0.")] = v
    return out


def count_modules(transformer, adapter):
    n = 0
    for _name, mod in transformer.named_modules():
        if hasattr(mod, "lora_A") and adapter in getattr(mod, "lora_A", {}):
            n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--loras", required=True)
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

    for name, prompt, width, height, steps, seed, loras in CASES:
        names = []
        for stem, _scale in loras:
            path = os.path.join(args.loras, stem + ".safetensors")
            src = comfy_split(load_file(path)) if stem == "tiny_comfy" else path
            pipe.load_lora_weights(src, adapter_name=stem)
            got = count_modules(pipe.transformer, stem)
            if got != EXPECTED_MODULES[stem]:
                raise SystemExit("%s: diffusers injected %d LoRA modules, expected %d" %
                                 (stem, got, EXPECTED_MODULES[stem]))
            names.append(stem)
        pipe.set_adapters(names, [s for _, s in loras])

        rec = {"dit": [], "latents": []}

        def dit_hook(_mod, _inp, out):
            rec["dit"].append(out[0][0].detach().clone())

        def on_step(_pipe, _i, _t, kw):
            rec["latents"].append(kw["latents"].detach().clone())
            return kw

        h = pipe.transformer.register_forward_hook(dit_hook)
        gen = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn((1, pipe.transformer.in_channels, height // 8, width // 8),
                            generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        with torch.no_grad():
            out = pipe(prompt=prompt, width=width, height=height, num_inference_steps=steps,
                       guidance_scale=0.0, generator=gen, output_type="np",
                       callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
        h.remove()
        pipe.unload_lora_weights()
        img = torch.from_numpy(out.images[0]).float()
        tensors = {
            "noise": noise.contiguous(),
            "dit_out0": rec["dit"][0].float().contiguous(),
            "latents": torch.stack(rec["latents"], 0).float().contiguous(),
            "image_f32": img.contiguous(),
            "image_u8": (img * 255).round().to(torch.uint8).float().contiguous(),
        }
        meta = {
            "prompt": prompt, "width": str(width), "height": str(height), "steps": str(steps),
            "seed": str(seed), "loras": ",".join("%s:%r" % (s, v) for s, v in loras),
            "diffusers_commit": args.diffusers_commit, "diffusers_version": diffusers.__version__,
            "torch_version": torch.__version__,
        }
        save_file(tensors, os.path.join(args.out, name + ".safetensors"), metadata=meta)
        print(json.dumps({"case": name, **{k: list(v.shape) for k, v in tensors.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
