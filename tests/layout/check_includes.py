#!/usr/bin/env python3
"""Checks every #include of the C++ sources against the layering rules.

Each library folder may include only what its row in README.md's "Layout" table
allows. A violation is printed as `file:line: #include "X": rule` and the exit
status is 1; 0 when every include is allowed.

    python3 tests/layout/check_includes.py --repo .
    python3 tests/layout/check_includes.py --repo . --self-test   # proves each rule bites

--self-test copies the sources to a temporary folder, plants one violation per
rule there and expects each to be reported with its file, line and rule.
"""

import argparse
import os
import re
import shutil
import sys
import tempfile

INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]')

GRPC = ("grpc/", "grpcpp/", "grpc++/")
CONTRACT = ("zfarm/v1/",)
# zfarm headers that stand for gRPC or the contract: including them is including those.
GRPC_HEADERS = ("proto/security/tls.h", "proto/security/auth.h", "proto/http/")
CONTRACT_HEADERS = ("proto/contract/",)
TORCH = ("torch/", "ATen/", "c10/", "caffe2/")

# The scheduler's domain core (zfarm_scheduler_core): no gRPC.
SCHEDULER_CORE = ("clock", "validation", "job_queue", "job_store", "journal", "scheduler",
                  "worker_registry")
# zfarm_base / zfarm_files, which every component (the worker's io and text included) may use.
PROTO_BASE = ("proto/base/",)
# proto/ itself holds only these library folders (each its own namespace, zfarm::<folder>).
PROTO_FOLDERS = ("base", "contract", "flags", "security", "http", "zfarm/v1")


def folder_of(rel):
    return os.path.dirname(rel)


def stem_of(rel):
    return os.path.splitext(os.path.basename(rel))[0]


def rules_for(rel):
    """(name, forbidden prefixes, allowed zfarm prefixes or None = any) for a file."""
    d, stem = folder_of(rel), stem_of(rel)
    rules = []
    no_grpc = ("no gRPC", GRPC + GRPC_HEADERS)
    no_contract = ("no contract (zfarm/v1/*.pb.h or proto/contract)",
                   CONTRACT + CONTRACT_HEADERS)
    no_torch = ("no torch", TORCH)
    if d == "proto/base":
        return [no_grpc, no_contract, no_torch], PROTO_BASE
    if d == "proto/contract":
        return [no_torch], PROTO_BASE + ("proto/contract/",)
    if d == "proto/security":
        rules.append(no_torch)
        if stem == "paths":
            rules += [no_grpc, no_contract]
            return rules, PROTO_BASE + ("proto/security/paths.h",)
        return rules, ("proto/",)
    if d == "proto/http":
        return [no_torch], ("proto/",)
    if d == "proto/flags":
        # The flag parser of all three binaries: absl only.
        return [no_grpc, no_contract, no_torch], ("proto/flags/",)
    if d in ("scheduler", "scheduler/http"):
        rules.append(no_torch)
        if d == "scheduler" and stem in SCHEDULER_CORE:
            rules.append(("the scheduler's domain core: no gRPC", GRPC + GRPC_HEADERS))
            return rules, ("proto/", "scheduler/")
        return rules, ("proto/", "scheduler/", "worker/io/")
    if d == "client":
        # worker/io: the torch-free picture decoders and canny the CLI runs on local files.
        return [no_torch], ("proto/", "client/", "worker/io/")
    if d == "worker/io":
        # paths.h: the root-confinement rule (absl only) for the md5 manifest's paths.
        return [no_grpc, no_contract, no_torch], PROTO_BASE + ("proto/security/paths.h",
                                                               "worker/io/")
    if d == "worker/text":
        return [no_grpc, no_contract, no_torch], PROTO_BASE + ("worker/io/", "worker/text/")
    if d == "worker/sampling":
        return [no_grpc, no_contract], PROTO_BASE + ("worker/io/", "worker/sampling/")
    if d == "worker/model":
        return [no_grpc, no_contract], PROTO_BASE + ("worker/io/", "worker/model/")
    if d == "worker/pipeline":
        return [no_grpc, no_contract], PROTO_BASE + (
            "worker/io/", "worker/model/", "worker/sampling/", "worker/text/", "worker/pipeline/")
    if d == "worker/runtime":
        rules = []
        rules.append(("worker/runtime links no torch (it renders through worker/pipeline's "
                      "Renderer)", TORCH))
        return rules, ("proto/", "worker/io/", "worker/text/", "worker/pipeline/",
                       "worker/runtime/")
    if d.startswith("worker"):
        return [], ("proto/", "worker/")
    return None, None


ZFARM_TOP = ("proto/", "scheduler/", "client/", "worker/", "tests/")


