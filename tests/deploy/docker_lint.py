#!/usr/bin/env python3
"""The container files' cheap checks (ctest deploy_docker_lint_test, label deploy; CI runs these,
the full build and farm run is tests/deploy/containers.sh, label containers).

  * package list: no Dockerfile step installs or downloads anything (apt-get, dpkg -i, curl,
    wget, pip, npm, git clone, ADD URL): every package comes from the base images, which
    deploy/docker/make-base-image.sh makes from `deploy/install-deps.sh --list build` — so the
    image's package list is install-deps.sh's and cannot drift from it; every listed package is
    a Debian package installed on this machine (install-deps.sh installed it);
  * bases: build stages start from zfarm/debian-build:12, runtime stages from zfarm/debian:12
    (Dockerfile.cuda from zfarm/debian-cuda:12), all made by make-base-image.sh: no registry;
  * compose: `docker-compose config` (Debian's compose 1.29) accepts compose.yaml and
    compose.cpu.yaml;
  * planted errors, each of which must be reported: a Dockerfile step running apt-get, a
    Dockerfile FROM debian:12 (a Docker Hub image), a compose file with a top-level `name:`.
Usage: docker_lint.py --repo DIR      Exit 0 when all holds, 1 with one line per problem.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_deploy import parse_dockerfile  # noqa: E402  (the same Dockerfile reader)

FETCH = re.compile(r"\b(apt-get|apt|aptitude|dpkg\s+-i|curl|wget|pip3?|npm|git\s+clone)\b")
BASES = {"zfarm/debian:12", "zfarm/debian-build:12", "zfarm/debian-cuda:12"}


def lint_dockerfile(path, problems):
    stages = parse_dockerfile(path)
    names = {st["name"] for st in stages}
    first_line = {}
    for n, line in enumerate(open(path).read().split("\n"), 1):
        if re.match(r"(?i)FROM\s", line):
            first_line.setdefault(len(first_line), n)
    for i, st in enumerate(stages):
        where = f"{os.path.basename(path)}:{first_line.get(i, '?')}"
        if st["from"] not in BASES and st["from"] not in names:
            problems.append(f"{where}: FROM {st['from']}: not a base image of make-base-image.sh "
                            f"({', '.join(sorted(BASES))}): it would be pulled from a registry")
        for instr, rest, n in st["instr"]:
            where = f"{os.path.basename(path)}:{n}"
            if instr == "RUN":
                m = FETCH.search(re.sub(r"--mount=\S+", "", rest))
                if m:
                    problems.append(f"{where}: RUN uses {m.group(1)}: a step installs or downloads; "
                                    f"packages come only from the base images (make-base-image.sh, "
                                    f"from install-deps.sh --list build)")
            elif instr == "ADD" and re.search(r"https?://", rest):
                problems.append(f"{where}: ADD of a URL downloads at build time")


def compose_config(path, env, problems, expect_ok=True):
    p = subprocess.run(["docker-compose", "-p", "lint", "-f", path, "config", "-q"],
                       capture_output=True, text=True, env=env, timeout=120)
    if expect_ok and p.returncode != 0:
        problems.append(f"{os.path.basename(path)}: docker-compose config refuses it: "
                        f"{(p.stderr or p.stdout).strip()[:300]}")
    return p


def lint(repo, root, problems, env):
    ddir = os.path.join(root, "docker")
    files = sorted(f for f in os.listdir(ddir) if f.startswith("Dockerfile") and not f.endswith(".dockerignore"))
    if not files:
        problems.append(f"{ddir}: no Dockerfile")
    for f in files:
        lint_dockerfile(os.path.join(ddir, f), problems)
    for f in sorted(os.listdir(ddir)):
        if f.startswith("compose") and f.endswith((".yaml", ".yml")):
            compose_config(os.path.join(ddir, f), env, problems)
    return files


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    a = ap.parse_args()
    repo = os.path.abspath(a.repo)
    problems, ran = [], []
    if shutil.which("docker-compose") is None:
        print("docker_lint: docker-compose is not installed (deploy/install-deps.sh installs it)")
        return 1
    version = subprocess.run(["docker-compose", "version", "--short"], capture_output=True, text=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="zfarm-docker-lint.")
    try:
        env = dict(os.environ, ZFARM_MODEL=tmp, ZFARM_OUTPUTS=tmp, ZFARM_MODELS=tmp,
                   DOCKER_HOST="unix:///nonexistent/docker.sock")  # config needs no engine
        files = lint(repo, os.path.join(repo, "deploy"), problems, env)
        ran.append(f"{len(files)} Dockerfiles: no step installs or downloads, bases from make-base-image.sh")
        ran.append(f"docker-compose {version} config accepts the compose files")

        # The package list: derived, and real.
        mb = open(os.path.join(repo, "deploy", "docker", "make-base-image.sh")).read()
        if "install-deps.sh\" --list build" not in mb:
            problems.append("make-base-image.sh does not take its packages from install-deps.sh --list build")
        pkgs = subprocess.run(["bash", os.path.join(repo, "deploy", "install-deps.sh"), "--list", "build"],
                              capture_output=True, text=True, check=True).stdout.split()
        if len(pkgs) < 10:
            problems.append(f"install-deps.sh --list build lists only {len(pkgs)} packages")
        q = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\n"] + pkgs, capture_output=True, text=True)
        installed = {l.split()[0] for l in q.stdout.splitlines() if l.endswith("install ok installed")}
        for p in pkgs:
            if p not in installed:
                problems.append(f"install-deps.sh --list build: {p} is not an installed Debian package here")
        ran.append(f"install-deps.sh --list build: {len(pkgs)} packages, all installed Debian packages")

        # Planted errors on a copy: each must be reported.
        planted = os.path.join(tmp, "deploy")
        shutil.copytree(os.path.join(repo, "deploy"), planted)
        cpu = os.path.join(planted, "docker", "Dockerfile.cpu")
        text = open(cpu).read()
        text = text.replace("FROM ${BUILD_IMAGE} AS build\n",
                            "FROM ${BUILD_IMAGE} AS build\nRUN apt-get update && apt-get install -y curl\n", 1)
        text = text.replace("ARG RUNTIME_IMAGE=zfarm/debian:12", "ARG RUNTIME_IMAGE=debian:12", 1)
        open(cpu, "w").write(text)
        comp = os.path.join(planted, "docker", "compose.cpu.yaml")
        open(comp, "w").write("name: zfarm\n" + open(comp).read())
        got = []
        lint(repo, planted, got, env)
        want = [("apt-get step", r"Dockerfile\.cpu:\d+: RUN uses apt-get"),
                ("Docker Hub base", r"Dockerfile\.cpu:\d+: FROM debian:12: not a base image"),
                ("top-level name:", r"compose\.cpu\.yaml: docker-compose config refuses it: .*name")]
        for what, pat in want:
            if not any(re.search(pat, g) for g in got):
                problems.append(f"planted {what} was not reported (got: {got})")
        ran.append(f"planted errors reported: {len(got)} ({'; '.join(g[:90] for g in got)})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in ran:
        print(f"docker_lint: {r}")
    for p in problems:
        print(f"docker_lint: PROBLEM: {p}")
    print(f"docker_lint: {'FAIL' if problems else 'PASS'} ({len(problems)} problems)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
