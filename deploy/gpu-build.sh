#!/usr/bin/env bash
# One command from a checkout to CUDA binaries on a GPU host WITHOUT a package registry
# (CUDA + a CUDA build of PyTorch 2.x for python3, CMake, ninja, g++ — but no gRPC, protobuf,
# Abseil, ... and no downloads). Needs the dependency bundle made beforehand on a Debian 12
# machine with `deploy/fetch-gpu-debs.sh` (the folder .gpu-debs/: .deb files + device-env.sh),
# copied or carried to the GPU host with the checkout.
#
# Usage: deploy/gpu-build.sh [TARGET...]          (no target: everything)
# Environment:
#   ZFARM_GPU_DEBS    the bundle folder               (default: <checkout>/.gpu-debs)
#   ZFARM_BUILD_DIR   the build folder                (default: <checkout>/build-gpu)
#   ZFARM_KEEP_GOING  1: keep building other targets after a failed one (ninja -k 0)
#   ZFARM_JOBS        parallel jobs                   (default: nproc)
#
# What it does (the recipe verified on the GPU host, its three traps handled):
#   1. unpacks the .debs under /opt/deps (never into /) and puts them on PATH/LD_LIBRARY_PATH;
#   2. configures Release with ninja, Torch from the host's python3 torch, -DZFARM_WERROR=OFF,
#      CUDA architecture 90 (Hopper: H100/H200);
#      trap 1: find_package(Protobuf) must run before find_package(Torch) — checked below in the
#              top-level CMakeLists.txt; protobuf is pinned to the bundle's 3.21 explicitly;
#      trap 2: Torch's bundled google/protobuf headers — Torch stays PRIVATE to the worker's
#              model/pipeline targets (a layering rule of the code; warned about here (grep): a file
#              that includes a Torch header must not include *.pb.h / gRPC headers);
#      trap 3: gRPC's CMake config links -lre2 by name — -L<bundle lib dir> on every link;
#      and two more seen there: glog's config hard-codes its find modules under
#      /usr/share/glog/cmake and needs Unwind; prometheus-cpp's config needs CURL — both are
#      pointed at the bundle;
#   3. builds and prints where the binaries are. The environment to RUN them is written to
#      <build>/gpu-env.sh (source it: LD_LIBRARY_PATH for the bundle's libraries).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
debs=${ZFARM_GPU_DEBS:-$root/.gpu-debs}
build=${ZFARM_BUILD_DIR:-$root/build-gpu}
jobs=${ZFARM_JOBS:-$(nproc)}
start=$(date +%s)
say() { echo "gpu-build: $*"; }
die() { echo "gpu-build: error: $*" >&2; exit 1; }