def check_file(repo, rel):
    problems = []
    if folder_of(rel) == "proto":
        problems.append("%s:1: proto/ holds library folders only (%s): move it into one" %
                        (rel, ", ".join(f + "/" for f in PROTO_FOLDERS)))
    rules, allowed = rules_for(rel)
    if rules is None:
        return problems
    with open(os.path.join(repo, rel), encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            m = INCLUDE.match(line)
            if not m:
                continue
            inc = m.group(1)
            for name, forbidden in rules:
                if inc.startswith(forbidden):
                    problems.append('%s:%d: #include "%s": %s' % (rel, n, inc, name))
            if allowed is not None and inc.startswith(ZFARM_TOP) and not inc.startswith(allowed):
                problems.append('%s:%d: #include "%s": %s may include only %s' %
                                (rel, n, inc, folder_of(rel), ", ".join(allowed)))
    return problems


def sources(repo):
    for top in ("proto", "scheduler", "client", "worker"):
        for root, _, files in os.walk(os.path.join(repo, top)):
            for name in sorted(files):
                if name.endswith((".h", ".cc")):
                    yield os.path.relpath(os.path.join(root, name), repo)


def check(repo):
    problems = []
    count = 0
    for rel in sorted(sources(repo)):
        count += 1
        problems += check_file(repo, rel)
    return count, problems


# One planted include per rule: (file it goes into, the include, text the report must name);
# an include of None plants the file alone (reported on its line 1).
PLANTS = [
    ("proto/stray.cc", None, "proto/ holds library folders only"),
    ("worker/io/png.cc", "grpcpp/grpcpp.h", "no gRPC"),
    ("worker/text/tokenizer.cc", "zfarm/v1/job.pb.h", "no contract"),
    ("worker/model/modules.cc", "proto/contract/rpc_status.h", "no contract"),
    ("proto/base/files.cc", "proto/contract/error_details.h", "no contract"),
    ("proto/base/files.cc", "grpcpp/grpcpp.h", "no gRPC"),
    ("proto/contract/contract.cc", "torch/torch.h", "no torch"),
    ("proto/contract/contract.cc", "proto/security/tls.h", "proto/contract may include only"),
    ("proto/security/paths.cc", "proto/contract/contract.h", "no contract"),
    ("worker/io/png.cc", "torch/torch.h", "no torch"),
    ("scheduler/server.cc", "torch/torch.h", "no torch"),
    ("client/cli.cc", "ATen/ATen.h", "no torch"),
    ("scheduler/job_store.cc", "grpcpp/grpcpp.h", "the scheduler's domain core: no gRPC"),
    ("worker/runtime/worker.cc", "torch/torch.h", "worker/runtime links no torch"),
    ("worker/io/png.cc", "worker/pipeline/pipeline.h", "worker/io may include only"),
    ("client/cli.cc", "scheduler/scheduler.h", "client may include only"),
    ("proto/flags/flags.cc", "grpcpp/grpcpp.h", "no gRPC"),
    ("proto/flags/flags.cc", "proto/base/files.h", "proto/flags may include only"),
]


def self_test(repo):
    failures = 0
    for target, inc, want in PLANTS:
        tmp = tempfile.mkdtemp(prefix="zfarm-includes-")
        try:
            for top in ("proto", "scheduler", "client", "worker"):
                shutil.copytree(os.path.join(repo, top), os.path.join(tmp, top))
            path = os.path.join(tmp, target)
            lines = ["// planted by check_includes.py --self-test"]
            if os.path.exists(path):  # else a new file in that folder (renamed sources)
                with open(path, encoding="utf-8") as f:
                    lines = f.read().splitlines() or lines
            if inc is not None:
                lines.insert(1, '#include "%s"' % inc)  # becomes line 2
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            _, problems = check(tmp)
            line = 1 if inc is None else 2
            expected = ('%s:1: %s' % (target, want) if inc is None else
                        '%s:2: #include "%s": %s' % (target, inc, want))
            hit = [p for p in problems if p.startswith(expected)]
            # Only the planted line is reported (a rule and the folder's list may both name it).
            if not hit or any(not p.startswith("%s:%d: " % (target, line)) for p in problems):
                failures += 1
                print("self-test: planting %s in %s: expected '%s...' and nothing else, got %r" %
                      (inc, target, expected, problems))
            else:
                print("self-test: caught %s" % hit[0])
        finally:
            shutil.rmtree(tmp)
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True)
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        failures = self_test(args.repo)
        print("self-test: %d of %d planted violations not reported as expected" %
              (failures, len(PLANTS)))
        return 1 if failures else 0
    count, problems = check(args.repo)
    for p in problems:
        print(p)
    print("%d files, %d include rule violations" % (count, len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
