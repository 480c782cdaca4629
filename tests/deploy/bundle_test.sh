#!/usr/bin/env bash
# ctest deploy_bundle_test: the air-gap bundle end to end.
#   1. deploy/make-bundle.sh bundles the built binaries + the tiny model;
#   2. negative controls: one corrupted byte, and one added file, make install.sh refuse (exit 1,
#      the file named, nothing installed);
#   3. install.sh installs into a fresh directory with a PATH holding no compiler and no build
#      tree (only coreutils-level tools) and an empty environment;
#   4. every library the installed binaries load resolves inside the bundle, except the
#      documented system set (glibc, libstdc++, libgcc_s);
#   5. a real job runs from the installed tree: zfarm-scheduler + zfarm-worker serve (CPU, tiny
#      model) + `zfarm submit --wait`; the PNG exists and its sha256 is the reported one; both
#      processes exit 0 on SIGTERM.
# Usage: bundle_test.sh REPO BUILD_DIR TINY_MODEL_DIR
# Environment (the same test for a CUDA build, run by hand on a GPU host):
#   ZFARM_BUNDLE_DEVICE      the worker's --device (default cpu; e.g. cuda:0)
#   ZFARM_BUNDLE_EXTRA_LIBS  folders passed to make-bundle.sh as --extra-libs, ':'-separated
#                            (a CUDA libtorch's lib/ and the CUDA libraries it dlopens)
#   With a cuda device the NVIDIA driver's libraries (libcuda, libnvidia-*) join the system set
#   that may resolve outside the bundle: they always come from the host.
set -euo pipefail
repo=$1 build=$2 model=$3
device=${ZFARM_BUNDLE_DEVICE:-cpu}
extra=()
IFS=: read -r -a extra_dirs <<< "${ZFARM_BUNDLE_EXTRA_LIBS:-}"
for d in "${extra_dirs[@]+"${extra_dirs[@]}"}"; do [ -n "$d" ] && extra+=(--extra-libs "$d"); done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/zfarm-bundle-test.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "bundle_test: FAIL: $*" >&2; for l in "$tmp"/*.log; do [ -f "$l" ] && { echo "--- $l" >&2; tail -n 20 "$l" >&2; }; done; exit 1; }
say() { echo "bundle_test: $*"; }
t0=$(date +%s)

# 1. Make the bundle.
# Uncompressed (.tar) to keep CI short on 2 shared cores: gzip of ~500 MB of libtorch and its
# dependencies costs more than the rest of the test; .tar.gz differs only in the pipe.
"$repo/deploy/make-bundle.sh" --build-dir "$build" --model "$model" \
  --model-name tiny "${extra[@]+"${extra[@]}"}" --out "$tmp/zfarm.tar" > "$tmp/make-bundle.log" 2>&1 || fail "make-bundle.sh failed"
(cd "$tmp" && sha256sum --quiet -c zfarm.tar.sha256) || fail "the tarball does not match its .sha256"
mkdir "$tmp/unpack"
tar -C "$tmp/unpack" -xf "$tmp/zfarm.tar"
rm "$tmp/zfarm.tar"
bundle=$(echo "$tmp"/unpack/zfarm-*)
[ -x "$bundle/install.sh" ] && [ -f "$bundle/MANIFEST.sha256" ] || fail "bundle lacks install.sh or MANIFEST.sha256"
say "bundle $(du -sh "$bundle" | cut -f1), $(wc -l < "$bundle/MANIFEST.sha256") files, made in $(( $(date +%s) - t0 )) s"

# A PATH with no compiler and no build tree: symlinks to just the tools the installer, the
# launchers and ldd use.
tools="$tmp/tools"
mkdir "$tools"
for t in sh bash sha256sum sed sort find comm mktemp rm cut grep wc head tr dirname mkdir cp mv ls \
         cat readlink awk basename env uname; do
  src=$(command -v "$t") || fail "tool $t not found on this machine"
  ln -s "$src" "$tools/$t"
done
ln -s "$(command -v ldd)" "$tools/ldd"
clean_env=(env -i "PATH=$tools" "HOME=$tmp" "LANG=C.UTF-8" "TMPDIR=$tmp")
for c in gcc cc c++ g++ clang cmake ninja make ld; do
  if "${clean_env[@]}" sh -c "command -v $c" >/dev/null 2>&1; then fail "$c is on the stripped PATH"; fi
done

# 2. Negative controls.
target="$bundle/payload/libexec/zfarm-worker"
orig=$(od -An -tu1 -j 4096 -N1 "$target" | tr -d ' ')
printf "$(printf '\\%03o' $(( (orig + 1) % 256 )))" | dd of="$target" bs=1 seek=4096 count=1 conv=notrunc status=none
if "${clean_env[@]}" "$bundle/install.sh" --prefix "$tmp/refused" > "$tmp/refuse1.log" 2>&1; then
  fail "install.sh accepted a bundle with a corrupted byte in payload/libexec/zfarm-worker"
fi
grep -q 'REFUSED: checksum mismatch' "$tmp/refuse1.log" || fail "no 'checksum mismatch' message: $(cat "$tmp/refuse1.log")"
grep -q 'payload/libexec/zfarm-worker' "$tmp/refuse1.log" || fail "the corrupted file is not named: $(cat "$tmp/refuse1.log")"
[ ! -e "$tmp/refused" ] || fail "a refused install left $tmp/refused behind"
printf "$(printf '\\%03o' "$orig")" | dd of="$target" bs=1 seek=4096 count=1 conv=notrunc status=none
say "negative control 1: one corrupted byte -> refused: $(grep -m1 REFUSED "$tmp/refuse1.log")"
echo extra > "$bundle/payload/bin/extra-tool"
if "${clean_env[@]}" "$bundle/install.sh" --prefix "$tmp/refused" > "$tmp/refuse2.log" 2>&1; then
  fail "install.sh accepted a bundle with an added file"
fi
grep -q 'payload/bin/extra-tool' "$tmp/refuse2.log" || fail "the added file is not named: $(cat "$tmp/refuse2.log")"
rm "$bundle/payload/bin/extra-tool"
say "negative control 2: an added file -> refused ($(( $(date +%s) - t0 )) s)"

# 3. Install into a fresh directory with the stripped environment.
prefix="$tmp/opt/zfarm"
"${clean_env[@]}" "$bundle/install.sh" --prefix "$prefix" > "$tmp/install.log" 2>&1 ||
  fail "install.sh failed: $(cat "$tmp/install.log")"
for d in bin libexec lib models/tiny etc/systemd; do [ -d "$prefix/$d" ] || fail "installed tree lacks $d/"; done
for b in zfarm zfarm-scheduler zfarm-worker; do [ -x "$prefix/bin/$b" ] || fail "installed tree lacks bin/$b"; done
! ls -d "$prefix".installing.* >/dev/null 2>&1 || fail "a staging folder was left behind"
say "installed: $(ls "$prefix/lib" | wc -l) libraries ($(( $(date +%s) - t0 )) s)"

# 4. Self-contained: every resolved library is in PREFIX/lib or in the documented system set.
system_re='/(ld-linux[^/]*|libc|libm|libdl|libpthread|librt|libresolv|libutil|libanl|libmvec|libstdc\+\+|libgcc_s)\.so[.0-9]*$'
[ "$device" = cpu ] || system_re='/(ld-linux[^/]*|libc|libm|libdl|libpthread|librt|libresolv|libutil|libanl|libmvec|libstdc\+\+|libgcc_s|libcuda|libnvidia-[^/]*)\.so[.0-9]*$'
for b in "$prefix"/libexec/*; do
  out=$(LD_LIBRARY_PATH="$prefix/lib" ldd "$b")
  ! grep -q 'not found' <<<"$out" || fail "$b: unresolved libraries: $(grep 'not found' <<<"$out")"
  outside=$(awk '$2 == "=>" {print $3}' <<<"$out" | grep '^/' | grep -v "^$prefix/lib/" | grep -Ev "$system_re" || true)
  [ -z "$outside" ] || fail "$(basename "$b") loads libraries from outside the bundle: $outside"
done
say "self-contained: every library of libexec/* resolves in the bundle or the glibc/libstdc++ set"

# 5. Run a job from the installed tree (loopback only).
wait_line() {  # LOG PATTERN PID SECONDS -> prints the first matching line
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    if grep -m1 -- "$2" "$1" 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || fail "process $3 exited before printing '$2'"
    sleep 0.1
  done
  fail "no '$2' in $1 within $4 s"
}
mkdir -p "$tmp/state" "$tmp/out"
"${clean_env[@]}" "$prefix/bin/zfarm-scheduler" --listen=127.0.0.1:0 --state-dir="$tmp/state" \
  --output-root="$tmp/out" > "$tmp/scheduler.log" 2>&1 &
sched=$!; pids+=("$sched")
addr=$(wait_line "$tmp/scheduler.log" "listening on " "$sched" 60 | sed 's/.*listening on //; s/ .*//')
"${clean_env[@]}" "$prefix/bin/zfarm" health "$addr" --timeout 10s > /dev/null || fail "scheduler at $addr is not SERVING"
"${clean_env[@]}" "$prefix/bin/zfarm-worker" serve --scheduler="$addr" --model="$prefix/models/tiny" \
  --output-root="$tmp/out" --device="$device" --name=bundle-test --warmup=64x64 --warmup-steps=1 \
  --min-free-disk-mb=1 --health-listen=127.0.0.1:0 > "$tmp/worker.log" 2>&1 &
