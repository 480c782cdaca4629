#!/bin/sh
# zfarm air-gap bundle installer (made by deploy/make-bundle.sh; it runs from the unpacked
# bundle). Checks EVERY file against MANIFEST.sha256 and refuses to install anything when a file
# is missing, changed or not in the manifest. Then lays out PREFIX/{bin,libexec,lib,models,etc}
# atomically (staged beside PREFIX, then renamed into place).
#
# Usage: ./install.sh [--prefix DIR] [--force] [--expect-manifest-sha256 HEX] [--verify-only]
#   --prefix DIR     where to install (default /opt/zfarm)
#   --force          replace an existing installation (the old tree is kept as DIR.old)
#   --expect-manifest-sha256 HEX
#                    refuse unless MANIFEST.sha256 itself has this sha256 (the value
#                    make-bundle.sh printed, carried through a separate channel)
#   --verify-only    check the checksums and stop
# Exit status: 0 installed (or verified), 1 verification or installation failed, 2 usage.
# Needs only POSIX sh and coreutils (sha256sum, cp, mv, find); no compiler, no network.
set -eu
prefix=/opt/zfarm force=0 expect="" verify_only=0
usage() { echo "install.sh: $1" >&2; sed -n '7,13p' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || usage "--prefix needs a directory"; prefix=$2; shift 2 ;;
    --force) force=1; shift ;;
    --expect-manifest-sha256) [ $# -ge 2 ] || usage "--expect-manifest-sha256 needs a value"; expect=$2; shift 2 ;;
    --verify-only) verify_only=1; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage "unknown argument '$1'" ;;
  esac
done
refuse() { echo "install.sh: REFUSED: $*" >&2; echo "install.sh: nothing was installed." >&2; exit 1; }

cd "$(dirname "$0")"
bundle=$(pwd)
[ -f MANIFEST.sha256 ] || refuse "$bundle/MANIFEST.sha256 is missing: this is not a complete zfarm bundle"
msum=$(sha256sum MANIFEST.sha256 | cut -d' ' -f1)
echo "install.sh: MANIFEST.sha256 sha256 $msum"
if [ -n "$expect" ] && [ "$expect" != "$msum" ]; then
  refuse "MANIFEST.sha256 has sha256 $msum, expected $expect (--expect-manifest-sha256): the manifest was changed"
fi

# 1. Every file on disk must be in the manifest (nothing added).
listed=$(mktemp) present=$(mktemp)
trap 'rm -f "$listed" "$present"' EXIT
sed 's/^[0-9a-f]\{64\}  //' MANIFEST.sha256 | LC_ALL=C sort > "$listed"
find . -type f ! -name MANIFEST.sha256 | sed 's|^\./||' | LC_ALL=C sort > "$present"
extra=$(LC_ALL=C comm -13 "$listed" "$present")
[ -z "$extra" ] || refuse "files not in MANIFEST.sha256 (added after the bundle was made): $(echo "$extra" | head -5 | tr '\n' ' ')"
# 2. Every listed file must exist and match (nothing missing or changed).
if ! bad=$(sha256sum --strict -c MANIFEST.sha256 2>&1 | grep -v ': OK$'); then bad=""; fi
n=$(wc -l < MANIFEST.sha256)
if [ -n "$bad" ]; then
  echo "$bad" | head -20 >&2
  first=$(echo "$bad" | grep -m1 -oE '^[^:]+: FAILED' | sed 's/: FAILED$//' || true)
  refuse "checksum mismatch in $(echo "$bad" | grep -c ': FAILED') of $n files${first:+ (first: $first)}: the bundle is corrupt or was modified; copy it again and compare its .sha256"
fi
echo "install.sh: all $n files match MANIFEST.sha256"
[ "$verify_only" = 0 ] || exit 0

# 3. Install: stage beside the prefix, check the libraries resolve, then rename into place.
parent=$(dirname "$prefix")
mkdir -p "$parent" || refuse "cannot create $parent"
stagedir="$prefix.installing.$$"
rm -rf "$stagedir"
cp -R payload "$stagedir" || { rm -rf "$stagedir"; refuse "copy into $stagedir failed (disk full? permissions?)"; }
for b in "$stagedir"/libexec/*; do
  missing=$(LD_LIBRARY_PATH="$stagedir/lib" ldd "$b" 2>&1 | grep 'not found' || true)
  if [ -n "$missing" ]; then
    rm -rf "$stagedir"
    refuse "$(basename "$b") needs libraries this host lacks (glibc/libstdc++ too old, or the NVIDIA driver missing): $(echo "$missing" | awk '{print $1}' | tr '\n' ' ')"
  fi
done
if [ -e "$prefix" ]; then
  if [ "$force" != 1 ]; then rm -rf "$stagedir"; refuse "$prefix exists (use --force to replace it; the old tree is kept as $prefix.old)"; fi
  rm -rf "$prefix.old"
  mv "$prefix" "$prefix.old"
fi
mv "$stagedir" "$prefix"
echo "install.sh: installed into $prefix:"
echo "  bin/     $(ls "$prefix/bin" | tr '\n' ' ')"
echo "  lib/     $(ls "$prefix/lib" | wc -l) shared libraries"
echo "  models/  $(ls "$prefix/models" | tr '\n' ' ')"
echo "  etc/     zfarm.env.example, systemd/ units"
if [ -e "$prefix/bin/zfarm-worker" ]; then
  echo "install.sh: try: $prefix/bin/zfarm-worker doctor --model $prefix/models/<name> --fast"
else
  echo "install.sh: try: $prefix/bin/zfarm-scheduler --help"
fi
