#!/usr/bin/env bash
# The farm on real GPUs (throughput, time between jobs, cold start), in one device call:
#   1. builds zfarm-worker, zfarm-scheduler, zfarm and make_tiny_model (deploy/gpu-build.sh);
#   2. in the background, writes full-size weights in the real layout with random values
#      (make_tiny_model --variant full-random: fp32 DiT shards, bf16 text encoder and VAE,
#      ~31 GB) on local disk — for the cold start;
#   3. throughput on those real-valued random weights (never zeros: GEMMs on zeros draw less
#      power and hold higher clocks, which flattered an earlier version of this benchmark by
#      ~19 %): JOBS jobs at 1024², 8 steps, each with its own prompt (no caption cache hit),
#      through the CLI (`zfarm batch --wait`) with one worker, then one worker per GPU; images
#      per minute and the ratio; each worker's time between jobs from its /metrics (printed by
#      the worker when it stops; also zfarm_worker_job_gap_seconds on /metrics);
#   4. cold start: the disk's direct read speed, the page cache dropped, one `zfarm-worker
#      serve` on cuda:0 from process start to health SERVING (load + 1024² warm-up + connect);
#      then `zfarm-worker cache-weights` and the same cold start with --weights-cache;
#   5. doctor on cuda:0 (device, driver and CUDA versions);
#   6. when .carry/diffusers-src.tar.xz is there: diffusers' ZImagePipeline at the same size
#      and steps on the same GPU (tests/bench/diffusers_baseline.py), its images per minute
#      beside the farm's, as a ratio.
# Writes summary.md (and logs) to $OUT (or build-gpu/farm-bench).
#
# Env: ZFARM_TOKENIZER (tokenizer.json; default: unpacks .carry/qwen3-tokenizer.json.xz),
#      ZFARM_FARM_JOBS (64), ZFARM_MODEL_DIR (where to write the weights; default /var/tmp),
#      ZFARM_SKIP_BUILD=1 (reuse build-gpu), ZFARM_SOURCE_TARBALL (build this snapshot),
#      ZFARM_FARM_CACHE=0 (skip the second cold start from the bf16 weights cache),
#      ZFARM_FARM_FP8=1 (also: one worker with --precision fp8, its images per minute on the same
#      prompts, and the cold start from the FP8 weights cache, `cache-weights --precision fp8`),
#      ZFARM_FARM_DRY=1 (a dry run of the script on a CPU host: ZFARM_BUILD_DIR's binaries and
#      tiny model, cpu workers, 256²).
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build=${ZFARM_BUILD_DIR:-$root/build-gpu}
out=${OUT:-$build/farm-bench}
jobs=${ZFARM_FARM_JOBS:-64}
dry=${ZFARM_FARM_DRY:-0}
mkdir -p "$out"
: > "$out/summary.md"
log() { echo "- $*" | tee -a "$out/summary.md"; }
calc() { python3 -c "print(round($1, 2))"; }
now() { date +%s.%N; }
t_start=$(date +%s)

if [ "${ZFARM_SKIP_BUILD:-0}" != 1 ]; then
  if [ -n "${ZFARM_SOURCE_TARBALL:-}" ]; then
    src=$(mktemp -d /tmp/zfarm-src-XXXX)
    tar -xJf "$ZFARM_SOURCE_TARBALL" -C "$src"
    cp -r .gpu-debs .carry "$src/" 2>/dev/null
    cd "$src" && root=$PWD && build=$root/build-gpu
  fi
  ZFARM_BUILD_DIR=$build deploy/gpu-build.sh zfarm_worker zfarm_scheduler zfarm_cli make_tiny_model \
    > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
fi
# shellcheck disable=SC1091
[ "$dry" = 1 ] || source "$build/gpu-env.sh"
bin=$build/bin
if [ "$dry" = 1 ]; then
  ngpu=1; size=256; dev() { echo cpu; }
  gpu_name=cpu
else
  ngpu=$(nvidia-smi -L | wc -l); size=1024; dev() { echo "cuda:$1"; }
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
fi
log "farm on $gpu_name x $ngpu, $(date -u +%F), commit ${ZFARM_COMMIT:-?}; build done at +$(( $(date +%s) - t_start )) s"

# 2. The models.
if [ "$dry" = 1 ]; then
  model=$build/tiny-model
else
  tok=${ZFARM_TOKENIZER:-}
  if [ -z "$tok" ]; then
    mkdir -p /tmp/zfarm-tokenizer
    tok=/tmp/zfarm-tokenizer/tokenizer.json
    xz -dc .carry/qwen3-tokenizer.json.xz > "$tok"
    cp .carry/qwen3-tokenizer_config.json /tmp/zfarm-tokenizer/tokenizer_config.json 2>/dev/null
  fi
  model=${ZFARM_MODEL_DIR:-/var/tmp}/zfarm-full-random
  reuse=${ZFARM_REUSE_MODEL:-0}
  t_model=$(now)
  if [ "$reuse" = 1 ] && [ -f "$model/manifest.md5" ]; then
    ( echo 0 > "$out/make_model.rc"; now > "$out/make_model.end" ) &
  else
    ( "$bin/make_tiny_model" --variant full-random --out "$model" --tokenizer "$tok" --force \
        > "$out/make_model.log" 2>&1; echo $? > "$out/make_model.rc"; now > "$out/make_model.end" ) &
  fi
  model_writer=$!
