#!/usr/bin/env bash
# The container test (ctest containers_test, label `containers`; by hand: about 15-30 minutes on
# 2 cores for a first build, so CI runs only the cheap deploy checks). From a clean tree:
#   1. installs docker.io, docker-compose and debootstrap (Debian 12) when missing, and starts
#      dockerd when no engine answers (and stops it again at the end);
#   2. makes the base images with deploy/docker/make-base-image.sh (debootstrap + docker import;
#      kept between runs, like the build cache: ZFARM_CONTAINERS_PURGE=1 removes them too);
#   3. builds the scheduler and CPU worker images of Dockerfile.cpu with `--network none`: a
#      step that would reach the internet fails the test, named ("[build 3/5] RUN ..."); a
#      planted step that does proves the naming;
#   4. the CUDA image's GPU-free steps: a CUDA base from a stand-in CUDA runtime .deb
#      (make-base-image.sh --variant cuda), Dockerfile.cuda installing a bundle made in the build
#      stage (checksums verified, every library resolved), a corrupted bundle refused;
#   5. starts the CPU compose farm (deploy/docker/compose.cpu.yaml, Debian's docker-compose
#      1.29), submits a job with the host's CLI and checks the PNG and its sha256 on the host
#      volume;
#   6. kill -9s the worker container's process while a job runs; the restart policy brings it
#      back and the job finishes once (SUCCEEDED, one PNG for it, the same sha256 everywhere);
#   7. stops the farm (SIGTERM), checks that every container exited 0, and removes everything it
#      created (containers, network, volume, the test's image tags, temp folders).
# Usage: tests/deploy/containers.sh [BUILD_DIR]
#   BUILD_DIR: a host build with bin/zfarm and tiny-model/ (default <repo>/build; configured and
#   built here, targets zfarm_cli and tiny_model, when they are missing).
# Environment: DOCKER (default /usr/bin/docker, Debian's client), ZFARM_CONTAINERS_JOBS (compile
# jobs in the image build, default 2), ZFARM_CONTAINERS_PURGE=1 (also remove the base images and
# the build cache at the end).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath -m "${1:-$repo/build}")
DOCKER=${DOCKER:-/usr/bin/docker}
export DOCKER DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
jobs=${ZFARM_CONTAINERS_JOBS:-2}
t0=$(date +%s)
tag=ctest-$$
project=zfarm-ct-$$
tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/zfarm-containers.XXXXXX")
started_dockerd="" farm_up="" images=()
say() { echo "containers: [$(( $(date +%s) - t0 )) s] $*"; }
compose() { docker-compose -p "$project" -f "$repo/deploy/docker/compose.cpu.yaml" "$@"; }
cleanup() {
  set +e
  if [ -n "$farm_up" ]; then compose down -v --remove-orphans > "$tmp/down.log" 2>&1; fi
  for i in "${images[@]+"${images[@]}"}"; do $DOCKER rmi -f "$i" > /dev/null 2>&1; done
  if [ "${ZFARM_CONTAINERS_PURGE:-0}" = 1 ]; then
    $DOCKER rmi -f zfarm/debian:12 zfarm/debian-build:12 zfarm/debian-cuda-ctest:12 > /dev/null 2>&1
    $DOCKER builder prune -af > /dev/null 2>&1
  fi
  if [ -n "$started_dockerd" ]; then
    kill -TERM "$started_dockerd"
    for _ in $(seq 100); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "containers: FAIL: $*" >&2
  if [ -n "$farm_up" ]; then compose logs --no-color --tail 30 >&2 2>&1 || true; fi
  exit 1
}

# Runs one `docker build` (plain progress into LOG); on failure names the Dockerfile step that
# failed, e.g. "[build 3/5] RUN cmake ...", from BuildKit's output.
docker_build() {  # LOG WHAT ARGS...
  local log=$1 what=$2; shift 2
  if nice -n 10 $DOCKER build --network none --progress plain "$@" > "$log" 2>&1; then return 0; fi
  local step
  step=$(python3 - "$log" <<'PY'
import re, sys
lines = open(sys.argv[1], errors="replace").read().splitlines()
steps = {}
for l in lines:
    m = re.match(r"#(\d+) (\[[^\]]+\] .*)", l)
    if m and m.group(1) not in steps:
        steps[m.group(1)] = m.group(2)
failed = [m.group(1) for l in lines for m in [re.match(r"#(\d+) ERROR", l)] if m]
print(steps.get(failed[0], "?") if failed else "?")
PY
)
  tail -n 25 "$log" >&2
  echo "containers: $what: the Dockerfile step that failed: $step" >&2
  echo "containers: (builds run with --network none: a step that reaches the internet fails here)" >&2
  return 1
}

