#!/usr/bin/env python3
"""Tiny LoRA files for the tiny Z-Image model (make_tiny_model), one per file layout.

Pure Python (no numpy/torch), deterministic: the same bytes on every run.

    python3 tests/tools/make_tiny_loras.py --out tests/testdata/lora

Writes (rank 4 unless noted, alphas != rank, a few modules each, refiner and adaLN
modules included, real-valued Gaussian weights):
  tiny_diffusers.safetensors  F32  transformer.*.lora_A/lora_B, PEFT config (lora_alpha,
                                   rank/alpha patterns) in diffusers' lora_adapter_metadata
  tiny_kohya.safetensors      BF16 lora_unet_*.lora_down/lora_up + .alpha
  tiny_comfy.safetensors      F16  diffusion_model.* with ComfyUI's fused attention.qkv
                                   and attention.out names, lora_A/lora_B
  tiny_dot.safetensors        F32  diffusion_model.*.lora.down/lora.up (+ the redundant
                                   qkv / out copies that format carries)
For the 16-bit files alpha / rank is a power of two, so diffusers' scaling of the 16-bit
tensors (it multiplies them in their own dtype) is exact and the goldens stay tight.
"""

import argparse
import json
import os
import random
import struct
import sys

DIM, FFN, ADALN_OUT = 64, 170, 256


def bf16_bytes(values):
    out = bytearray()
    for v in values:
        (bits,) = struct.unpack("<I", struct.pack("<f", v))
        bits += 0x7FFF + ((bits >> 16) & 1)  # round to nearest even
        out += struct.pack("<H", (bits >> 16) & 0xFFFF)
    return bytes(out)


