#!/usr/bin/env python3
"""Static checks of deploy/ against the real binaries (no Docker engine or cluster here).

Checks, for every file under deploy/:
  * every YAML file parses (all documents); Kubernetes objects have apiVersion/kind/metadata.name
    and the fields zfarm relies on (probes, resources, GPU requests, volumes, PDB, grace);
  * every command line (Dockerfile CMD/ENTRYPOINT/HEALTHCHECK, compose command/healthcheck,
    Kubernetes args, systemd ExecStart) uses only flags the binary's `--help` lists;
  * ports, image names, volume paths and addresses agree across files and with the flags;
  * every Dockerfile COPY source exists (or is a documented carried input) and is not hidden by
    the Dockerfile's .dockerignore; runtime stages run as non-root and have a HEALTHCHECK;
  * systemd units pass `systemd-analyze verify` (with stub executables) and use only variables
    the example environment file defines.
Usage: check_deploy.py --repo DIR --scheduler BIN --worker BIN --cli BIN [--root DIR]
  --root: the deploy folder to check (default REPO/deploy; the negative test passes a mutated copy)
Exit 0 when everything holds; 1 with one line per problem.
"""
import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import yaml

problems = []
ran = []
worker_cmds = []  # (where, args after "serve") of every worker command line found


def bad(where, msg):
    problems.append(f"{where}: {msg}")


