#!/usr/bin/env bash
# Prepares, on a Debian 12 machine with apt access, the dependency bundle that
# deploy/gpu-build.sh needs on an offline GPU host: the .deb files (gRPC, protobuf, Abseil,
# libpng, SQLite, ICU, glog, prometheus-cpp, gtest, ...) plus device-env.sh, which unpacks
# them there. The bundle lands in the git-ignored folder .gpu-debs/ (about 46 MB) and is
# copied (or carried) to the GPU host together with the checkout.
#
# Usage: deploy/fetch-gpu-debs.sh [DIR]       (default: <checkout>/.gpu-debs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/.gpu-debs}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pkgs=(
  # gRPC, protobuf, Abseil and what they link
  libgrpc29 libgrpc++1.51 libgrpc-dev libgrpc++-dev protobuf-compiler-grpc
  libprotobuf32 libprotobuf-lite32 libprotoc32 libprotobuf-dev protobuf-compiler
  libabsl20220623 libabsl-dev libre2-9 libre2-dev libc-ares2 libc-ares-dev
  libssl3 libssl-dev zlib1g-dev
  # pictures, the journal, the tokenizer's ICU, metrics, JSON, tests, logging
  libpng16-16 libpng-dev libsqlite3-0 libsqlite3-dev libicu72 libicu-dev icu-devtools
  libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprometheus-cpp-push1.0 libcivetweb1
  libcivetweb-dev prometheus-cpp-dev
  nlohmann-json3-dev libgtest-dev libgmock-dev googletest libbenchmark1debian libbenchmark-dev
  libgoogle-glog0v6 libgoogle-glog-dev libgflags2.2 libgflags-dev libunwind8 libspdlog1.10
  libspdlog-dev libfmt9 libfmt-dev
  # Needed to CONFIGURE on the GPU host (seen there): glog's CMake config requires Unwind
  # (headers + libunwind.so), prometheus-cpp's requires CURL (its push library, which zfarm
  # does not link), civetweb's checks that its server binary exists.
  libunwind-dev liblzma-dev libcurl4-openssl-dev libcurl4 civetweb
  # The HTTP servers are Boost.Asio/Beast (header-only); the tests' HTTP client is cpp-httplib
  # (+ brotli, its compression dependency); JPEG inputs and results use libjpeg-turbo, WebP
  # results libwebp + libwebpmux.
  libboost1.74-dev libcpp-httplib-dev libcpp-httplib0.11 libbrotli-dev libbrotli1
  libjpeg62-turbo-dev libjpeg62-turbo libwebp-dev libwebp7 libwebpmux3 libwebpdemux2
  # OpenCV (the canny ControlNet preprocessor) is left out: its core, imgproc and TBB
  # packages would not fit the GPU tool's carry limit; GPU builds have --canny off.
)
(cd "$dir" && apt-get download -qq "${pkgs[@]}" 2>&1 | grep -vE "^(W: Download is performed unsandboxed|Get:|Fetched)" || true)
# libicu-dev carries 44 MB of static archives (libicudata.a alone is 31 MB) that nothing here
# links (CMake's FindICU takes the .so): repacked without them, the bundle shrinks by ~8 MB
# and fits the GPU tool's carry limit beside the diffusers snapshot.
for deb in "$dir"/libicu-dev_*.deb; do
  [ -f "$deb" ] || continue
  tmp=$(mktemp -d)
  dpkg-deb -R "$deb" "$tmp/pkg"
  if find "$tmp/pkg" -name '*.a' | grep -q .; then
    find "$tmp/pkg" -name '*.a' -delete
    sed -i '/\.a$/d' "$tmp/pkg/DEBIAN/md5sums" 2>/dev/null || true
    dpkg-deb --root-owner-group -Zxz -b "$tmp/pkg" "$deb" > /dev/null
  fi
  rm -rf "$tmp"
done
# device-env.sh, sourced on the GPU host from the bundle folder: unpacks every .deb under
# /opt/deps (never into /), puts it on PATH / LD_LIBRARY_PATH, and sets ZFARM_CMAKE_ARGS to
# configure against the host's python3 torch (its CMake prefix) and the bundle's protobuf,
# libpng and SQLite (named explicitly so CMake never picks a copy of the host's or torch's).
cat > "$dir/device-env.sh" <<'ENV'
# Usage (on the GPU host): source device-env.sh DEBDIR   (made by deploy/fetch-gpu-debs.sh)
debdir=${1:?usage: source device-env.sh DEBDIR}
mkdir -p /opt/deps
for f in "$debdir"/*.deb; do dpkg -x "$f" /opt/deps; done
export PATH=/opt/deps/usr/bin:$PATH
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
torch_cmake=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
L=/opt/deps/usr/lib/x86_64-linux-gnu
export ZFARM_CMAKE_ARGS="-DCMAKE_PREFIX_PATH=$torch_cmake;$L/cmake;/opt/deps/usr \
 -DProtobuf_INCLUDE_DIR=/opt/deps/usr/include -DProtobuf_LIBRARY=$L/libprotobuf.so \
 -DProtobuf_PROTOC_EXECUTABLE=/opt/deps/usr/bin/protoc \
 -DPNG_PNG_INCLUDE_DIR=/opt/deps/usr/include -DPNG_LIBRARY=$L/libpng16.so \
 -DSQLite3_INCLUDE_DIR=/opt/deps/usr/include -DSQLite3_LIBRARY=$L/libsqlite3.so \
 -DCMAKE_EXE_LINKER_FLAGS=-L$L -DCMAKE_SHARED_LINKER_FLAGS=-L$L -DCMAKE_CUDA_ARCHITECTURES=90"
echo "deps unpacked under /opt/deps; torch cmake dir: $torch_cmake"
ENV
echo "fetch-gpu-debs: $(ls -1 "$dir"/*.deb | wc -l) .deb files, $(du -sh "$dir" | cut -f1) in $dir"