worker=$!; pids+=("$worker")
haddr=$(wait_line "$tmp/worker.log" "grpc.health.v1 on " "$worker" 60 | sed 's/.*grpc.health.v1 on //; s/ .*//')
ok=0
for ((i = 0; i < 1200; i++)); do   # until warm and connected (the health port says SERVING)
  if "${clean_env[@]}" "$prefix/bin/zfarm" health "$haddr" --timeout 1s > /dev/null 2>&1; then ok=1; break; fi
  kill -0 "$worker" 2>/dev/null || fail "zfarm-worker serve exited"
  sleep 0.1
done
[ "$ok" = 1 ] || fail "the worker's health port $haddr never said SERVING"
"${clean_env[@]}" "$prefix/bin/zfarm" submit --scheduler "$addr" --prompt "a red fox in fresh snow" \
  --width 256 --height 256 --steps 2 --seed 7 --wait --json --timeout 300s > "$tmp/submit.json" 2> "$tmp/submit.log" ||
  fail "zfarm submit --wait failed (exit $?): $(cat "$tmp/submit.json" "$tmp/submit.log")"
read -r rel sha state < <(python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print(d["path"], d["sha256"], d["state"])' "$tmp/submit.json")
[ "${state,,}" = succeeded ] || fail "job state $state"
png="$tmp/out/$rel"
[ -f "$png" ] || fail "no PNG at $png"
[ "$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$png is not a PNG"
[ "$(sha256sum "$png" | cut -d' ' -f1)" = "$sha" ] || fail "sha256 of $png differs from the reported $sha"
say "job from the installed bundle: $rel ($(stat -c %s "$png") bytes, sha256 $sha)"
kill -TERM "$worker"; rc=0; wait "$worker" || rc=$?
[ "$rc" = 0 ] || fail "zfarm-worker exited $rc on SIGTERM"
kill -TERM "$sched"; rc=0; wait "$sched" || rc=$?
[ "$rc" = 0 ] || fail "zfarm-scheduler exited $rc on SIGTERM"
pids=()
say "PASS in $(( $(date +%s) - t0 )) s"