# 1. Tools and the engine.
need=()
[ -x /usr/bin/docker ] && [ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v docker-compose > /dev/null || need+=(docker-compose)
command -v debootstrap > /dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" > "$tmp/apt.log" 2>&1 ||
    { tail "$tmp/apt.log" >&2; fail "apt-get install ${need[*]} failed"; }
fi
if ! $DOCKER info > /dev/null 2>&1; then
  say "no Docker engine answers: starting dockerd"
  /usr/sbin/dockerd > "$tmp/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 120); do $DOCKER info > /dev/null 2>&1 && break; kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.5; done
  $DOCKER info > /dev/null 2>&1 || { tail "$tmp/dockerd.log" >&2; fail "dockerd did not start"; }
fi
say "engine $($DOCKER version -f '{{.Server.Version}}'), $(docker-compose version --short 2>/dev/null | head -1) compose"

# The host's CLI and the tiny model.
if [ ! -x "$build/bin/zfarm" ] || [ ! -f "$build/tiny-model/manifest.md5" ]; then
  say "building zfarm_cli and tiny_model in $build"
  bash "$repo/deploy/install-deps.sh" > /dev/null
  cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$tmp/cmake.log" 2>&1 ||
    { tail "$tmp/cmake.log" >&2; fail "configure failed"; }
  nice cmake --build "$build" -j"$jobs" --target zfarm_cli tiny_model > "$tmp/build.log" 2>&1 ||
    { tail "$tmp/build.log" >&2; fail "building zfarm_cli tiny_model failed"; }
fi
cli=$build/bin/zfarm
version=$("$cli" --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)

# 2. Base images (kept between runs; the build base is made again when install-deps.sh's build
# list changed: its ENV ZFARM_BASE_PACKAGES is the list's sha256).
want_sum=$(bash "$repo/deploy/install-deps.sh" --list build | sha256sum | cut -c1-16)
for v in runtime build; do
  img=zfarm/debian:12; [ "$v" = build ] && img=zfarm/debian-build:12
  have_sum=$($DOCKER image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$img" 2>/dev/null |
             sed -n 's/^ZFARM_BASE_PACKAGES=//p' || true)  # none yet on a fresh machine
  if [ -n "$have_sum" ] && { [ "$v" = runtime ] || [ "$have_sum" = "$want_sum" ]; }; then
    say "base image $img present (made $($DOCKER image inspect -f '{{.Created}}' "$img" | cut -c1-19))"
  else
    [ -z "$have_sum" ] || say "base image $img is stale (install-deps.sh --list build changed)"
    say "making base image $img"
    nice bash "$repo/deploy/docker/make-base-image.sh" --variant "$v" > "$tmp/base-$v.log" 2>&1 ||
      { tail "$tmp/base-$v.log" >&2; fail "make-base-image.sh --variant $v failed"; }
  fi
done

# 3. The planted network step: it must fail, and be named.
mkdir "$tmp/planted"
printf 'FROM zfarm/debian:12\nRUN echo offline-step\nRUN getent hosts deb.debian.org\n' > "$tmp/planted/Dockerfile"
if docker_build "$tmp/planted.log" "planted step" -t "zfarm/planted:$tag" "$tmp/planted" 2> "$tmp/planted.err"; then
  images+=("zfarm/planted:$tag")
  fail "a step that resolves deb.debian.org built with --network none"
fi
grep -q 'step that failed: \[3/3\] RUN getent hosts deb.debian.org' "$tmp/planted.err" ||
  fail "the planted network step is not named: $(tail -3 "$tmp/planted.err")"
say "planted network step refused and named: $(grep -m1 -o '\[3/3\] RUN getent.*' "$tmp/planted.err")"

# 3. The images of Dockerfile.cpu.
for target in build scheduler worker-cpu; do
  s=$(date +%s)
  docker_build "$tmp/build-$target.log" "Dockerfile.cpu --target $target" -f "$repo/deploy/docker/Dockerfile.cpu" \
    --target "$target" --build-arg JOBS="$jobs" --build-arg NICE=10 -t "zfarm/$target:$tag" "$repo" ||
    fail "docker build -f deploy/docker/Dockerfile.cpu --target $target failed"
  images+=("zfarm/$target:$tag")
  say "built zfarm/$target:$tag in $(( $(date +%s) - s )) s, $(( $($DOCKER image inspect -f '{{.Size}}' "zfarm/$target:$tag") / 1000000 )) MB"
done
for img in scheduler worker-cpu; do
  user=$($DOCKER image inspect -f '{{.Config.User}}' "zfarm/$img:$tag")
  [ "$user" = 10001:10001 ] || fail "zfarm/$img runs as '$user', not 10001:10001"
  extra=$($DOCKER run --rm --network none --entrypoint sh "zfarm/$img:$tag" -c \
    'command -v gcc c++ cc1plus cmake ninja; ls /var/lib/apt/lists | grep Packages; ls /usr/include 2>/dev/null | head -1' || true)
  [ -z "$extra" ] || fail "zfarm/$img has build tools, headers or package lists: $extra"
done
$DOCKER run --rm --network none --entrypoint sh "zfarm/scheduler:$tag" -c 'ls /opt/zfarm/lib | grep -q libtorch' &&
  fail "the scheduler image carries libtorch"

# 4. The CUDA image's GPU-free steps: a CUDA base from a stand-in runtime .deb, Dockerfile.cuda
# installing a bundle of the build stage (a CPU worker: the steps are the same), a bad one refused.
mkdir -p "$tmp/cudadeb/pkg/DEBIAN" "$tmp/cudadeb/pkg/usr/lib/x86_64-linux-gnu" "$tmp/cudadebs" "$tmp/carry"
printf 'Package: zfarm-ctest-cudart\nVersion: 12.8-1\nArchitecture: amd64\nMaintainer: zfarm tests <tests@zfarm.invalid>\nDescription: stand-in for the CUDA runtime packages (container test)\n' \
  > "$tmp/cudadeb/pkg/DEBIAN/control"
echo "stand-in libcudart" > "$tmp/cudadeb/pkg/usr/lib/x86_64-linux-gnu/zfarm-ctest-cudart.txt"
dpkg-deb --build --root-owner-group "$tmp/cudadeb/pkg" "$tmp/cudadebs/zfarm-ctest-cudart_12.8-1_amd64.deb" > /dev/null
if ! $DOCKER image inspect zfarm/debian-cuda-ctest:12 > /dev/null 2>&1; then
  say "making the CUDA base zfarm/debian-cuda-ctest:12 (stand-in runtime .deb)"
  nice bash "$repo/deploy/docker/make-base-image.sh" --variant cuda --cuda-debs "$tmp/cudadebs" \
    --tag zfarm/debian-cuda-ctest:12 > "$tmp/base-cuda.log" 2>&1 ||
    { tail "$tmp/base-cuda.log" >&2; fail "make-base-image.sh --variant cuda failed"; }
fi
$DOCKER run --rm --network none zfarm/debian-cuda-ctest:12 dpkg-query -W zfarm-ctest-cudart > /dev/null ||
  fail "the CUDA base lacks the package of --cuda-debs"
chmod 0777 "$tmp/carry"
$DOCKER run --rm --network none -v "$tmp/carry:/carry" "zfarm/build:$tag" \
  deploy/make-bundle.sh --build-dir /build --out /carry/zfarm-worker-cuda.tar > "$tmp/bundle.log" 2>&1 ||
  { tail "$tmp/bundle.log" >&2; fail "make-bundle.sh in the build stage failed"; }
msum=$(grep -o 'MANIFEST.sha256 sha256: [0-9a-f]*' "$tmp/bundle.log" | awk '{print $3}')
docker_build "$tmp/build-cuda.log" "Dockerfile.cuda" -f "$repo/deploy/docker/Dockerfile.cuda" \
  --build-arg CUDA_BASE_IMAGE=zfarm/debian-cuda-ctest:12 --build-arg MANIFEST_SHA256="$msum" \
  -t "zfarm/worker-cuda:$tag" "$tmp/carry" || fail "docker build -f deploy/docker/Dockerfile.cuda failed"
images+=("zfarm/worker-cuda:$tag")
grep -q "all [0-9]* files match MANIFEST.sha256" "$tmp/build-cuda.log" || fail "Dockerfile.cuda did not verify the bundle"
$DOCKER run --rm --network none "zfarm/worker-cuda:$tag" --version > "$tmp/cuda-version.txt" 2>&1 ||
  fail "zfarm-worker --version in the CUDA image failed: $(cat "$tmp/cuda-version.txt")"
say "Dockerfile.cuda from the bundle: zfarm/worker-cuda:$tag $(( $($DOCKER image inspect -f '{{.Size}}' "zfarm/worker-cuda:$tag") / 1000000 )) MB, $(head -1 "$tmp/cuda-version.txt")"
if docker_build "$tmp/build-cuda-bad.log" "Dockerfile.cuda (wrong manifest sha256)" -f "$repo/deploy/docker/Dockerfile.cuda" \
     --build-arg CUDA_BASE_IMAGE=zfarm/debian-cuda-ctest:12 --build-arg MANIFEST_SHA256=0000 \
     -t "zfarm/worker-cuda-bad:$tag" "$tmp/carry" 2> "$tmp/build-cuda-bad.err"; then
  images+=("zfarm/worker-cuda-bad:$tag")
  fail "Dockerfile.cuda accepted a bundle whose manifest has another sha256"
fi
grep -q 'REFUSED: MANIFEST.sha256 has sha256' "$tmp/build-cuda-bad.log" || fail "the wrong manifest is not named"
say "Dockerfile.cuda refuses a bundle with another manifest sha256 ($(grep -m1 -o 'step that failed: .\{0,60\}' "$tmp/build-cuda-bad.err"))"
rm -rf "$tmp/carry"

# 5. The CPU farm.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
out=$tmp/outputs
install -d -m 0755 -o 10001 -g 10001 "$out"
export ZFARM_TAG=$tag ZFARM_OUTPUTS=$out ZFARM_MODEL=$build/tiny-model
ZFARM_GRPC_PORT=$(free_port) ZFARM_HTTP_PORT=$(free_port) ZFARM_METRICS_PORT=$(free_port)
export ZFARM_GRPC_PORT ZFARM_HTTP_PORT ZFARM_METRICS_PORT
addr=127.0.0.1:$ZFARM_GRPC_PORT
compose config -q || fail "docker-compose config refuses deploy/docker/compose.cpu.yaml"
farm_up=1
compose up -d > "$tmp/up.log" 2>&1 || { cat "$tmp/up.log" >&2; fail "docker-compose up failed"; }
cid() { compose ps -q "$1"; }
health() { $DOCKER inspect -f '{{.State.Health.Status}}' "$(cid "$1")"; }
wait_healthy() {  # SERVICE SECONDS
  local i
  for ((i = 0; i < $2; i++)); do
    [ "$(health "$1")" = healthy ] && return 0
    sleep 1
  done
  fail "$1 is not healthy after $2 s ($(health "$1"))"
}
wait_healthy scheduler 120
wait_healthy worker-cpu0 300
say "farm up: scheduler and worker-cpu0 healthy; the CLI on the host dials $addr"

job_field() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(d.get(sys.argv[1]) or "")' "$1"; }
check_png() {  # REL SHA -> checks the file on the host volume
  local png=$out/$1
  [ -f "$png" ] || fail "no PNG at $png on the host volume"
  [ "$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$png is not a PNG"
  [ "$(sha256sum "$png" | cut -d' ' -f1)" = "$2" ] || fail "sha256 of $png differs from the reported $2"
}
"$cli" submit --scheduler "$addr" --json --prompt "a red fox in fresh snow" --width 256 --height 256 --steps 2 \
  --seed 7 --wait --timeout 300s > "$tmp/job1.json" || fail "zfarm submit --wait failed: $(cat "$tmp/job1.json")"
[ "$(job_field state < "$tmp/job1.json")" = succeeded ] || fail "job 1: $(cat "$tmp/job1.json")"
rel=$(job_field path < "$tmp/job1.json") sha=$(job_field sha256 < "$tmp/job1.json")
check_png "$rel" "$sha"
say "job 1 from the host CLI: $rel ($(stat -c %s "$out/$rel") bytes, sha256 $sha) on the host volume"

# 6. kill -9 the worker while a job runs.
wpid=$($DOCKER inspect -f '{{.State.Pid}}' "$(cid worker-cpu0)")
restarts0=$($DOCKER inspect -f '{{.RestartCount}}' "$(cid worker-cpu0)")
"$cli" submit --scheduler "$addr" --json --prompt "a lighthouse at dusk" --width 512 --height 512 --steps 50 \
  --seed 11 > "$tmp/job2.json" || fail "submit of job 2 failed: $(cat "$tmp/job2.json")"
job2=$(job_field job < "$tmp/job2.json")
for ((i = 0; i < 600; i++)); do
  "$cli" status "$job2" --scheduler "$addr" --json > "$tmp/job2-status.json" 2>/dev/null || true
  [ "$(job_field state < "$tmp/job2-status.json")" = running ] && break
  sleep 0.2
done
[ "$(job_field state < "$tmp/job2-status.json")" = running ] || fail "job 2 never ran: $(cat "$tmp/job2-status.json")"
kill -KILL "$wpid"
say "job 2 ($job2) running (step $(job_field step < "$tmp/job2-status.json")): kill -9 of the worker's process $wpid"
for ((i = 0; i < 120; i++)); do
  [ "$($DOCKER inspect -f '{{.RestartCount}}' "$(cid worker-cpu0)")" -gt "$restarts0" ] && break
  sleep 0.5
done
[ "$($DOCKER inspect -f '{{.RestartCount}}' "$(cid worker-cpu0)")" -gt "$restarts0" ] ||
  fail "the restart policy did not restart worker-cpu0 after kill -9"
wait_healthy worker-cpu0 300
"$cli" watch "$job2" --scheduler "$addr" --json --timeout 600s > "$tmp/job2-final.json" 2>&1 || true
[ "$(job_field state < "$tmp/job2-final.json")" = succeeded ] || fail "job 2 after the restart: $(tail -2 "$tmp/job2-final.json")"
rel2=$(job_field path < "$tmp/job2-final.json") sha2=$(job_field sha256 < "$tmp/job2-final.json")
check_png "$rel2" "$sha2"
n=$(find "$out" -name "*$job2*.png" | wc -l)
[ "$n" = 1 ] || fail "job 2 has $n PNGs on the volume: $(find "$out" -name "*$job2*")"
left=$(find "$out" -name '*.tmp' | wc -l)
say "job 2 finished once after the restart ($($DOCKER inspect -f '{{.RestartCount}}' "$(cid worker-cpu0)") restart): $rel2, sha256 $sha2; $left temp files left"

# 7. Stop: every container exits 0; then remove everything.
compose stop > "$tmp/stop.log" 2>&1 || { cat "$tmp/stop.log" >&2; fail "docker-compose stop failed"; }
for s in scheduler worker-cpu0; do
  rc=$($DOCKER inspect -f '{{.State.ExitCode}}' "$(cid "$s")")
  [ "$rc" = 0 ] || fail "$s exited $rc on docker-compose stop"
done
say "stopped: scheduler and worker-cpu0 exited 0"
compose down -v --remove-orphans > "$tmp/down.log" 2>&1 || fail "docker-compose down failed: $(cat "$tmp/down.log")"
farm_up=""
leftover=$($DOCKER ps -aq --filter "label=com.docker.compose.project=$project"; $DOCKER volume ls -q --filter "label=com.docker.compose.project=$project"; $DOCKER network ls -q --filter "label=com.docker.compose.project=$project")
[ -z "$leftover" ] || fail "left behind after down: $leftover"
sizes=$(for i in scheduler worker-cpu worker-cuda; do echo "zfarm/$i $(( $($DOCKER image inspect -f '{{.Size}}' "zfarm/$i:$tag") / 1000000 )) MB"; done | paste -sd, -)
say "image sizes: $sizes"
say "PASS in $(( $(date +%s) - t0 )) s (version $version)"
