#!/usr/bin/env python3
"""Per-DiT-step kernel time from a pipeline_bench --profile trace (Chrome-trace JSON).

The pipeline replays each DiT step from one CUDA graph, so the kernels launched by one
cudaGraphLaunch (matched through the trace's correlation ids) are one DiT step. Prints, as
markdown: the step's span and busy time, time per kind of kernel (GEMM, attention, zfarm's
fused kernels, other elementwise/reduction, copies) per step, and the top kernels; then the
kernels outside the graphs (text encoder, sampler update, VAE) by kind.

Usage: profile_summary.py TRACE.json [TRACE.json ...]   (standard library only)
"""
import collections
import json
import re
import sys

KINDS = [  # first match wins
    ("attention", re.compile(r"sdpa|fmha|flash|attention|mha|softmax", re.I)),
    ("convolution (VAE)", re.compile(r"conv|fprop|dgrad|wgrad|implicit_gemm|winograd", re.I)),
    ("GEMM", re.compile(r"gemm|nvjet|xmma|cutlass|cublas|scaled_mm|splitk|matmul", re.I)),
    ("zfarm fused kernels", re.compile(r"zfarm", re.I)),
    ("norms / reductions (ATen)", re.compile(r"norm|reduce|moments|welford", re.I)),
    ("elementwise (ATen)", re.compile(r"elementwise|vectorized|unrolled|pointwise|copy|cat|index", re.I)),
]


def kind_of(name):
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


def short(name, width=90):
    name = re.sub(r"\(.*", "", name) if len(name) > width else name
    return name if len(name) <= width else name[: width - 1] + "…"


def analyse(events):
    """Trace events -> {steps, span_ms, busy_ms, kernels_per_step, kinds, top, outside} (per step)."""
    launches = set()
    kernels = []
    for e in events:
        if e.get("ph") != "X":
            continue
        cat = e.get("cat", "")
        corr = (e.get("args") or {}).get("correlation")
        if cat == "cuda_runtime" and "GraphLaunch" in e.get("name", ""):
            launches.add(corr)
        elif cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            kernels.append(e)
    steps = collections.defaultdict(list)
    outside = []
    for k in kernels:
        corr = (k.get("args") or {}).get("correlation")
        (steps[corr] if corr in launches else outside).append(k)
    n = max(len(steps), 1)
    span = 0.0
    by_kind = collections.Counter()
    by_name = collections.Counter()
    for ks in steps.values():
        span += max(k["ts"] + k["dur"] for k in ks) - min(k["ts"] for k in ks)
        for k in ks:
            by_kind[kind_of(k["name"])] += k["dur"]
            by_name[k["name"]] += k["dur"]
    out_kind = collections.Counter()
    for k in outside:
        out_kind[kind_of(k["name"])] += k["dur"]
    return {
        "steps": len(steps),
        "kernels": len(kernels),
        "span_ms": span / n / 1e3,
        "busy_ms": sum(by_kind.values()) / n / 1e3,
        "kernels_per_step": (len(kernels) - len(outside)) // n,
        "kinds": [(kind, us / n / 1e3) for kind, us in by_kind.most_common()],
        "top": [(name, us / n / 1e3) for name, us in by_name.most_common(15)],
        "outside_launches": len(outside),
        "outside": [(kind, us / 1e3) for kind, us in out_kind.most_common()],
    }


def summarise(path):
    with open(path) as f:
        r = analyse(json.load(f).get("traceEvents", []))
    print(f"## {path}")
    print()
    if not r["steps"]:
        print(f"no kernels from CUDA graph launches ({r['kernels']} kernels in all): "
              "was the graph path on and CUPTI able to see graph kernels?")
        print()
    else:
        print(f"{r['steps']} DiT steps (one CUDA graph each): span {r['span_ms']:.1f} ms per step "
              f"(first kernel start to last kernel end), kernels busy {r['busy_ms']:.1f} ms, "
              f"{r['kernels_per_step']} kernels per step")
        print()
        print("| kind | ms per step | share of busy |")
        print("| --- | --- | --- |")
        for kind, ms in r["kinds"]:
            print(f"| {kind} | {ms:.2f} | {ms / r['busy_ms']:.1%} |")
        print()
        print("| top kernels per step | kind | ms per step |")
        print("| --- | --- | --- |")
        for name, ms in r["top"]:
            print(f"| `{short(name)}` | {kind_of(name)} | {ms:.2f} |")
        print()
    total = sum(ms for _, ms in r["outside"])
    print(f"Outside the graphs (text encoder, sampler, VAE, copies): {total:.1f} ms of "
          f"kernels in {r['outside_launches']} launches")
    print()
    print("| kind | ms |")
    print("| --- | --- |")
    for kind, ms in r["outside"]:
        print(f"| {kind} | {ms:.2f} |")
    print()


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    for path in sys.argv[1:]:
        summarise(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
