#!/usr/bin/env python3
# Usage (on a GPU host with a CUDA torch): python3 tests/bench/batching_ceiling.py
# Would batching same-size jobs raise images per second, and would a batched image equal its
# batch-of-one image bit for bit? One Z-Image DiT block (dim 3840, 30 heads of 128, SwiGLU
# 10240; RMSNorm·modulate, qk-norm, cuDNN attention, gated residuals; the elementwise steps as
# plain torch ops, bf16) on B images at once, B = 1, 2, 4, at 512², 768² and 1024² (image tokens
# + 32 caption tokens). Prints the block's ms per image at each B (median of CUDA-event timed
# repetitions, warm-up first), the gain over B = 1, and, per op, whether batch row 0 equals the
# batch-of-one result exactly (torch.equal) — GEMMs on more rows may take another cuBLAS kernel,
# and attention another tiling, which changes the floating-point summation order.
import statistics
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

torch.manual_seed(0)
dev, dt = "cuda", torch.bfloat16
D, H, HD, FF = 3840, 30, 128, 10240
W = {
    "qkv": torch.randn(3 * D, D, device=dev, dtype=dt) / D**0.5,
    "out": torch.randn(D, D, device=dev, dtype=dt) / D**0.5,
    "w13": torch.randn(2 * FF, D, device=dev, dtype=dt) / D**0.5,
    "w2": torch.randn(D, FF, device=dev, dtype=dt) / FF**0.5,
}
mod = [torch.randn(D, device=dev, dtype=dt) * 0.1 for _ in range(4)]


def rms(x, eps=1e-5):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def block(x, record=None):
    """x: [B, S, D] -> [B, S, D]; record(name, tensor) sees every op's output."""
    B, S, _ = x.shape
    rec = record or (lambda n, t: t)
    h = rms(x) * (1 + mod[0])
    qkv = rec("qkv GEMM", F.linear(h, W["qkv"]))
    q, k, v = qkv.view(B, S, 3, H, HD).unbind(2)
    q, k = rms(q), rms(k)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        o = rec("attention (cuDNN)", F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)))
    o = rec("out GEMM", F.linear(o.transpose(1, 2).reshape(B, S, D), W["out"]))
    x = x + mod[1] * rms(o)
    h = rms(x) * (1 + mod[2])
    a, g = rec("w13 GEMM", F.linear(h, W["w13"])).chunk(2, -1)
    f = rec("w2 GEMM", F.linear(F.silu(a) * g, W["w2"]))
    return rec("block", x + mod[3] * rms(f))


def time_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return statistics.median(out)


with torch.inference_mode():
    print("| image | tokens | B=1 ms/image | B=2 ms/image (gain) | B=4 ms/image (gain) | "
          "B=2 row 0 == batch of one |")
    print("| --- | --- | --- | --- | --- | --- |")
    for side in (512, 768, 1024):
        S = (side // 16) ** 2 + 32
        xs = [torch.randn(1, S, D, device=dev, dtype=dt) for _ in range(4)]
        per = {}
        for B in (1, 2, 4):
            x = torch.cat(xs[:B])
            per[B] = time_ms(lambda: block(x)) / B
        one, two = {}, {}
        block(xs[0], lambda n, t: one.setdefault(n, t.clone()))
        block(torch.cat(xs[:2]), lambda n, t: two.setdefault(n, t.clone()))
        same = [n for n in one if torch.equal(one[n][0:1], two[n][0:1])]
        diff = [n for n in one if n not in same]
        verdict = "all ops equal" if not diff else "differs: " + ", ".join(diff)
        print(f"| {side}x{side} | {S} | {per[1]:.3f} | {per[2]:.3f} ({1 - per[2] / per[1]:+.1%}) | "
              f"{per[4]:.3f} ({1 - per[4] / per[1]:+.1%}) | {verdict} |")
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())
