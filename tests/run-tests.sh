#!/usr/bin/env bash
# The README's test command: installs what the tests need on a clean Debian 12,
# builds everything with -Werror and runs every ctest except the `gpu` and `containers` labels.
# Usage: bash tests/run-tests.sh [extra ctest args]
set -euo pipefail
start=$(date +%s)
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
build=${ZFARM_BUILD_DIR:-build}
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DZFARM_WERROR=ON "${launcher[@]}"
cmake --build "$build" -j"$(nproc)"
rc=0
# Not the gpu label (no GPU here) nor containers (builds images for 15-30 min: run by hand,
# ctest -L containers).
(cd "$build" && ctest -LE 'gpu|containers' --output-on-failure -j"$(nproc)" --timeout 900 "$@") || rc=$?
echo "run-tests: total $(( $(date +%s) - start )) s, ctest exit $rc"
exit $rc
