#!/usr/bin/env bash
# zfarm quickstart: install the Debian 12 packages, build everything, start a local
# zfarm-scheduler on 127.0.0.1 and wait until grpc.health.v1 reports SERVING.
#
# Usage: deploy/quickstart.sh [WORK_DIR]      (default WORK_DIR: ./zfarm-work)
# Env:   ZFARM_PORT (default 50051), ZFARM_METRICS_PORT (default 9464),
#        ZFARM_BUILD_DIR (default ./build), ZFARM_SKIP_DEPS=1 to skip apt.
#
# Workers (one per GPU, or a CPU worker on a tiny model) arrive with a later issue:
# for now this starts the scheduler only and shows it healthy.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${1:-zfarm-work}")
PORT=${ZFARM_PORT:-50051}
METRICS_PORT=${ZFARM_METRICS_PORT:-9464}
BUILD=${ZFARM_BUILD_DIR:-build}

if [ "${ZFARM_SKIP_DEPS:-0}" != 1 ]; then
  deploy/install-deps.sh
fi
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$BUILD"

mkdir -p "$WORK/state" "$WORK/output"
BIN="$BUILD/bin/zfarm-scheduler"
ADDR="127.0.0.1:$PORT"
if "$BIN" --probe "$ADDR" --probe-timeout 500ms >/dev/null 2>&1; then
  echo "quickstart: something already answers on $ADDR; set ZFARM_PORT to another port" >&2
  exit 1
fi
nohup "$BIN" --listen "$ADDR" --state-dir "$WORK/state" --output-root "$WORK/output" \
  --metrics-listen "127.0.0.1:$METRICS_PORT" >"$WORK/scheduler.log" 2>&1 &
PID=$!
echo "$PID" >"$WORK/scheduler.pid"

for _ in $(seq 1 100); do
  if "$BIN" --probe "$ADDR" --probe-timeout 1s >/dev/null 2>&1; then
    cat <<MSG

zfarm-scheduler is SERVING on $ADDR (pid $PID)
  state (journal):  $WORK/state
  output root:      $WORK/output
  log:              $WORK/scheduler.log
  metrics:          http://127.0.0.1:$METRICS_PORT/metrics
  health check:     $BIN --probe $ADDR
  stop it:          kill -TERM \$(cat $WORK/scheduler.pid)

Workers arrive with a later issue: jobs submitted now are queued (and kept across
restarts) but nothing renders them yet.
MSG
    exit 0
  fi
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "quickstart: zfarm-scheduler exited; its log:" >&2
    cat "$WORK/scheduler.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "quickstart: zfarm-scheduler did not become SERVING within 10 s; log: $WORK/scheduler.log" >&2
exit 1
