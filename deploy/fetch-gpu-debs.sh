#!/usr/bin/env bash
# Prepares, on a Debian 12 machine with apt access, the dependency bundle that
# deploy/gpu-build.sh needs on an offline GPU host: the .deb files (gRPC, protobuf, Abseil,
# libpng, SQLite, ICU, glog, prometheus-cpp, gtest, ...) plus device-env.sh, which unpacks
# them there. The bundle lands in the git-ignored folder .gpu-debs/ (about 40 MB) and is
# copied (or carried) to the GPU host together with the checkout.
#
# Usage: deploy/fetch-gpu-debs.sh [DIR]       (default: <checkout>/.gpu-debs)
#        ZFARM_SHARED=/path/to/shared deploy/fetch-gpu-debs.sh   (where gpu/fetch-debs.sh lives)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/.gpu-debs}
shared=${ZFARM_SHARED:-$root/../shared}
for f in "$shared/gpu/fetch-debs.sh" "$shared/gpu/device-env.sh"; do
  [ -f "$f" ] || { echo "fetch-gpu-debs: missing $f (set ZFARM_SHARED)" >&2; exit 1; }
done
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
bash "$shared/gpu/fetch-debs.sh" "$dir"
# Not in the shared list, but needed to CONFIGURE on the GPU host (seen there): glog's CMake
# config requires Unwind (headers + libunwind.so), prometheus-cpp's config requires CURL (its
# push library, which zfarm does not link), civetweb's config checks that its server binary exists.
# The /metrics server is built on Boost.Asio/Beast (header-only libboost1.74-dev); the
# tests' HTTP client is cpp-httplib (+ brotli, its compression dependency). JPEG inputs of
# image-to-image jobs and JPEG results use libjpeg-turbo; WebP results libwebp + libwebpmux.
extra=(libunwind-dev liblzma-dev libcurl4-openssl-dev libcurl4 civetweb libboost1.74-dev
       libcpp-httplib-dev libcpp-httplib0.11 libbrotli-dev libbrotli1
       libjpeg62-turbo-dev libjpeg62-turbo libwebp-dev libwebp7 libwebpmux3 libwebpdemux2)
(cd "$dir" && apt-get download -qq "${extra[@]}" 2>&1 | grep -vE "^(W: Download is performed unsandboxed|Get:|Fetched)" || true)
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
cp "$shared/gpu/device-env.sh" "$dir/device-env.sh"
echo "fetch-gpu-debs: $(ls -1 "$dir"/*.deb | wc -l) .deb files, $(du -sh "$dir" | cut -f1) in $dir"