def encode(dtype, values):
    if dtype == "F32":
        return struct.pack("<%df" % len(values), *values)
    if dtype == "F16":
        return struct.pack("<%de" % len(values), *values)
    if dtype == "BF16":
        return bf16_bytes(values)
    raise ValueError(dtype)


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: (dtype, shape, values)}; keys sorted like the Python library."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        dtype, shape, values = tensors[name]
        blob = encode(dtype, values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


class Maker:
    def __init__(self, seed, dtype):
        self.rng = random.Random(seed)
        self.dtype = dtype
        self.tensors = {}

    def gauss(self, n, std):
        return [self.rng.gauss(0.0, std) for _ in range(n)]

    def pair(self, down_key, up_key, out, inp, rank=4):
        self.tensors[down_key] = (self.dtype, [rank, inp], self.gauss(rank * inp, 0.2))
        self.tensors[up_key] = (self.dtype, [out, rank], self.gauss(out * rank, 0.2))

    def alpha(self, key, value):
        self.tensors[key] = ("F32", [], [value])


def diffusers_file():
    """What diffusers' save_lora_weights writes: transformer.* keys, no alpha tensors, the
    PEFT config (r, lora_alpha and per-module patterns) in __metadata__."""
    m = Maker(1, "F32")
    mods = [("layers.0.attention.to_q", DIM, DIM, 4), ("layers.0.attention.to_k", DIM, DIM, 4),
            ("layers.0.attention.to_v", DIM, DIM, 4), ("layers.0.attention.to_out.0", DIM, DIM, 2),
            ("layers.1.feed_forward.w1", FFN, DIM, 4), ("layers.1.feed_forward.w2", DIM, FFN, 4),
            ("noise_refiner.0.adaLN_modulation.0", ADALN_OUT, DIM, 4),
            ("context_refiner.1.attention.to_v", DIM, DIM, 4)]
    for name, out, inp, rank in mods:
        k = "transformer." + name
        m.pair(k + ".lora_A.weight", k + ".lora_B.weight", out, inp, rank)
    config = {"transformer.r": 4, "transformer.lora_alpha": 3,
              "transformer.target_modules": [name for name, _, _, _ in mods],
              "transformer.rank_pattern": {"layers.0.attention.to_out.0": 2},
              "transformer.alpha_pattern": {"noise_refiner.0.adaLN_modulation.0": 6}}
    return m.tensors, {"format": "pt", "lora_adapter_metadata": json.dumps(config, indent=2, sort_keys=True)}


def kohya_file():
    m = Maker(2, "BF16")
    mods = [("layers_1_attention_to_q", DIM, DIM, 2.0), ("layers_1_attention_to_k", DIM, DIM, 8.0),
            ("layers_0_feed_forward_w3", FFN, DIM, 2.0), ("noise_refiner_1_attention_to_out_0", DIM, DIM, 1.0),
            ("context_refiner_0_feed_forward_w2", DIM, FFN, 2.0), ("layers_0_adaLN_modulation_0", ADALN_OUT, DIM, 2.0)]
    for name, out, inp, alpha in mods:
        k = "lora_unet_" + name
        m.pair(k + ".lora_down.weight", k + ".lora_up.weight", out, inp)
        m.alpha(k + ".alpha", alpha)
    return m.tensors, {"format": "pt"}


def comfy_file():
    m = Maker(3, "F16")
    k = "diffusion_model."
    m.pair(k + "layers.0.attention.qkv.lora_A.weight", k + "layers.0.attention.qkv.lora_B.weight", 3 * DIM, DIM)
    m.alpha(k + "layers.0.attention.qkv.alpha", 2.0)
    m.pair(k + "layers.1.attention.out.lora_A.weight", k + "layers.1.attention.out.lora_B.weight", DIM, DIM)
    m.pair(k + "noise_refiner.0.feed_forward.w1.lora_A.weight", k + "noise_refiner.0.feed_forward.w1.lora_B.weight",
           FFN, DIM)
    m.alpha(k + "noise_refiner.0.feed_forward.w1.alpha", 8.0)
    m.pair(k + "layers.1.adaLN_modulation.0.lora_A.weight", k + "layers.1.adaLN_modulation.0.lora_B.weight",
           ADALN_OUT, DIM)
    m.alpha(k + "layers.1.adaLN_modulation.0.alpha", 1.0)
    return m.tensors, {"format": "pt"}


def dot_file():
    m = Maker(4, "F32")
    k = "diffusion_model."
    for p in ("q", "k", "v"):
        m.pair(k + "layers.1.attention.to.%s.lora.down.weight" % p, k + "layers.1.attention.to.%s.lora.up.weight" % p,
               DIM, DIM)
        m.alpha(k + "layers.1.attention.to_%s.alpha" % p, 3.0)
    m.pair(k + "layers.1.attention.to_out.0.lora.down.weight", k + "layers.1.attention.to_out.0.lora.up.weight", DIM,
           DIM)
    # The redundant copies this format carries (diffusers skips them).
    m.pair(k + "layers.1.attention.qkv.lora.down.weight", k + "layers.1.attention.qkv.lora.up.weight", 3 * DIM, DIM)
    m.pair(k + "layers.1.attention.out.lora.down.weight", k + "layers.1.attention.out.lora.up.weight", DIM, DIM)
    m.pair(k + "layers.0.feed_forward.w2.lora.down.weight", k + "layers.0.feed_forward.w2.lora.up.weight", DIM, FFN)
    m.alpha(k + "layers.0.feed_forward.w2.alpha", 6.0)
    m.pair(k + "context_refiner.0.attention.to.k.lora.down.weight",
           k + "context_refiner.0.attention.to.k.lora.up.weight", DIM, DIM)
    m.alpha(k + "context_refiner.0.attention.to_k.alpha", 5.0)
    return m.tensors, {"format": "pt"}


FILES = {"tiny_diffusers": diffusers_file, "tiny_kohya": kohya_file, "tiny_comfy": comfy_file,
         "tiny_dot": dot_file}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, make in FILES.items():
        path = os.path.join(args.out, name + ".safetensors")
        tensors, metadata = make()
        write_safetensors(path, tensors, metadata)
        print(path, os.path.getsize(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
