#!/usr/bin/env bash
# ctest deploy_k8s_schema_test (label deploy): every object in deploy/k8s/*.yaml and
# deploy/k8s-ha/*.yaml validated
# against the Kubernetes schemas by a real validator, the npm package kubernetes-models@5.1.0
# (installed into BUILD_DIR/npm-k8s), then two planted errors that must each be reported by
# it: a gRPC probe port given by name (the schema wants an integer) and a Job whose
# backoffLimit is a string.
# Usage: k8s_schema_test.sh REPO BUILD_DIR
set -euo pipefail
repo=$1 build=$2
nm=$build/npm-k8s
tmp=$(mktemp -d "${TMPDIR:-/tmp}/zfarm-k8s-schema.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "k8s_schema_test: FAIL: $*" >&2; exit 1; }
if [ ! -f "$nm/node_modules/kubernetes-models/package.json" ] ||
   ! grep -q '"version": "5.1.0"' "$nm/node_modules/kubernetes-models/package.json"; then
  mkdir -p "$nm"
  npm install --prefix "$nm" --no-audit --no-fund --silent kubernetes-models@5.1.0 >&2 ||
    fail "npm install kubernetes-models@5.1.0 failed"
fi
# YAML -> one JSON list of {file, doc}; the kustomization lists every resource that exists.
python3 - "$repo" "$tmp/objects.json" "$tmp/planted.json" <<'PY' || fail "deploy/k8s does not load"
import glob, json, os, sys, yaml
repo, out, planted = sys.argv[1:]
k8s = os.path.join(repo, "deploy", "k8s")
kust = yaml.safe_load(open(os.path.join(k8s, "kustomization.yaml")))
for r in kust["resources"]:
    if not os.path.exists(os.path.join(k8s, r)):
        sys.exit(f"kustomization.yaml lists {r}, which does not exist")
objs = []
# deploy/k8s-ha: the overlay with active/standby schedulers on PostgreSQL.
for f in sorted(glob.glob(os.path.join(k8s, "*.yaml"))) + sorted(
        glob.glob(os.path.join(repo, "deploy", "k8s-ha", "*.yaml"))):
    if os.path.basename(f) == "kustomization.yaml":
        continue
    for d in yaml.safe_load_all(open(f)):
        if d:
            objs.append({"file": os.path.relpath(f, repo), "doc": d})
json.dump(objs, open(out, "w"))
# The planted errors, on a copy.
bad = json.loads(json.dumps(objs))
hits = 0
for o in bad:
    d = o["doc"]
    if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "zfarm-worker":
        d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"] = "health"
        hits += 1
    if d["kind"] == "Job":
        d["spec"]["backoffLimit"] = "two"
        hits += 1
if hits != 2:
    sys.exit(f"planted {hits} of 2 errors: the worker StatefulSet or the Job is missing")
json.dump(bad, open(planted, "w"))
print(f"{len(objs)} objects in {len(set(o['file'] for o in objs))} files")
PY
node "$repo/tests/deploy/k8s_validate.mjs" "$nm/node_modules" "$tmp/objects.json" > "$tmp/valid.log" 2>&1 ||
  { cat "$tmp/valid.log" >&2; fail "deploy/k8s does not pass the Kubernetes schemas"; }
cat "$tmp/valid.log"
if node "$repo/tests/deploy/k8s_validate.mjs" "$nm/node_modules" "$tmp/planted.json" > "$tmp/planted.log" 2>&1; then
  cat "$tmp/planted.log" >&2
  fail "the validator accepted the planted errors"
fi
grep -q 'StatefulSet zfarm-worker: INVALID: .*livenessProbe/grpc/port must be integer' "$tmp/planted.log" ||
  { cat "$tmp/planted.log" >&2; fail "the planted probe port error is not reported"; }
grep -q 'Job zfarm-model-fill: INVALID: .*backoffLimit must be integer' "$tmp/planted.log" ||
  { cat "$tmp/planted.log" >&2; fail "the planted backoffLimit error is not reported"; }
echo "k8s_schema_test: planted errors reported: $(grep -c INVALID "$tmp/planted.log") objects"
grep INVALID "$tmp/planted.log"
echo "k8s_schema_test: PASS"