fi

work=$(mktemp -d /tmp/zfarm-farm-XXXX)
mkdir -p "$work/state" "$work/out"
"$bin/zfarm-scheduler" --listen 127.0.0.1:50051 --state-dir "$work/state" \
  --output-root "$work/out" > "$out/scheduler.log" 2>&1 &
sched_pid=$!
for _ in $(seq 100); do "$bin/zfarm-scheduler" --probe 127.0.0.1:50051 >/dev/null 2>&1 && break; sleep 0.1; done
export ZFARM_SCHEDULER=127.0.0.1:50051

start_worker() {  # index model -> seconds to SERVING
  local i=$1 m=$2 t0
  t0=$(now)
  "$bin/zfarm-worker" serve --scheduler 127.0.0.1:50051 --device "$(dev "$i")" --model "$m" \
    --output-root "$work/out" --name "bench/cuda:$i" --warmup "${size}x$size" \
    --health-listen "127.0.0.1:$((18100 + i))" ${ZFARM_FARM_METRICS:+--metrics-listen "127.0.0.1:$((19500 + i))"} \
    ${worker_extra:-} \
    > "$out/worker-cuda$i.log" 2>&1 &
  echo $! > "$work/worker$i.pid"
  for _ in $(seq 2400); do
    if "$bin/zfarm-scheduler" --probe "127.0.0.1:$((18100 + i))" >/dev/null 2>&1; then
      calc "$(now) - $t0"
      return 0
    fi
    kill -0 "$(cat "$work/worker$i.pid")" 2>/dev/null || { tail -20 "$out/worker-cuda$i.log" >&2; return 1; }
    sleep 0.05
  done
  return 1
}
stop_workers() {
  for f in "$work"/worker*.pid; do kill -TERM "$(cat "$f")" 2>/dev/null; done
  for f in "$work"/worker*.pid; do
    while kill -0 "$(cat "$f")" 2>/dev/null; do sleep 0.1; done
    rm -f "$f"
  done
}
loaded() { grep -o 'loaded in [0-9.]* s.*warm-up [0-9x]* in [0-9.]* s' "$out/worker-cuda$1.log"; }
# Drops the page cache (all of it when allowed, else the files under the given folders);
# sets $how to the method used.
drop_page_cache() {
  if (echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then how=drop_caches; return; fi
  python3 - "$@" <<'PY'
import os, sys
for root in sys.argv[1:]:
    for d, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(d, f), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
PY
  how="posix_fadvise(DONTNEED)"
}

# 3. Throughput.
for i in $(seq 1 "$jobs"); do echo "job $i: a lighthouse on a cliff at dusk, film photograph"; done > "$work/prompts.txt"
run_batch() {  # tag -> seconds
  local t0
  t0=$(now)
  "$bin/zfarm" batch --prompts "$work/prompts.txt" --width "$size" --height "$size" --steps 8 \
    --request-id-prefix "$1" --wait > "$out/batch-$1.log" 2>&1 || { tail -5 "$out/batch-$1.log" >&2; return 1; }
  calc "$(now) - $t0"
}
if [ "$dry" != 1 ]; then
  wait "$model_writer"
  [ "$(cat "$out/make_model.rc")" = 0 ] || { tail -20 "$out/make_model.log"; exit 1; }
  log "wrote the full-size random model ($(du -sh "$model" | cut -f1)) in $(calc "$(cat "$out/make_model.end") - $t_model") s"
fi
s0=$(start_worker 0 "$model") || { log "worker cuda:0 failed to start"; exit 1; }
log "worker $(dev 0) on $( [ "$dry" = 1 ] && echo the tiny model || echo the real-valued random weights): $s0 s to SERVING, page cache warm ($(loaded 0))"
one=$(run_batch one) || exit 1
log "1 worker: $jobs images at ${size}² (8 steps) in $one s = $(calc "$jobs * 60 / $one") images/min"
if [ "$ngpu" -gt 1 ]; then
  for i in $(seq 1 $((ngpu - 1))); do
    w=$(start_worker "$i" "$model") || { log "worker cuda:$i failed to start"; exit 1; }
    log "worker cuda:$i: $w s to SERVING"
  done
  all=$(run_batch all) || exit 1
  log "$ngpu workers: $jobs images in $all s = $(calc "$jobs * 60 / $all") images/min; speed-up $(calc "$one / $all")x"
fi
stop_workers
for i in $(seq 0 $((ngpu - 1))); do
  log "cuda:$i: $(grep -o 'stopped after.*' "$out/worker-cuda$i.log")"
done
fp8=${ZFARM_FARM_FP8:-0}
if [ "$fp8" = 1 ] && [ "$dry" != 1 ]; then
  worker_extra="--precision fp8"
  s8=$(start_worker 0 "$model") || { log "fp8 worker cuda:0 failed to start"; exit 1; }
  worker_extra=
  log "fp8 worker $(dev 0): $s8 s to SERVING, page cache warm ($(loaded 0))"
  one8=$(run_batch fp8) || exit 1
  log "1 worker, --precision fp8: $jobs images at ${size}² in $one8 s = $(calc "$jobs * 60 / $one8") images/min ($(calc "$one / $one8")x the bf16 worker)"
  stop_workers
  log "fp8 cuda:0: $(grep -o 'stopped after.*' "$out/worker-cuda0.log")"
fi

# 4. Cold start from the random weights, page cache dropped.
if [ "$dry" != 1 ]; then
  sync
  shard=$(ls -S "$model"/transformer/*.safetensors | head -1)
  log "disk direct read ($(basename "$shard")): $(dd if="$shard" of=/dev/null bs=16M iflag=direct 2>&1 | tail -1)"
  drop_page_cache "$model"
  cold=$(start_worker 0 "$model") || { log "cold start failed"; exit 1; }
  log "cold start cuda:0 (page cache dropped by $how): $cold s to SERVING ($(loaded 0))"
  stop_workers
  # 4b. The same with the DiT's weights copy (zfarm-worker cache-weights [--precision fp8],
  # serve --weights-cache [--precision fp8]).
  cache=$(dirname "$model")/weights-cache
  cold_start_from_cache() {  # PRECISION (bf16 | fp8)
    local p=$1 args=() t0
    [ "$p" = bf16 ] || args=(--precision "$p")
    t0=$(now)
    "$bin/zfarm-worker" cache-weights --model "$model" --weights-cache "$cache" "${args[@]+"${args[@]}"}" \
      > "$out/cache-weights-$p.log" 2>&1 || { tail -5 "$out/cache-weights-$p.log"; exit 1; }
    log "cache-weights ($p): $(calc "$(now) - $t0") s, $(du -sh "$cache" | cut -f1) in the cache folder"
    sync
    drop_page_cache "$model" "$cache"
    worker_extra="--weights-cache $cache ${args[*]:-}"
    cold=$(start_worker 0 "$model") || { log "cold start with the $p cache failed"; exit 1; }
    worker_extra=
    log "cold start cuda:0 ($p) with --weights-cache (page cache dropped by $how): $cold s to SERVING ($(loaded 0); $(grep -o 'result=[a-z]*' "$out/worker-cuda0.log" | head -1))"
    stop_workers
  }
  if [ "${ZFARM_FARM_CACHE:-1}" = 1 ]; then
    cold_start_from_cache bf16
    [ "$fp8" = 1 ] && cold_start_from_cache fp8
  fi
fi

"$bin/zfarm-worker" doctor --model "$model" --device "$(dev 0)" --fast --no-load > "$out/doctor.txt" 2>&1
log "doctor: $(grep -E '^\[' "$out/doctor.txt" | tr '\n' ' ')"
kill -TERM "$sched_pid" 2>/dev/null
wait "$sched_pid" 2>/dev/null

# 6. diffusers on the same GPU, same size and steps (its text encoder runs for every image).
if [ "$dry" != 1 ] && [ -f .carry/diffusers-src.tar.xz ]; then
  ddir=/tmp/zfarm-diffusers
  rm -rf "$ddir" && mkdir -p "$ddir" && tar -xJf .carry/diffusers-src.tar.xz -C "$ddir"
  PYTHONPATH=$ddir/src${PYTHONPATH:+:$PYTHONPATH} timeout 300 python3 "$root/tests/bench/diffusers_baseline.py" \
    --tokenizer "$tok" --sizes "${size}x$size" --reps 5 --diffusers-commit "$(cat .carry/diffusers-commit.txt 2>/dev/null)" \
    --zfarm-commit "${ZFARM_COMMIT:-?}" --out "$out/diffusers.md" > "$out/diffusers.log" 2>&1
  d_e2e=$(sed -n 's/.*; e2e \([0-9.]*\) s$/\1/p' "$out/diffusers.log" | tail -1)
  if [ -n "$d_e2e" ]; then
    d_ipm=$(calc "60 / $d_e2e")
    log "diffusers ZImagePipeline (eager, bf16), same GPU: ${size}² in $d_e2e s = $d_ipm images/min; zfarm's 1 worker through the CLI: $(calc "$jobs * 60 / $one") images/min = $(calc "($jobs * 60 / $one) / $d_ipm")x diffusers"
  else
    log "diffusers baseline failed: $(tail -3 "$out/diffusers.log" | tr '\n' ' ')"
  fi
fi
log "total $(( $(date +%s) - t_start )) s"
