#!/usr/bin/env python3
"""profile_summary.py on a synthetic trace: two CUDA graph launches (two DiT steps) with known
kernels, plus kernels launched outside any graph. Checks the step count, the span and busy
time per step, the time per kind and the kernels outside the graphs."""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import profile_summary  # noqa: E402


def kernel(name, ts, dur, corr):
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur,
            "args": {"correlation": corr}}


def launch(corr, ts):
    return {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": ts, "dur": 5,
            "args": {"correlation": corr}}


def trace():
    ev = []
    for step, corr in enumerate((10, 20)):
        t = 10000 * step
        ev.append(launch(corr, t))
        ev.append(kernel("nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNT", t + 100, 1000, corr))
        ev.append(kernel("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7",
                         t + 1100, 400, corr))
        ev.append(kernel("void zfarm::worker::RmsNormModKernel<c10::BFloat16>(...)", t + 1500, 200,
                         corr))
        ev.append(kernel("void at::native::vectorized_elementwise_kernel<4>(...)", t + 1800, 100,
                         corr))  # a 100 us gap before it: span 1800, busy 1700
    ev.append(kernel("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", 30000, 500,
                     99))
    ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 50})
    return {"traceEvents": ev}


def main():
    r = profile_summary.analyse(trace()["traceEvents"])
    failures = []

    def expect(what, got, want):
        if abs(got - want) > 1e-9 if isinstance(want, float) else got != want:
            failures.append(f"{what}: got {got!r}, want {want!r}")

    expect("steps", r["steps"], 2)
    expect("kernels per step", r["kernels_per_step"], 4)
    expect("span ms", r["span_ms"], 1.8)
    expect("busy ms", r["busy_ms"], 1.7)
    kinds = dict(r["kinds"])
    expect("GEMM ms", kinds.get("GEMM"), 1.0)
    expect("attention ms", kinds.get("attention"), 0.4)
    expect("fused ms", kinds.get("zfarm fused kernels"), 0.2)
    expect("elementwise ms", kinds.get("elementwise (ATen)"), 0.1)
    expect("outside", r["outside"], [("convolution (VAE)", 0.5)])
    # The script end to end on a file.
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(trace(), f)
    out = subprocess.run([sys.executable, profile_summary.__file__, f.name], capture_output=True,
                         text=True, check=False)
    os.unlink(f.name)
    expect("exit", out.returncode, 0)
    for want in ("2 DiT steps", "| GEMM | 1.00 | 58.8% |", "| convolution (VAE) | 0.50 |"):
        if want not in out.stdout:
            failures.append(f"output lacks {want!r}:\n{out.stdout}")
    for f_ in failures:
        print("FAIL:", f_)
    print("profile_summary_test:", "FAILED" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