# ----------------------------------------------------------------------------- binaries' flags
def help_text(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return p.stdout + p.stderr


def load_flags(args):
    # One entry per flag, two spaces in (wrapped text lines are indented further).
    sched = {f.replace("_", "-") for f in
             re.findall(r"^  --([a-z0-9][a-z0-9_-]*)", help_text([args.scheduler, "--help"]), re.M)}
    serve = set(re.findall(r"--([a-z][a-z0-9-]+)", help_text([args.worker, "serve", "--help"])))
    health = set(re.findall(r"--([a-z][a-z0-9-]+)", help_text([args.cli, "health", "--help"])))
    assert "listen" in sched and "state-dir" in sched, "zfarm-scheduler --help lists no --listen/--state-dir"
    assert "health-listen" in serve, "zfarm-worker serve --help lists no --health-listen"
    return {
        "scheduler": sched,
        "serve": serve,
        "health": health,
    }


SERVE_BOOL = {"offload-text-encoder", "vae-tiling", "vae-fp32", "help"}


def parse_cmd(tokens, bools=()):
    """['--a=1', '--b', '2', 'pos'] -> ({'a': '1', 'b': '2'}, ['pos'])."""
    flags, pos, i = {}, [], 0
    while i < len(tokens):
        t = tokens[i]
        if t.startswith("--"):
            name, eq, val = t[2:].partition("=")
            if not eq:
                if name in bools or i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                    val = "true"
                else:
                    i += 1
                    val = tokens[i]
            flags[name] = val
        else:
            pos.append(t)
        i += 1
    return flags, pos


def check_command(where, tokens, known):
    """tokens start with a binary path or name; returns (program, flags) after checking flags."""
    if not tokens:
        bad(where, "empty command")
        return None, {}
    prog = os.path.basename(tokens[0])
    rest = tokens[1:]
    if prog == "zfarm-scheduler":
        kind, allowed, bools = "scheduler", known["scheduler"], ()
        flags, pos = parse_cmd(rest, bools)
        flags = {k.replace("_", "-"): v for k, v in flags.items()}
    elif prog == "zfarm-worker":
        if not rest or rest[0] != "serve":
            bad(where, f"zfarm-worker command must be 'serve', got {rest[:1]}")
            return None, {}
        kind, allowed = "serve", known["serve"]
        flags, pos = parse_cmd(rest[1:], SERVE_BOOL)
        worker_cmds.append((where, list(rest[1:])))
    elif prog == "zfarm":
        if not rest or rest[0] != "health":
            bad(where, f"zfarm command must be 'health', got {rest[:1]}")
            return None, {}
        kind, allowed = "health", known["health"]
        flags, pos = parse_cmd(rest[1:])
        flags["_addr"] = pos[0] if pos else ""
        pos = []
    else:
        bad(where, f"unknown program {tokens[0]}")
        return None, {}
    for f in flags:
        if not f.startswith("_") and f not in allowed:
            bad(where, f"--{f} is not a flag of {prog}{' serve' if kind == 'serve' else ''}"
                       f"{' health' if kind == 'health' else ''} (per its --help)")
    if pos:
        bad(where, f"unexpected positional arguments {pos}")
    if kind == "scheduler":
        for req in ("listen", "state-dir", "output-root"):
            if req not in flags:
                bad(where, f"scheduler command lacks --{req}")
    if kind == "serve":
        for req in ("scheduler", "model", "output-root", "device", "health-listen"):
            if req not in flags:
                bad(where, f"worker command lacks --{req}")
    return kind, flags


def port_of(addr):
    m = re.search(r":(\d+)$", addr or "")
    return int(m.group(1)) if m else None


def duration_s(text, where=None):
    m = re.fullmatch(r"(\d+)(s|m|h)", text or "")
    if not m:
        bad(where or "?", f"duration {text!r} is not N(s|m|h)")
        return 10**9
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


# ----------------------------------------------------------------------------- YAML
def load_yaml_files(root):
    docs = {}
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            if f.endswith((".yaml", ".yml")):
                path = os.path.join(dirpath, f)
                try:
                    with open(path) as fh:
                        docs[path] = [d for d in yaml.safe_load_all(fh) if d is not None]
                except yaml.YAMLError as e:
                    bad(path, f"YAML does not parse: {e}")
    ran.append(f"parsed {len(docs)} YAML files ({sum(len(v) for v in docs.values())} documents)")
    return docs


# ----------------------------------------------------------------------------- Dockerfiles
def parse_dockerfile(path):
    """-> list of stages: {name, from, instr: [(INSTR, text, lineno)]}"""
    lines = open(path).read().split("\n")
    logical, buf, start = [], "", 0
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if not buf:
            start = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        logical.append((start, buf))
        buf = ""
    stages, args = [], {}
    for n, text in logical:
        instr, _, rest = text.partition(" ")
        instr = instr.upper()
        if instr == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip()
        if instr == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            base = re.sub(r"\$\{(\w+)\}", lambda mm: args.get(mm.group(1), mm.group(0)), m.group(1))
            stages.append({"name": m.group(2), "from": base, "instr": [], "args": dict(args)})
            continue
        if stages:
            if instr == "ARG":
                k, _, v = rest.partition("=")
                stages[-1]["args"][k.strip()] = v.strip()
            stages[-1]["instr"].append((instr, rest.strip(), n))
    return stages


def dockerignore_allows(ignore_path, src):
    """Docker's rule: the last matching pattern wins; a pattern matches a path or a parent."""
    if not os.path.exists(ignore_path):
        return True
    rules = [l.strip() for l in open(ignore_path) if l.strip() and not l.startswith("#")]
    parts = os.path.normpath(src).split("/")
    allowed = True
    for r in rules:
        neg = r.startswith("!")
        pat = r.lstrip("!").rstrip("/")
        if pat == "**" or any(fnmatch.fnmatchcase("/".join(parts[:i + 1]), pat) for i in range(len(parts))):
            allowed = neg
    return allowed


def build_inputs(repo):
    """What a configure needs at the top: CMakeLists.txt and every add_subdirectory() folder."""
    top = open(os.path.join(repo, "CMakeLists.txt")).read()
    top = re.sub(r"#.*", "", top)
    return ["CMakeLists.txt"] + re.findall(r"add_subdirectory\(\s*([\w./-]+)", top)


def check_dockerfiles(repo, root, known, images, version):
    ddir = os.path.join(root, "docker")
    files = sorted(f for f in os.listdir(ddir) if f.startswith("Dockerfile") and not f.endswith(".dockerignore"))
    if not files:
        bad(ddir, "no Dockerfile")
    install_deps = open(os.path.join(repo, "deploy", "install-deps.sh")).read()
    for f in files:
        path = os.path.join(ddir, f)
        text = open(path).read()
        stages = parse_dockerfile(path)
        names = {s["name"] for s in stages}
        # Images this Dockerfile documents: "docker build -f ... [--target T] -t NAME:TAG".
        for m in re.finditer(r"docker build(?: --[\w-]+ \S+)* -f (\S+)((?: --(?!tag|t )[\w-]+ \S+)*) -t ([\w./-]+):(\S+)", text):
            if m.group(1) != "deploy/" + os.path.relpath(path, root):
                bad(path, f"build example names another file {m.group(1)}")
            tm = re.search(r"--target (\S+)", m.group(2))
            target = tm.group(1) if tm else stages[-1]["name"]
            if target not in names:
                bad(path, f"--target {target} is not a stage")
            if m.group(4) != version:
                bad(path, f"image tag {m.group(3)}:{m.group(4)} != project version {version}")
            images[m.group(3)] = {"file": path, "stage": target}
        for st in stages:
            where = f"{path} stage {st['name']}"
            instrs = st["instr"]
            kinds = [i[0] for i in instrs]
            for instr, rest, n in instrs:
                if instr in ("COPY", "ADD"):
                    parts = shlex.split(rest)
                    frm = [p.split("=", 1)[1] for p in parts if p.startswith("--from=")]
                    if frm:
                        # a stage of this file, or a named build context the header documents
                        if frm[0] not in names and f"--build-context {frm[0]}=" not in text:
                            bad(f"{path}:{n}", f"COPY --from={frm[0]}: no such stage and no documented --build-context")
                        continue
                    srcs = [p for p in parts if not p.startswith("--")][:-1]
                    for s in srcs:
                        s = re.sub(r"\$\{(\w+)\}", lambda mm: st["args"].get(mm.group(1), ""), s)
                        if s.startswith(".carry/"):
                            # A carried input (git-ignored): it must be documented in the header.
                            if s not in text.split("FROM")[0]:
                                bad(f"{path}:{n}", f"carried COPY source {s} is not documented in the header")
                        elif not os.path.exists(os.path.join(repo, s)):
                            bad(f"{path}:{n}", f"COPY source {s} does not exist in the repository")
                        # COPY . copies the context: what the build needs must survive the ignore file.
                        for need in (build_inputs(repo) if os.path.normpath(s) == "." else [s]):
                            if not os.path.exists(os.path.join(repo, need)):
                                bad(f"{path}:{n}", f"build input {need} (add_subdirectory) does not exist")
                            if not dockerignore_allows(path + ".dockerignore", need):
                                bad(f"{path}:{n}", f"COPY source {need} is excluded by {f}.dockerignore")
                if instr == "RUN" and "apt-get install" in rest:
                    pkgs = [p for p in re.findall(r"(?<![\w-])([a-z0-9][a-z0-9+.-]+)", rest.split("apt-get install", 1)[1].split("&&")[0])
                            if p not in ("y", "no-install-recommends") and not p.startswith("-")]
                    if st["from"].endswith("-slim") or "build" not in (st["name"] or ""):
                        if any(p.endswith("-dev") for p in pkgs):
                            bad(where, "a runtime stage installs -dev packages")
                    if f == "Dockerfile.cpu":
                        for p in pkgs:
                            if not re.search(r"(^|\s)" + re.escape(p) + r"(\s|$)", install_deps):
                                bad(f"{path}:{n}", f"package {p} is not in deploy/install-deps.sh")
            if st["name"] == "build":
                continue
            # Runtime stage: non-root, healthcheck, entrypoint + cmd flags, exposed ports, volumes.
            user = [r for i, r, _ in instrs if i == "USER"]
            if not user or user[-1].split(":")[0] in ("0", "root"):
                bad(where, "runtime stage does not switch to a non-root USER")
            if "HEALTHCHECK" not in kinds:
                bad(where, "no HEALTHCHECK")
            if not re.fullmatch(r"zfarm/debian(-cuda)?:12", st["from"]):
                bad(where, f"runtime base {st['from']} is not a Debian 12 base of make-base-image.sh")
            ep = [json.loads(r) for i, r, _ in instrs if i == "ENTRYPOINT"]
            cmd = [json.loads(r) for i, r, _ in instrs if i == "CMD"]
            if not ep or not cmd:
                bad(where, "needs ENTRYPOINT and CMD in exec (JSON) form")
                continue
            if not ep[-1][0].startswith("/opt/zfarm/bin/"):
                bad(where, f"ENTRYPOINT {ep[-1][0]} is not in /opt/zfarm/bin (the bundle layout)")
            kind, flags = check_command(where + " ENTRYPOINT+CMD", ep[-1] + cmd[-1], known)
            exposed = {int(p.split("/")[0]) for i, r, _ in instrs if i == "EXPOSE" for p in r.split()}
            vols = [v for i, r, _ in instrs if i == "VOLUME" for v in json.loads(r)]
            hc = [r for i, r, _ in instrs if i == "HEALTHCHECK"]
            hc_tokens = json.loads(re.search(r"CMD\s+(\[.*\])", hc[-1]).group(1)) if hc else []
            hkind, hflags = check_command(where + " HEALTHCHECK", hc_tokens, known)
            listen = flags.get("listen") if kind == "scheduler" else flags.get("health-listen")
            for key in ("listen", "metrics-listen", "health-listen", "http-listen"):
                p = port_of(flags.get(key))
                if p and p not in exposed:
                    bad(where, f"--{key} port {p} is not EXPOSEd ({sorted(exposed)})")
            if port_of(hflags.get("_addr")) != port_of(listen):
                bad(where, f"HEALTHCHECK checks {hflags.get('_addr')} but the process listens on {listen}")
            if kind == "scheduler" and flags.get("state-dir") not in vols:
                bad(where, f"--state-dir {flags.get('state-dir')} is not a VOLUME")
            if kind == "serve":
                if flags.get("output-root") not in vols:
                    bad(where, f"--output-root {flags.get('output-root')} is not a VOLUME")
                if not flags.get("model", "").startswith("/models/"):
                    bad(where, "--model is not under /models")
    ran.append(f"validated {len(files)} Dockerfiles (parsed; built and run by tests/deploy/containers.sh, label containers)")


# ----------------------------------------------------------------------------- compose
def check_compose(path, docs, known, images, version, gpu=True):
    d = docs[0]
    svcs = d.get("services") or {}
    if "scheduler" not in svcs:
        bad(path, "no 'scheduler' service")
        return
    sch = svcs["scheduler"]
    kind, sflags = check_command(f"{path} scheduler", ["zfarm-scheduler"] + sch.get("command", []), known)
    sport = port_of(sflags.get("listen"))
    gpus = []
    for name, s in svcs.items():
        where = f"{path} service {name}"
        img, _, tag = s.get("image", "").partition(":")
        tag = re.sub(r"^\$\{\w+:-([^}]*)\}$", r"\1", tag)   # ${ZFARM_TAG:-0.1.0} -> its default
        if img not in images:
            bad(where, f"image {img} is not built by any Dockerfile ({sorted(images)})")
        if tag != version:
            bad(where, f"image tag {tag} != {version}")
        hc = s.get("healthcheck", {}).get("test", [])
        if hc[:1] != ["CMD"]:
            bad(where, "healthcheck.test must be an exec form ['CMD', ...]")
        _, hflags = check_command(where + " healthcheck", hc[1:], known)
        mounts = {re.sub(r"\$\{[^}]*\}", "HOST", v).split(":")[1]: v for v in s.get("volumes", [])}
        if name == "scheduler":
            if port_of(hflags.get("_addr")) != sport:
                bad(where, "healthcheck port != --listen port")
            if sflags.get("state-dir") not in mounts:
                bad(where, f"--state-dir {sflags.get('state-dir')} is not a mounted volume")
            if sflags.get("output-root") not in mounts:
                bad(where, "--output-root is not mounted")
            continue
        cmd = s.get("command", [])
        kind, wf = check_command(where, ["zfarm-worker"] + cmd, known)
        if kind != "serve":
            continue
        host, _, port = wf.get("scheduler", "").rpartition(":")
        if host not in svcs or int(port or 0) != sport:
            bad(where, f"--scheduler {wf.get('scheduler')} is not scheduler:{sport}")
        if port_of(hflags.get("_addr")) != port_of(wf.get("health-listen")):
            bad(where, "healthcheck port != --health-listen port")
        if wf.get("output-root") not in mounts:
            bad(where, "--output-root is not mounted")
        model = wf.get("model", "")
        mroot = [m for m in mounts if model == m or model.startswith(m.rstrip("/") + "/")]
        if not mroot or not all(mounts[m].endswith(":ro") for m in mroot):
            bad(where, f"the model folder {model} is not on a read-only mount")
        if duration_s(s.get("stop_grace_period"), where) <= duration_s(wf.get("shutdown-grace", "10m"), where):
            bad(where, "stop_grace_period must exceed the worker's --shutdown-grace (10m default)")
        devs = s.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        ids = [i for dv in devs for i in dv.get("device_ids", [])]
        if not gpu:
            if devs or wf.get("device") != "cpu":
                bad(where, "a CPU compose worker has --device cpu and no GPU reservation")
            continue
        if len(ids) != 1:
            bad(where, f"a worker must be pinned to exactly one GPU (device_ids {ids})")
        gpus += ids
        if wf.get("device") != "cuda:0":
            bad(where, "inside a pinned container the GPU is cuda:0")
    if len(gpus) != len(set(gpus)):
        bad(path, f"two workers pinned to the same GPU: {gpus}")
    ran.append(f"validated {path} (parsed, flags/ports/volumes cross-checked)")


# ----------------------------------------------------------------------------- Kubernetes
def check_k8s_ha(hdir, docs, known, images, version):
    """deploy/k8s-ha: the active/standby scheduler Deployment on the PostgreSQL journal."""
    deployments = []
    for path, ds in docs.items():
        if os.path.dirname(path) != hdir:
            continue
        for d in ds:
            if os.path.basename(path) == "kustomization.yaml":
                for r in d.get("resources", []):
                    if not os.path.exists(os.path.join(hdir, r)):
                        bad(path, f"resource {r} does not exist")
            elif d.get("kind") == "Deployment":
                deployments.append((path, d))
    if not deployments:
        bad(hdir, "no scheduler Deployment")
    for path, d in deployments:
        where = f"{path} Deployment {d['metadata']['name']}"
        spec = d["spec"]
        if (spec.get("replicas") or 1) < 2:
            bad(where, "an active/standby scheduler needs at least 2 replicas")
        if spec.get("strategy", {}).get("type") != "Recreate":
            bad(where, "strategy must be Recreate (a standby never becomes ready for a rolling update)")
        pod = spec["template"]["spec"]
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            cw = f"{where} container {c['name']}"
            img, _, tag = c.get("image", "").partition(":")
            if img not in images:
                bad(cw, f"image {img} is not built by any Dockerfile")
            if tag != version:
                bad(cw, f"image tag {tag} != {version}")
            _, flags = check_command(cw, ["zfarm-scheduler"] + c.get("args", []), known)
            journal = flags.get("journal") or ""
            if not re.match(r"postgres(ql)?://[^:@/]+@", journal):
                bad(cw, "--journal must be a postgres://USER@HOST... URL without a password")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            pwfile = flags.get("journal-password-file") or ""
            secret = [m for mp, m in mounts.items() if pwfile.startswith(mp + "/")]
            if not secret or "secret" not in vols.get(secret[0]["name"], {}):
                bad(cw, "--journal-password-file must be on a mounted Secret")
            ready, live = c.get("readinessProbe", {}), c.get("livenessProbe", {})
            if ready.get("grpc", {}).get("port") != port_of(flags.get("listen")):
                bad(cw, "readinessProbe must be the gRPC health of --listen (leadership)")
            if "grpc" in live or "grpc" in c.get("startupProbe", {}):
                bad(cw, "liveness/startup must not be gRPC health: a standby is NOT_SERVING and alive")


def check_k8s(kdir, docs, known, images, version):
    objs = []
    for path, ds in docs.items():
        if os.path.dirname(path) == kdir:
            for d in ds:
                if os.path.basename(path) == "kustomization.yaml":
                    for r in d.get("resources", []):
                        if not os.path.exists(os.path.join(kdir, r)):
                            bad(path, f"resource {r} does not exist")
                    continue
                for k in ("apiVersion", "kind"):
                    if k not in d:
                        bad(path, f"a document lacks {k}")
                if not (d.get("metadata") or {}).get("name"):
                    bad(path, f"{d.get('kind')} lacks metadata.name")
                objs.append((path, d))
    by = {}
    for path, d in objs:
        by.setdefault(d.get("kind"), []).append((path, d))
    pvcs = {d["metadata"]["name"]: d for _, d in by.get("PersistentVolumeClaim", [])}
    services = {d["metadata"]["name"]: d for _, d in by.get("Service", [])}
    sts = {d["metadata"]["name"]: (p, d) for p, d in by.get("StatefulSet", []) + by.get("Deployment", [])}
    sched_port = None
    for name, (path, d) in sorted(sts.items()):
        where = f"{path} {d['kind']} {name}"
        spec = d["spec"]
        tmpl = spec["template"]
        labels = tmpl["metadata"].get("labels", {})
        sel = spec["selector"]["matchLabels"]
        if any(labels.get(k) != v for k, v in sel.items()):
            bad(where, "selector.matchLabels do not match the pod template labels")
        if d["kind"] == "StatefulSet" and spec.get("serviceName") not in services:
            bad(where, f"serviceName {spec.get('serviceName')} is not a Service here")
        pod = tmpl["spec"]
        sc = pod.get("securityContext", {})
        if not sc.get("runAsNonRoot") or not sc.get("runAsUser"):
            bad(where, "pod must run as non-root (securityContext.runAsNonRoot/runAsUser)")
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        vols.update({t["metadata"]["name"]: {"template": t} for t in spec.get("volumeClaimTemplates", [])})
        for c in pod["containers"]:
            cw = f"{where} container {c['name']}"
            img, _, tag = c.get("image", "").partition(":")
            if img not in images:
                bad(cw, f"image {img} is not built by any Dockerfile")
            if tag != version:
                bad(cw, f"image tag {tag} != {version}")
            entry = "zfarm-scheduler" if img.endswith("scheduler") else "zfarm-worker"
            kind, flags = check_command(cw, [entry] + c.get("args", []), known)
            ports = {p["containerPort"]: p.get("name") for p in c.get("ports", [])}
            listen = flags.get("listen") if kind == "scheduler" else flags.get("health-listen")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                pr = c.get(probe)
                if not pr or "grpc" not in pr:
                    bad(cw, f"{probe} must be a native gRPC probe")
                elif pr["grpc"]["port"] != port_of(listen):
                    bad(cw, f"{probe} port {pr['grpc']['port']} != {listen}")
            for key in ("listen", "health-listen", "metrics-listen", "http-listen"):
                if flags.get(key) and port_of(flags[key]) not in ports:
                    bad(cw, f"--{key} port is not a containerPort")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits") or "memory" not in res["limits"]:
                bad(cw, "resources.requests and resources.limits.memory are required")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            for m in mounts.values():
                if m["name"] not in vols:
                    bad(cw, f"volumeMount {m['name']} has no volume")
            def claim(mpath):
                m = mounts.get(mpath)
                v = vols.get(m["name"]) if m else None
                if v and "template" in v:
                    return m, v["template"]
                cn = v.get("persistentVolumeClaim", {}).get("claimName") if v else None
                if cn and cn not in pvcs:
                    bad(cw, f"claimName {cn} is not a PersistentVolumeClaim here")
                return m, pvcs.get(cn)
            if not c.get("securityContext", {}).get("readOnlyRootFilesystem"):
                bad(cw, "readOnlyRootFilesystem should be true")
            if kind == "scheduler":
                sched_port = port_of(flags.get("listen"))
                m, pvc = claim(flags.get("state-dir"))
                if not m or not pvc or pvc["spec"]["accessModes"] != ["ReadWriteOnce"] or "template" not in vols.get(m["name"], {}):
                    bad(cw, "--state-dir must be a ReadWriteOnce volumeClaimTemplate (block storage)")
                m, pvc = claim(flags.get("output-root"))
                if not m or not m.get("readOnly"):
                    bad(cw, "the scheduler mounts --output-root read-only")
                if spec.get("replicas") != 1:
                    bad(where, "the scheduler must have exactly 1 replica")
            elif kind == "serve":
                if res.get("limits", {}).get("nvidia.com/gpu") != 1 or res.get("requests", {}).get("nvidia.com/gpu") != 1:
                    bad(cw, "a worker pod requests exactly nvidia.com/gpu: 1")
                if flags.get("device") != "cuda:0":
                    bad(cw, "a pod's single GPU is cuda:0")
                m, pvc = claim(flags.get("output-root"))
                if not pvc or pvc["spec"]["accessModes"] != ["ReadWriteMany"]:
                    bad(cw, "--output-root must be a ReadWriteMany claim")
                mroot = "/" + flags.get("model", "").strip("/").split("/")[0]
                m, pvc = claim(mroot)
                if not m or not m.get("readOnly"):
                    bad(cw, f"model volume {mroot} must be mounted readOnly")
                grace = pod.get("terminationGracePeriodSeconds", 30)
                if grace <= duration_s(flags.get("shutdown-grace", "10m"), cw):
                    bad(where, f"terminationGracePeriodSeconds {grace} must exceed --shutdown-grace")
                host, _, port = flags.get("scheduler", "").rpartition(":")
                worker_sched = (host, int(port or 0), cw)
        # Services select these pods and name real container ports.
    for sname, s in services.items():
        sel = s["spec"].get("selector", {})
        targets = [(p, d) for p, d in sts.values()
                   if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        if not targets:
            bad(f"Service {sname}", "selects no pods")
            continue
        names = {p.get("name") for c in targets[0][1]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for p in s["spec"]["ports"]:
            if isinstance(p.get("targetPort"), str) and p["targetPort"] not in names:
                bad(f"Service {sname}", f"targetPort {p['targetPort']} is no container port name")
    try:
        host, port, cw = worker_sched
        svc = services.get(host)
        if not svc or port not in [p["port"] for p in svc["spec"]["ports"]] or port != sched_port:
            bad(cw, f"--scheduler {host}:{port} is not the scheduler Service's gRPC port {sched_port}")
    except NameError:
        bad(kdir, "no worker workload")
    pdbs = by.get("PodDisruptionBudget", [])
    if not pdbs:
        bad(kdir, "no PodDisruptionBudget")
    for path, p in pdbs:
        sel = p["spec"]["selector"]["matchLabels"]
        if not any(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())
                   for _, d in sts.values()):
            bad(path, "PodDisruptionBudget selects no pods")
    ran.append(f"validated {len(objs)} Kubernetes objects (parsed and cross-checked; not applied: no cluster)")


# ----------------------------------------------------------------------------- systemd
def run_sh_execstart(path, inner, env, known):
    """Runs a `/bin/sh -c '...'` ExecStart as systemd would hand it to sh (instance 3, `$$` -> `$`,
    the example environment plus two extra flags) with a stub binary that prints its argv, and
    checks the arguments the real binary would get."""
    with tempfile.TemporaryDirectory() as tmp:
        stub = os.path.join(tmp, "stub")
        with open(stub, "w") as fh:
            fh.write('#!/bin/sh\nfor a in "$@"; do printf \'%s\\n\' "$a"; done\n')
        os.chmod(stub, 0o755)
        script = inner.replace("$$", "$").replace("%i", "3").replace("%H", "host1")
        script = script.replace("/opt/zfarm/bin/zfarm-worker", stub)
        run_env = dict(env, PATH="/usr/bin:/bin", ZFARM_WORKER_EXTRA_ARGS="--vae-tiling --offload-text-encoder")
        p = subprocess.run(["/bin/sh", "-c", script], env=run_env, capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            bad(path, f"ExecStart shell failed: {p.stderr.strip()}")
            return
        argv = p.stdout.splitlines()
    kind, flags = check_command(f"{path} ExecStart (expanded)", ["zfarm-worker"] + argv, known)
    want = {
        "device": "cuda:3",
        "scheduler": env.get("ZFARM_SCHEDULER"),
        "health-listen": f"{env.get('ZFARM_WORKER_HEALTH_HOST')}:{int(env.get('ZFARM_WORKER_HEALTH_PORT_BASE', 0)) + 3}",
        "metrics-listen": f"{env.get('ZFARM_WORKER_HEALTH_HOST')}:{int(env.get('ZFARM_WORKER_METRICS_PORT_BASE', 0)) + 3}",
        "output-root": env.get("ZFARM_OUTPUT_ROOT"),
        "model": env.get("ZFARM_MODEL"),
        "vae-tiling": "true",
        "offload-text-encoder": "true",
    }
    for k, v in want.items():
        if flags.get(k) != v:
            bad(path, f"instance 3 gets --{k}={flags.get(k)}, expected {v}")
    ran.append(f"ran {os.path.basename(path)}'s ExecStart shell for instance 3 with a stub binary (argv checked)")


def check_systemd(sdir, known):
    env_path = os.path.join(sdir, "zfarm.env")
    env = dict(l.split("=", 1) for l in open(env_path).read().splitlines()
               if "=" in l and not l.startswith("#"))
    units = sorted(f for f in os.listdir(sdir) if f.endswith((".service", ".timer")))
    for u in units:
        path = os.path.join(sdir, u)
        text = open(path).read()
        uses = set(re.findall(r"\$\$?\{?(ZFARM_[A-Z_]+)", text))
        if "EnvironmentFile=/etc/zfarm/zfarm.env" in text:
            for v in sorted(uses - set(env)):
                bad(path, f"uses ${v}, which {env_path} does not define")
        for line in text.splitlines():
            if not line.startswith("ExecStart="):
                continue
            cmd = line[len("ExecStart="):]
            if "zfarm" not in cmd.split()[0] and "/bin/sh" not in cmd:
                continue
            tokens = shlex.split(cmd)
            if tokens[0] == "/bin/sh":
                run_sh_execstart(path, tokens[2], env, known)
                tokens = shlex.split(tokens[2].removeprefix("exec "))
            # operator-supplied extra flags ($ZFARM_*_EXTRA_ARGS) are not ours to check
            tokens = [t.replace("%i", "0") for t in tokens if not re.fullmatch(r"\$+\{?ZFARM_\w+_EXTRA_ARGS\}?", t)]
            kind, flags = check_command(f"{path} ExecStart", tokens, known)
            if kind == "serve":
                if flags.get("device") != "cuda:0":
                    bad(path, "--device must be cuda:%i (the instance is the GPU index)")
                if env.get("ZFARM_OUTPUT_ROOT") not in re.findall(r"^ReadWritePaths=(.*)$", text, re.M):
                    bad(path, f"ReadWritePaths= must name ZFARM_OUTPUT_ROOT ({env.get('ZFARM_OUTPUT_ROOT')})")
                ts = re.search(r"^TimeoutStopSec=(\d+)min$", text, re.M)
                if not ts or int(ts.group(1)) * 60 <= duration_s(flags.get("shutdown-grace", "10m"), path):
                    bad(path, "TimeoutStopSec must exceed the worker's --shutdown-grace")
        for must in ("NoNewPrivileges=yes", "ProtectSystem=strict"):
            if u.endswith(".service") and must not in text:
                bad(path, f"missing {must}")
    if shutil.which("systemd-analyze") is None:
        bad(sdir, "systemd-analyze is not installed (apt-get install systemd)")
        return
    # systemd-analyze verify needs the executables: rewrite /opt/zfarm to a temp tree of stubs.
    with tempfile.TemporaryDirectory() as tmp:
        stub_root = os.path.join(tmp, "opt", "zfarm", "bin")
        os.makedirs(stub_root)
        for b in ("zfarm", "zfarm-scheduler", "zfarm-worker"):
            with open(os.path.join(stub_root, b), "w") as fh:
                fh.write("#!/bin/sh\n")
            os.chmod(os.path.join(stub_root, b), 0o755)
        udir = os.path.join(tmp, "units")
        os.makedirs(udir)
        names = []
        for u in units:
            text = open(os.path.join(sdir, u)).read().replace("/opt/zfarm/", os.path.join(tmp, "opt/zfarm/"))
            with open(os.path.join(udir, u), "w") as fh:
                fh.write(text)
            names.append(u.replace("@.service", "@0.service"))
        p = subprocess.run(["systemd-analyze", "verify", "--man=no"] + names, cwd=udir,
                           capture_output=True, text=True, timeout=120)
        out = "\n".join(l for l in (p.stdout + p.stderr).splitlines() if l.strip())
        if p.returncode != 0 or out:
            bad(sdir, f"systemd-analyze verify: rc={p.returncode} {out}")
    ran.append(f"ran systemd-analyze verify on {len(units)} units (not started: no systemd PID 1 here)")


def run_worker_commands(worker_bin):
    """Runs the real `zfarm-worker serve` with each command line's exact arguments, except --model
    (a missing folder, so nothing loads and no port is opened): exit 2 would be a usage error
    (an unknown flag or a bad value such as --shutdown-grace=10 minutes); 1 is the expected
    failure on the device or the missing model, after every flag was accepted."""
    n = 0
    with tempfile.TemporaryDirectory() as tmp:
        missing = os.path.join(tmp, "no-model")
        for where, args in worker_cmds:
            args = [re.sub(r"\$\((\w+)\)", r"\1-value", a) for a in args]  # Kubernetes $(VAR)
            if any("$" in a for a in args):
                continue  # shell templates: run_sh_execstart covers them
            argv, i = [], 0
            while i < len(args):
                a = args[i]
                if a.startswith("--model="):
                    a = "--model=" + missing
                elif a == "--model":
                    argv += [a, missing]
                    i += 2
                    continue
                argv.append(a)
                i += 1
            n += 1
            p = subprocess.run([worker_bin, "serve"] + argv, capture_output=True, text=True, timeout=120)
            if p.returncode != 1 or "usage:" in p.stderr:
                bad(where, f"zfarm-worker serve with these arguments exited {p.returncode}: {p.stderr.strip()[:300]}")
        ran.append(f"ran zfarm-worker serve with the arguments of {n} command lines "
                   f"(--model pointed at a missing folder): every one passed flag parsing")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--root")
    ap.add_argument("--scheduler", required=True)
    ap.add_argument("--worker", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--write-flags", help="write the flags read from --help to this JSON file")
    ap.add_argument("--read-flags", help="use flags from this JSON file instead of running --help")
    args = ap.parse_args()
    root = args.root or os.path.join(args.repo, "deploy")
    version = re.search(r"project\(zfarm VERSION (\S+)", open(os.path.join(args.repo, "CMakeLists.txt")).read()).group(1)
    if args.read_flags:
        known = {k: set(v) for k, v in json.load(open(args.read_flags)).items()}
    else:
        known = load_flags(args)
    if args.write_flags:
        json.dump({k: sorted(v) for k, v in known.items()}, open(args.write_flags, "w"))
    ran.append(f"read --help of zfarm-scheduler ({len(known['scheduler'])} flags), zfarm-worker serve "
               f"({len(known['serve'])}), zfarm health ({len(known['health'])})")
    docs = load_yaml_files(root)
    images = {}
    check_dockerfiles(args.repo, root, known, images, version)
    compose = os.path.join(root, "docker", "compose.yaml")
    compose_cpu = os.path.join(root, "docker", "compose.cpu.yaml")
    if compose_cpu in docs:
        check_compose(compose_cpu, docs[compose_cpu], known, images, version, gpu=False)
    else:
        bad(root, "no docker/compose.cpu.yaml")
    if compose in docs:
        check_compose(compose, docs[compose], known, images, version)
    else:
        bad(root, "no docker/compose.yaml")
    check_k8s(os.path.join(root, "k8s"), docs, known, images, version)
    check_k8s_ha(os.path.join(root, "k8s-ha"), docs, known, images, version)
    ran.append("validated deploy/k8s-ha (active/standby scheduler Deployment)")
    check_systemd(os.path.join(root, "systemd"), known)
    for sh in sorted(os.listdir(root)):
        if sh.endswith(".sh"):
            p = subprocess.run(["bash", "-n", os.path.join(root, sh)], capture_output=True, text=True)
            if p.returncode:
                bad(os.path.join(root, sh), f"bash -n: {p.stderr.strip()}")
    ran.append("bash -n on deploy/*.sh")
    if not args.read_flags:
        run_worker_commands(args.worker)
    for r in ran:
        print("check_deploy:", r)
    for p in problems:
        print("check_deploy: PROBLEM:", p)
    print(f"check_deploy: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
