#!/usr/bin/env python3
"""Negative controls for check_deploy.py: each mutation of a copy of deploy/ must be reported.

Usage: check_deploy_negative.py --repo DIR --scheduler BIN --worker BIN --cli BIN
A mutation that the checker does not catch (exit 0, or no line with the expected words) fails.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

# (file under deploy/, text to replace (first occurrence), replacement, expected words)
MUTATIONS = [
    ("k8s/worker.yaml", "--health-listen=0.0.0.0:50052", "--health-listen=0.0.0.0:50053", "startupProbe port 50052"),
    ("k8s/worker.yaml", "- --shutdown-grace=10m", "- --no-such-flag=10m", "--no-such-flag is not a flag"),
    # run=True: the checker also runs the real zfarm-worker with the arguments (slower)
    ("k8s/worker.yaml", "- --metrics-listen=0.0.0.0:9465", "- --metrics-listen=0.0.0.0:9465\n            - --warmup=1024", "exited 2", True),
    ("k8s/worker.yaml", "terminationGracePeriodSeconds: 660", "terminationGracePeriodSeconds: 30", "must exceed --shutdown-grace"),
    ("k8s/worker.yaml", "nvidia.com/gpu: 1\n            limits", "nvidia.com/gpu: 2\n            limits", "exactly nvidia.com/gpu: 1"),
    ("k8s/scheduler.yaml", "  replicas: 1", "  replicas: [1", "does not parse"),
    ("k8s-ha/scheduler-ha.yaml", "          livenessProbe:\n            tcpSocket:", "          livenessProbe:\n            grpc:", "liveness/startup must not be gRPC health"),
    ("k8s-ha/scheduler-ha.yaml", "- --journal-password-file=", "- --journal-passwd-file=", "--journal-passwd-file is not a flag"),
    ("k8s/scheduler.yaml", "              readOnly: true", "              readOnly: false", "mounts --output-root read-only"),
    ("docker/Dockerfile.cpu", "COPY . .\n", "COPY . .\nCOPY clients /x\n", "COPY source clients does not exist"),
    ("docker/Dockerfile.cpu.dockerignore", ".git\n", ".git\nworker\n", "COPY source worker is excluded"),
    ("docker/Dockerfile.cpu", "USER 10001:10001", "USER root", "non-root USER"),
    ("docker/Dockerfile.cpu", '"127.0.0.1:50051"', '"127.0.0.1:50052"', "HEALTHCHECK checks 127.0.0.1:50052"),
    ("docker/Dockerfile.cuda", '"--model", "/models/Z-Image-Turbo"', '"--modle", "/models/Z-Image-Turbo"', "--modle is not a flag"),
    ("docker/Dockerfile.cuda", "FROM ${CUDA_BASE_IMAGE} AS worker-cuda", "FROM nvidia/cuda:12.8.0-runtime AS worker-cuda", "not a Debian 12 base"),
    ("docker/compose.yaml", 'device_ids: ["1"]', 'device_ids: ["0"]', "same GPU"),
    ("docker/compose.yaml", "image: zfarm/worker-cuda:0.1.0", "image: zfarm/worker-gpu:0.1.0", "not built by any Dockerfile"),
    ("docker/compose.yaml", "/models:ro", "/models", "not on a read-only mount"),
    ("docker/compose.cpu.yaml", '"--device", "cpu"', '"--device", "cuda:0"', "CPU compose worker"),
    ("systemd/zfarm-worker@.service", "ProtectHome=yes", "ProtectHome=bogus", "systemd-analyze verify"),
    ("systemd/zfarm-worker@.service", "--metrics-listen", "--metric-listen", "--metric-listen is not a flag"),
    ("systemd/zfarm-worker@.service", "HEALTH_PORT_BASE} + %i", "HEALTH_PORT_BASE} + 1", "instance 3 gets --health-listen"),
    ("systemd/zfarm-scheduler.service", "${ZFARM_SCHEDULER_METRICS_LISTEN}", "${ZFARM_SCHED_METRICS}", "does not define"),
]


def main():
    ap = argparse.ArgumentParser()
    for a in ("--repo", "--scheduler", "--worker", "--cli"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    checker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "check_deploy.py")
    failed = 0
    tmpdir = tempfile.TemporaryDirectory()
    flags = os.path.join(tmpdir.name, "flags.json")
    base = [sys.executable, checker, "--repo", args.repo, "--scheduler", args.scheduler,
            "--worker", args.worker, "--cli", args.cli]
    # The unmutated tree must pass (else every "caught" below would mean nothing).
    p = subprocess.run(base + ["--write-flags", flags], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        print(f"NEGATIVE: the unmutated deploy/ does not pass check_deploy.py:\n{p.stdout[-3000:]}")
        return 1
    for rel, old, new, expect, *run in MUTATIONS:
        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "deploy")
            shutil.copytree(os.path.join(args.repo, "deploy"), root)
            path = os.path.join(root, rel)
            text = open(path).read()
            if old not in text:
                print(f"NEGATIVE: {rel}: the text to mutate is gone: {old!r} (update this test)")
                failed += 1
                continue
            open(path, "w").write(text.replace(old, new, 1))
            p = subprocess.run(base + ["--root", root] + ([] if run and run[0] else ["--read-flags", flags]),
                               capture_output=True, text=True, timeout=300)
            found = [l for l in p.stdout.splitlines() if "PROBLEM" in l and expect in l]
            if p.returncode == 0 or not found:
                print(f"NEGATIVE: NOT caught: {rel}: {old!r} -> {new!r} (expected a problem with {expect!r});"
                      f" rc={p.returncode}\n{p.stdout[-2000:]}")
                failed += 1
            else:
                print(f"caught: {rel}: {old!r} -> {new!r}: {found[0].split('PROBLEM: ', 1)[1][:160]}")
    print(f"check_deploy_negative: {len(MUTATIONS) - failed}/{len(MUTATIONS)} mutations caught")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
