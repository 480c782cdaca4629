#!/usr/bin/env python3
# Usage (on a GPU host with a CUDA torch): python3 tests/bench/fp8_gemm_ceiling.py
# GEMM-level ceiling of the FP8 mode on this GPU: the DiT block's four projections at a
# 1024^2 render (4096 image + 128 caption tokens), bf16 vs FP8 (row-wise scales), with and
# without fast accumulation, plus the cost of quantizing the activations with ATen ops.
import torch, time
torch.manual_seed(0)
dev = "cuda"
M = 4096 + 128
shapes = {"qkv": (3840, 3 * 3840), "out": (3840, 3840), "w13": (3840, 2 * 10240), "w2": (10240, 3840)}
def timeit(fn, n=50):
    for _ in range(5): fn()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1e3
tot = {"bf16": 0, "fp8": 0, "fp8_fast": 0, "quant_aten": 0}
for name, (K, N) in shapes.items():
    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) / 60
    sw = (w.float().abs().amax(1, keepdim=True) / 448)
    wq = (w.float() / sw).to(torch.float8_e4m3fn)
    sx = (x.abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / 448)
    xq = (x.float() / sx).clamp(-448, 448).to(torch.float8_e4m3fn)
    t_bf = timeit(lambda: torch.nn.functional.linear(x, w))
    t_f8 = timeit(lambda: torch._scaled_mm(xq, wq.t(), sx, sw.view(1, -1), out_dtype=torch.bfloat16, use_fast_accum=False))
    t_ff = timeit(lambda: torch._scaled_mm(xq, wq.t(), sx, sw.view(1, -1), out_dtype=torch.bfloat16, use_fast_accum=True))
    def q():
        s = (x.abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / 448)
        return (x.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn)
    t_q = timeit(q)
    y0 = torch.nn.functional.linear(x.float(), w.float())
    y1 = torch._scaled_mm(xq, wq.t(), sx, sw.view(1, -1), out_dtype=torch.bfloat16, use_fast_accum=False).float()
    y2 = torch._scaled_mm(xq, wq.t(), sx, sw.view(1, -1), out_dtype=torch.bfloat16, use_fast_accum=True).float()
    e1 = ((y1 - y0).norm() / y0.norm()).item(); e2 = ((y2 - y0).norm() / y0.norm()).item()
    print(f"{name:4s} K={K:5d} N={N:5d}: bf16 {t_bf:.3f} ms  fp8 {t_f8:.3f}  fp8+fast {t_ff:.3f}  aten-quant {t_q:.3f}   rel.err fp8 {e1:.2e} fast {e2:.2e}")
    for k, v in (("bf16", t_bf), ("fp8", t_f8), ("fp8_fast", t_ff), ("quant_aten", t_q)): tot[k] += v
print("per block (ms): " + "  ".join(f"{k} {v:.3f}" for k, v in tot.items()))
print("x 36 blocks (30 layers + 2x2 refiners at ~this M, approx.): " + "  ".join(f"{k} {v*34:.1f}" for k, v in tot.items()))
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())
