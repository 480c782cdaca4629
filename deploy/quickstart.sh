#!/usr/bin/env bash
# zfarm quickstart — the README's first command. On a fresh Debian 12 machine:
# installs the packages, builds, creates the tiny built-in model, starts a local
# farm (zfarm-scheduler + one CPU zfarm-worker serve), submits one job with the
# zfarm CLI, waits for it and prints the PNG's path. The farm keeps running.
#
# Usage: deploy/quickstart.sh [WORK_DIR]      (default WORK_DIR: ./zfarm-work)
# Env:   ZFARM_PORT (default 50051), ZFARM_METRICS_PORT (default 9464; the worker's
#        /metrics is on +1, its grpc.health.v1 on ZFARM_WORKER_HEALTH_PORT, default 50052),
#        ZFARM_BUILD_DIR (default ./build), ZFARM_SKIP_DEPS=1 to skip apt,
#        ZFARM_MODEL (default: the tiny model the build makes) — point it at a real
#        Z-Image-Turbo folder for real pictures (a GPU: ZFARM_DEVICE=cuda:0).
#
# The tiny model has random weights: its picture is abstract noise, by design. It
# exercises the whole farm (tokenizer, text encoder, DiT, VAE, PNG, two-phase commit)
# in about a second on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${1:-zfarm-work}")
PORT=${ZFARM_PORT:-50051}
METRICS_PORT=${ZFARM_METRICS_PORT:-9464}
HEALTH_PORT=${ZFARM_WORKER_HEALTH_PORT:-50052}
BUILD=${ZFARM_BUILD_DIR:-build}
DEVICE=${ZFARM_DEVICE:-cpu}

if [ "${ZFARM_SKIP_DEPS:-0}" != 1 ]; then
  deploy/install-deps.sh
fi
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$BUILD"
MODEL=${ZFARM_MODEL:-$BUILD/tiny-model}

mkdir -p "$WORK/state" "$WORK/output"
BIN="$BUILD/bin"
ADDR="127.0.0.1:$PORT"
if "$BIN/zfarm-scheduler" --probe "$ADDR" --probe-timeout 500ms >/dev/null 2>&1; then
  echo "quickstart: something already answers on $ADDR; set ZFARM_PORT to another port" >&2
  exit 1
fi

wait_serving() {  # ADDR PID LOG WHAT SECONDS
  for _ in $(seq 1 $(($5 * 10))); do
    "$BIN/zfarm-scheduler" --probe "$1" --probe-timeout 1s >/dev/null 2>&1 && return 0
    if ! kill -0 "$2" 2>/dev/null; then
      echo "quickstart: $4 exited; its log ($3):" >&2
      tail -n 30 "$3" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "quickstart: $4 did not become SERVING within $5 s; log: $3" >&2
  exit 1
}

nohup "$BIN/zfarm-scheduler" --listen "$ADDR" --state-dir "$WORK/state" \
  --output-root "$WORK/output" --metrics-listen "127.0.0.1:$METRICS_PORT" \
  >"$WORK/scheduler.log" 2>&1 &
SCHED=$!
echo "$SCHED" >"$WORK/scheduler.pid"
wait_serving "$ADDR" "$SCHED" "$WORK/scheduler.log" zfarm-scheduler 10

# One resident worker: loads and warms the model, then connects. Its health port says
# SERVING only when it is warm and connected.
nohup "$BIN/zfarm-worker" serve --scheduler "$ADDR" --device "$DEVICE" --model "$MODEL" \
  --output-root "$WORK/output" --name "quickstart/$DEVICE" \
  --health-listen "127.0.0.1:$HEALTH_PORT" --metrics-listen "127.0.0.1:$((METRICS_PORT + 1))" \
  >"$WORK/worker.log" 2>&1 &
WORKER=$!
echo "$WORKER" >"$WORK/worker.pid"
wait_serving "127.0.0.1:$HEALTH_PORT" "$WORKER" "$WORK/worker.log" "zfarm-worker serve" 600

export ZFARM_SCHEDULER="$ADDR"
echo "quickstart: submitting one job..."
RESULT=$("$BIN/zfarm" submit --prompt "a red fox in fresh snow, golden hour" \
  --width 256 --height 256 --seed 42 --wait --json)
echo "$RESULT"
REL=$(printf '%s' "$RESULT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')

cat <<MSG

zfarm is running on $ADDR:
  scheduler:   pid $SCHED, log $WORK/scheduler.log, metrics http://127.0.0.1:$METRICS_PORT/metrics
  worker:      pid $WORKER ($DEVICE, model $MODEL), log $WORK/worker.log,
               health 127.0.0.1:$HEALTH_PORT, metrics http://127.0.0.1:$((METRICS_PORT + 1))/metrics
  state:       $WORK/state (the journal: queued jobs survive restarts)
  output root: $WORK/output

The image: $WORK/output/$REL
$( [ -z "${ZFARM_MODEL:-}" ] && echo "(the tiny built-in model has random weights: the picture is abstract noise by design;
 real images need the real Z-Image-Turbo folder: ZFARM_MODEL=/models/Z-Image-Turbo ZFARM_DEVICE=cuda:0)")

Try:  export ZFARM_SCHEDULER=$ADDR
      $BIN/zfarm submit --prompt "a lighthouse at dusk" --width 256 --height 256 --wait
      $BIN/zfarm workers
Stop: kill -TERM \$(cat $WORK/worker.pid) \$(cat $WORK/scheduler.pid)
MSG
