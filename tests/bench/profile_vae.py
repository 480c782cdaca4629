#!/usr/bin/env python3
"""Top CUDA kernels of the FLUX VAE decoder at 1024x1024 (bf16, random weights).

zfarm's VAE runs the same ATen ops as diffusers' AutoencoderKL.decode (same time within
2 % in pipeline_bench), so this profile of diffusers' decoder says where zfarm's VAE time
goes. Run on the GPU host with diffusers' source on PYTHONPATH:
  PYTHONPATH=<diffusers>/src python3 tests/bench/profile_vae.py [--size 1024] [--channels-last]
"""
import argparse

import torch
from diffusers import AutoencoderKL


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
        use_quant_conv=False, use_post_quant_conv=False,
    ).to("cuda", torch.bfloat16).eval()
    z = torch.randn(1, 16, a.size // 8, a.size // 8, device="cuda", dtype=torch.bfloat16)
    if a.channels_last:
        vae = vae.to(memory_format=torch.channels_last)
        z = z.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(3):
            vae.decode(z)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        vae.decode(z)
        end.record()
        torch.cuda.synchronize()
        print(f"VAE decode {a.size}x{a.size} channels_last={a.channels_last}: "
              f"{start.elapsed_time(end):.1f} ms")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            vae.decode(z)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.top, max_name_column_width=70))


if __name__ == "__main__":
    main()
