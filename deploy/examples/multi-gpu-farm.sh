#!/usr/bin/env bash
# A farm on one multi-GPU host: one zfarm-scheduler and one `zfarm-worker serve` per GPU
# (one process per device, each with its own name, health and metrics ports).
#
# Usage: deploy/examples/multi-gpu-farm.sh MODEL_DIR [WORK_DIR]
# Env:   ZFARM_BIN (default ./build/bin), ZFARM_PORT (50051), ZFARM_GPUS (default: every GPU
#        `nvidia-smi -L` lists, e.g. "0 1 2 3"), ZFARM_OUTPUT_ROOT (default WORK_DIR/output;
#        on a farm of several hosts: the shared mount every host and the scheduler see).
# Ports: worker i serves grpc.health.v1 on 8100+i and /metrics on 9500+i.
# Stop:  kill -TERM $(cat WORK_DIR/*.pid)   (workers finish their current job first)
set -euo pipefail
MODEL=${1:?usage: multi-gpu-farm.sh MODEL_DIR [WORK_DIR]}
WORK=$(realpath -m "${2:-zfarm-farm}")
BIN=${ZFARM_BIN:-build/bin}
PORT=${ZFARM_PORT:-50051}
OUT=${ZFARM_OUTPUT_ROOT:-$WORK/output}
GPUS=${ZFARM_GPUS:-$(nvidia-smi -L | sed -n 's/^GPU \([0-9]*\):.*/\1/p' | tr '\n' ' ')}
[ -n "$GPUS" ] || { echo "multi-gpu-farm: no GPU found (set ZFARM_GPUS)" >&2; exit 1; }
mkdir -p "$WORK/state" "$OUT"

"$BIN/zfarm-worker" doctor --model "$MODEL" --device "cuda:${GPUS%% *}" --fast --no-load \
  --output-root "$OUT"

nohup "$BIN/zfarm-scheduler" --listen "0.0.0.0:$PORT" --state-dir "$WORK/state" \
  --output-root "$OUT" --metrics-listen "0.0.0.0:9464" >"$WORK/scheduler.log" 2>&1 &
echo $! >"$WORK/scheduler.pid"
for _ in $(seq 1 100); do
  "$BIN/zfarm-scheduler" --probe "127.0.0.1:$PORT" >/dev/null 2>&1 && break
  sleep 0.1
done

for i in $GPUS; do
  nohup "$BIN/zfarm-worker" serve --scheduler "127.0.0.1:$PORT" --device "cuda:$i" \
    --model "$MODEL" --output-root "$OUT" --name "$(hostname)/cuda:$i" \
    --health-listen "0.0.0.0:$((8100 + i))" --metrics-listen "0.0.0.0:$((9500 + i))" \
    >"$WORK/worker-cuda$i.log" 2>&1 &
  echo $! >"$WORK/worker-cuda$i.pid"
done
# Each worker reports SERVING once its model is loaded and warm.
for i in $GPUS; do
  until "$BIN/zfarm-scheduler" --probe "127.0.0.1:$((8100 + i))" >/dev/null 2>&1; do
    kill -0 "$(cat "$WORK/worker-cuda$i.pid")" 2>/dev/null ||
      { echo "worker cuda:$i exited:" >&2; tail -n 20 "$WORK/worker-cuda$i.log" >&2; exit 1; }
    sleep 1
  done
  echo "worker cuda:$i ready"
done
ZFARM_SCHEDULER="127.0.0.1:$PORT" "$BIN/zfarm" workers
echo "farm on 127.0.0.1:$PORT; submit with: ZFARM_SCHEDULER=127.0.0.1:$PORT $BIN/zfarm submit --prompt ... --wait"
