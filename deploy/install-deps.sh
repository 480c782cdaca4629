#!/usr/bin/env bash
# Installs every Debian 12 package zfarm needs to build, test and run (CPU build).
# Usage: deploy/install-deps.sh            (as root, or with sudo available)
#        deploy/install-deps.sh --list build|test|all
#            print one group's package names, one a line, and install nothing. `build` is what
#            a Release build of the three binaries needs (deploy/docker/make-base-image.sh
#            installs exactly it into the container build image); `test` adds the tests' tools.
set -euo pipefail
# A Release build of zfarm, zfarm-scheduler and zfarm-worker (ZFARM_BUILD_TESTS=OFF).
build_pkgs=(
  # toolchain
  build-essential cmake ninja-build pkg-config ccache
  # RPC, storage, images, metrics, logging, JSON, Unicode, crypto
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libsqlite3-dev libpng-dev libjpeg62-turbo-dev prometheus-cpp-dev libcivetweb-dev
  # the PostgreSQL journal of active/standby schedulers (libpq, PostgreSQL's C client)
  libpq-dev
  libboost-dev
  # WebP results (libwebp + libwebpmux for the EXIF/XMP chunks; JPEG uses libjpeg62-turbo-dev)
  libwebp-dev
  libgoogle-glog-dev libgflags-dev nlohmann-json3-dev libicu-dev libssl-dev zlib1g-dev
  # the built-in canny ControlNet preprocessor (OpenCV imgproc; optional at build time)
  libopencv-imgproc-dev
  # the worker's model runtime (CPU libtorch 1.13)
  libtorch-dev
)
# Everything else the tests and benchmarks use.
test_pkgs=(
  clang libclang-rt-14-dev git
  # the tests' HTTP client
  libcpp-httplib-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  # test prerequisites: the tokenizer reference (node), clock faults, netns, loop-mounted ext4
  faketime iproute2 e2fsprogs util-linux openssl curl procps python3 python3-yaml systemd sqlite3
  # the `ha` tests start their own PostgreSQL 15 server (initdb + pg_ctl in a temp dir)
  postgresql
  # deploy checks: `docker-compose config` of the compose files (Debian's compose 1.29)
  docker-compose
  # the Python client's runtime (client/python; its stubs are generated with protoc at build time)
  python3-grpcio python3-protobuf
  # results read back as AUTOMATIC1111 reads them (tests/worker/io/a1111_read_test.py)
  python3-pil python3-piexif
  # the dashboard's browser test (driven by playwright-core from npm, which downloads no browser)
  chromium
)
if [ "${1:-}" = --list ]; then
  case "${2:-}" in
    build) printf '%s\n' "${build_pkgs[@]}" ;;
    test) printf '%s\n' "${test_pkgs[@]}" ;;
    all) printf '%s\n' "${build_pkgs[@]}" "${test_pkgs[@]}" ;;
    *) echo "install-deps: --list needs build, test or all (got '${2:-}')" >&2; exit 2 ;;
  esac
  exit 0
fi
[ $# -eq 0 ] || { echo "install-deps: unknown argument '$1' (usage: install-deps.sh [--list build|test|all])" >&2; exit 2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
pkgs=("${build_pkgs[@]}" "${test_pkgs[@]}")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node + npm (the tokenizer reference): some images ship NodeSource's nodejs, which bundles npm
# and conflicts with Debian's npm package, so only install them when the command is missing.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: all packages present"