[ -f "$debs/device-env.sh" ] || die "no $debs/device-env.sh: run deploy/fetch-gpu-debs.sh on a Debian 12 machine first and copy .gpu-debs/ here"
ls "$debs"/*.deb >/dev/null 2>&1 || die "no .deb files in $debs"
command -v python3 >/dev/null || die "python3 not found (Torch comes from the host's python3 torch)"
python3 -c 'import torch' 2>/dev/null || die "python3 cannot import torch"
command -v ninja >/dev/null || die "ninja not found"
command -v cmake >/dev/null || die "cmake not found"

# Trap 1: Protobuf before Torch in the top-level CMakeLists.txt.
pb_line=$(grep -n 'find_package(Protobuf' "$root/CMakeLists.txt" | head -1 | cut -d: -f1)
torch_line=$(grep -n 'find_package(Torch' "$root/CMakeLists.txt" | head -1 | cut -d: -f1)
if [ -n "$pb_line" ] && [ -n "$torch_line" ] && [ "$pb_line" -gt "$torch_line" ]; then
  die "CMakeLists.txt finds Torch (line $torch_line) before Protobuf (line $pb_line): Torch would define an empty protobuf::libprotobuf target"
fi
# Trap 2: no translation unit may see both Torch and generated protobuf/gRPC headers.
mixed=$(cd "$root" && grep -rlE '#include [<"](torch/|ATen/|c10/)' --include='*.cc' --include='*.h' --include='*.cu' \
          proto scheduler worker client tests 2>/dev/null |
        xargs -r grep -lE '#include [<"].*(\.pb\.h|grpcpp/)' || true)
[ -z "$mixed" ] || say "WARNING: these files include both Torch and protobuf/gRPC headers; they will not compile (Torch ships its own older google/protobuf headers): $mixed"

# 1. Unpack the bundle (device-env.sh: dpkg -x into /opt/deps, PATH, LD_LIBRARY_PATH,
#    ZFARM_CMAKE_ARGS with the host's torch CMake dir, explicit protobuf/png/sqlite, -L, arch 90).
# shellcheck disable=SC1091
source "$debs/device-env.sh" "$debs" >/dev/null
L=/opt/deps/usr/lib/x86_64-linux-gnu
[ -f "$L/libprotobuf.so" ] || die "unpacking failed: $L/libprotobuf.so missing"
torch_version=$(python3 -c 'import torch; print(torch.__version__)')
cuda_version=$(python3 -c 'import torch; print(torch.version.cuda)')
say "torch $torch_version (CUDA $cuda_version) from $(command -v python3); deps under /opt/deps"

# CUDA toolkit for Torch's CMake config (nvcc on PATH or the usual places).
if ! command -v nvcc >/dev/null; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do [ -x "$d/nvcc" ] && export PATH=$d:$PATH && break; done
fi
extra=()
command -v nvcc >/dev/null && extra+=("-DCMAKE_CUDA_COMPILER=$(command -v nvcc)")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

# 2. Configure. ZFARM_CMAKE_ARGS holds spaces only between arguments.
mkdir -p "$build"
# shellcheck disable=SC2206
args=($ZFARM_CMAKE_ARGS)
cmake -S "$root" -B "$build" -G Ninja -Wno-dev \
  -DCMAKE_BUILD_TYPE=Release -DZFARM_WERROR=OFF -DZFARM_BUILD_WORKER=ON -DZFARM_BUILD_TESTS=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DZFARM_BENCH_WITH_PIPELINE=ON -DZFARM_BENCH_WITH_IO=ON \
  -DICU_ROOT=/opt/deps/usr -DOPENSSL_ROOT_DIR=/opt/deps/usr -DZLIB_ROOT=/opt/deps/usr \
  -DCMAKE_MODULE_PATH=/opt/deps/usr/share/glog/cmake \
  -DUnwind_INCLUDE_DIR=/opt/deps/usr/include/x86_64-linux-gnu -DUnwind_LIBRARY=$L/libunwind.so \
  -DCURL_INCLUDE_DIR=/opt/deps/usr/include/x86_64-linux-gnu -DCURL_LIBRARY=$L/libcurl.so \
  -DJPEG_INCLUDE_DIR=/opt/deps/usr/include -DJPEG_LIBRARY=$L/libjpeg.so -DWEBP_ROOT=/opt/deps/usr \
  "${args[@]}" "${extra[@]}" \
  "-DCMAKE_EXE_LINKER_FLAGS=-L$L -Wl,-rpath-link,$L" "-DCMAKE_SHARED_LINKER_FLAGS=-L$L -Wl,-rpath-link,$L" \
  > "$build/configure.log" 2>&1 || {
  tail -60 "$build/configure.log"; die "configure failed (log: $build/configure.log)"; }
grep -E 'Found (Torch|Protobuf|gRPC|CUDA)|CMAKE_CUDA|Warning' "$build/configure.log" | head -20 || true

# Environment for running the binaries (the bundle's libraries are not on the system path).
cat > "$build/gpu-env.sh" <<ENV
export LD_LIBRARY_PATH=$L:\${LD_LIBRARY_PATH:-}
export PATH=/opt/deps/usr/bin:\$PATH
ENV
say "configured in $(( $(date +%s) - start )) s"

# 3. Build.
kflag=()
[ "${ZFARM_KEEP_GOING:-0}" = 1 ] && kflag=(-k 0)
rc=0
targets=()
[ $# -gt 0 ] && targets=(--target "$@")
cmake --build "$build" -j"$jobs" "${targets[@]}" -- "${kflag[@]}" || rc=$?
say "build exit $rc after $(( $(date +%s) - start )) s"
say "binaries: $build/bin ($(ls "$build/bin" 2>/dev/null | tr '\n' ' '))"
say "benchmarks: $(cd "$build" && ls tests/bench/*_bench 2>/dev/null | tr '\n' ' ')"
say "to run them: source $build/gpu-env.sh"
exit $rc
