#!/usr/bin/env bash
# Seed sweep: render one prompt with N seeds (or an explicit list) and collect
# the PNGs plus manifest.json in an output folder.
#
#   deploy/examples/seed-sweep.sh "a red fox in snow, golden hour" 8 renders/fox
#   SEEDS=1,7,42 deploy/examples/seed-sweep.sh "a red fox" 0 renders/fox
#
# Environment: ZFARM_SCHEDULER (HOST:PORT), optional ZFARM_OUTPUT_ROOT,
# WIDTH/HEIGHT/STEPS, SEEDS (comma list; overrides COUNT), FIRST_SEED (0).
# Exit code: zfarm's (0 ok, 1 a job failed, 2 usage, 3 unavailable,
# 4 timeout, 5 cancelled).
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 PROMPT COUNT OUT_DIR" >&2
  exit 2
fi
prompt=$1
count=$2
out_dir=$3
first_seed=${FIRST_SEED:-0}

if [[ -z "${SEEDS:-}" ]]; then
  if ! [[ "$count" =~ ^[1-9][0-9]*$ ]]; then
    echo "$0: COUNT must be a positive integer (got '$count')" >&2
    exit 2
  fi
  SEEDS=$(seq -s, "$first_seed" $((first_seed + count - 1)))
fi

prompts=$(mktemp)
trap 'rm -f "$prompts"' EXIT
# One JSON line: the prompt is JSON-escaped so quotes and backslashes survive.
python3 -c 'import json,sys; print(json.dumps({"prompt": sys.argv[1]}))' \
  "$prompt" > "$prompts"

mkdir -p "$out_dir"
zfarm batch --prompts "$prompts" --seeds "$SEEDS" \
  --width "${WIDTH:-1024}" --height "${HEIGHT:-1024}" --steps "${STEPS:-8}" \
  --request-id-prefix "sweep-$(printf '%s' "$prompt$SEEDS" | sha256sum | cut -c1-12)" \
  --wait --out-dir "$out_dir" --json
