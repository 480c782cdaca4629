#!/usr/bin/env bash
# Air-gap bundle: one tarball with the zfarm binaries, every non-system shared library they
# load, optionally a model folder, the deployment examples, a sha256 manifest and an install
# script that verifies every checksum before it installs anything.
#
# Usage:
#   deploy/make-bundle.sh --build-dir DIR --out FILE.tar.gz|FILE.tar.zst|FILE.tar
#                         [--model DIR [--model-name NAME]] [--extra-libs DIR]...
#                         [--binaries "zfarm zfarm-scheduler zfarm-worker"]
#   --build-dir DIR   a finished build (DIR/bin/zfarm, zfarm-scheduler, zfarm-worker)
#   --out FILE        the tarball; its compression follows the suffix (.tar.gz/.tgz: gzip,
#                     level $ZFARM_BUNDLE_GZIP_LEVEL (default 6); .tar.zst: zstd; .tar: none).
#                     FILE.sha256 is written beside it (publish it through another channel).
#   --model DIR       copy this model folder into models/NAME (default NAME: the folder's name)
#   --extra-libs DIR  also bundle every *.so* file in DIR (libraries loaded with dlopen that ldd
#                     cannot see, e.g. a CUDA libtorch's lib/ folder: cuDNN sub-libraries, nvrtc)
#   --binaries LIST   which binaries of DIR/bin to bundle (default: all three; a scheduler-only
#                     bundle: --binaries "zfarm zfarm-scheduler", no libtorch)
#
# Which libraries go in (the rule): everything `ldd` resolves for the binaries, EXCEPT
#   - the C library and its loader (glibc: ld-linux, libc, libm, libdl, libpthread, librt,
#     libresolv, libutil, libanl, libmvec, libnss_*, linux-vdso): the target must have glibc >= the
#     build host's (Debian 12: 2.36);
#   - the C++/GCC runtime (libstdc++.so.6, libgcc_s.so.1): present on every Debian/Ubuntu system,
#     needs GCC 12's (GLIBCXX_3.4.30) or newer;
#   - the NVIDIA driver (libcuda.so.1, libnvidia-*.so*, libnvcuvid): it must match the kernel
#     module, so it always comes from the host (or the NVIDIA container toolkit).
# The binaries go to libexec/; bin/ holds small launchers that put the bundle's lib/ first on
# LD_LIBRARY_PATH and exec them (no patchelf/rpath rewriting of Debian's libraries).
#
# Tarball layout (top folder zfarm-VERSION-ARCH/):
#   install.sh  MANIFEST.sha256  README.txt
#   payload/{bin,libexec,lib,models,etc}/...
# Installing: tar xf FILE && zfarm-VERSION-ARCH/install.sh --prefix /opt/zfarm
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "make-bundle: error: $*" >&2; exit 1; }
say() { echo "make-bundle: $*" >&2; }

build="" out="" model="" model_name="" binaries="zfarm zfarm-scheduler zfarm-worker"
extra_libs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build=${2:?--build-dir needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --model) model=${2:?--model needs a value}; shift 2 ;;
    --model-name) model_name=${2:?--model-name needs a value}; shift 2 ;;
    --extra-libs) extra_libs+=("${2:?--extra-libs needs a value}"); shift 2 ;;
    --binaries) binaries=${2:?--binaries needs a value}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ -n "$build" ] || die "--build-dir is required"
[ -n "$out" ] || die "--out is required"
case "$out" in
  *.tar.gz|*.tgz) compress=(gzip "-${ZFARM_BUNDLE_GZIP_LEVEL:-6}") ;;
  *.tar.zst) command -v zstd >/dev/null || die "--out $out: zstd is not installed"; compress=(zstd -q -T0 -3) ;;
  *.tar) compress=() ;;
  *) die "--out $out: the name must end in .tar.gz, .tgz, .tar.zst or .tar" ;;
esac
for b in $binaries; do
  [ -x "$build/bin/$b" ] || die "--build-dir $build: bin/$b is missing or not executable (build it first)"
done
if [ -n "$model" ]; then
  [ -d "$model" ] || die "--model $model: not a directory"
  [ -n "$model_name" ] || model_name=$(basename "$(realpath "$model")")
  case "$model_name" in */*|.*|"") die "--model-name '$model_name': a plain folder name is required" ;; esac
fi
for d in "${extra_libs[@]+"${extra_libs[@]}"}"; do [ -d "$d" ] || die "--extra-libs $d: not a directory"; done

first_bin=$(set -- $binaries; echo "$1")
version=$("$build/bin/$first_bin" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+[^ ]*' | head -1 || true)
[ -n "$version" ] || version=0.0.0
arch=$(uname -m)
name="zfarm-$version-$arch"

# The exclusion rule above, as one regular expression on the library's file name.
system_re='^(linux-vdso|linux-gate|ld-linux[^/]*|libc|libm|libdl|libpthread|librt|libresolv|libutil|libanl|libmvec|libBrokenLocale|libnss_[a-z0-9]+|libthread_db|libstdc\+\+|libgcc_s|libcuda|libnvidia-[a-z0-9-]+|libnvcuvid)\.so(\.[0-9.]+)?$'

stage=$(mktemp -d "${TMPDIR:-/tmp}/zfarm-bundle.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
p="$root/payload"
mkdir -p "$p/bin" "$p/libexec" "$p/lib" "$p/etc/systemd" "$p/models"

# Binaries and launchers.
for b in $binaries; do
  cp "$build/bin/$b" "$p/libexec/$b"
  cat > "$p/bin/$b" <<LAUNCH
#!/bin/sh
# zfarm bundle launcher: run libexec/$b with the bundle's shared libraries first.
d=\$(dirname "\$(readlink -f "\$0")")/..
LD_LIBRARY_PATH="\$d/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$d/libexec/$b" "\$@"
LAUNCH
  chmod 0755 "$p/bin/$b"
done

# Shared libraries: ldd's transitive closure minus the system set.
nlibs=0
declare -A seen=()
for b in $binaries; do
  ldd_out=$(ldd "$build/bin/$b") || die "ldd $build/bin/$b failed"
  if grep -q 'not found' <<<"$ldd_out"; then
    die "$build/bin/$b: libraries not found on this machine: $(grep 'not found' <<<"$ldd_out" | awk '{print $1}' | tr '\n' ' ')"
  fi
  while read -r soname path; do
    [ -n "$path" ] || continue
    [[ "$soname" =~ $system_re ]] && continue
    [ -n "${seen[$soname]:-}" ] && continue
    seen[$soname]=1
    cp -L "$path" "$p/lib/$soname"
    nlibs=$((nlibs + 1))
  done < <(awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' <<<"$ldd_out")
done
for d in "${extra_libs[@]+"${extra_libs[@]}"}"; do
  for f in "$d"/*.so*; do
    [ -f "$f" ] || continue
    soname=$(basename "$f")
    [[ "$soname" =~ $system_re ]] && continue
    [ -n "${seen[$soname]:-}" ] && continue
    seen[$soname]=1
    cp -L "$f" "$p/lib/$soname"
    nlibs=$((nlibs + 1))
  done
done
chmod 0644 "$p"/lib/* 2>/dev/null || true

# Model folder (optional), configuration examples.
if [ -n "$model" ]; then
  cp -a "$model" "$p/models/$model_name"
fi
cp "$here/systemd/zfarm-scheduler.service" "$here/systemd/zfarm-worker@.service" \
   "$here/systemd/zfarm-outputs-cleanup.service" "$here/systemd/zfarm-outputs-cleanup.timer" \
   "$here/systemd/network-allowlist.conf.example" "$p/etc/systemd/"
cp "$here/systemd/zfarm.env" "$p/etc/zfarm.env.example"

cat > "$root/README.txt" <<README
zfarm $version ($arch) air-gap bundle, made $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME").

Install (verifies every file's sha256 first; refuses on any mismatch):
  ./install.sh --prefix /opt/zfarm
Then: /opt/zfarm/bin/zfarm-scheduler --help, /opt/zfarm/bin/zfarm-worker serve --help,
systemd units and an example configuration in /opt/zfarm/etc/ (see the operations guide,
deploy/README.md in the source tree).
Requirements on the target: x86-64 Linux, glibc >= $(ldd --version | head -1 | grep -oE '[0-9]+\.[0-9]+$'),
libstdc++ from GCC >= 12, and for CUDA builds the NVIDIA driver.
Libraries: $nlibs bundled in lib/ (everything ldd resolves except glibc, libstdc++/libgcc_s
and the NVIDIA driver).$( [ -n "$model" ] && printf '\nModel: models/%s' "$model_name")
README

cp "$here/bundle-install.sh" "$root/install.sh"
chmod 0755 "$root/install.sh"

# Manifest: every file except the manifest itself, paths relative to the bundle root.
(cd "$root" && find . -type f ! -name MANIFEST.sha256 -printf '%P\n' | LC_ALL=C sort |
   xargs -d '\n' sha256sum > MANIFEST.sha256)
nfiles=$(wc -l < "$root/MANIFEST.sha256")

# Tarball (temp file + rename: never a half-written bundle under the final name).
mkdir -p "$(dirname "$out")"
tmp_out="$out.tmp.$$"
if [ ${#compress[@]} -gt 0 ]; then
  tar -C "$stage" --owner=0 --group=0 -cf - "$name" | "${compress[@]}" > "$tmp_out"
else
  tar -C "$stage" --owner=0 --group=0 -cf "$tmp_out" "$name"
fi
mv -f "$tmp_out" "$out"
(cd "$(dirname "$out")" && sha256sum "$(basename "$out")") > "$out.sha256.tmp.$$"
mv -f "$out.sha256.tmp.$$" "$out.sha256"
manifest_sum=$(sha256sum "$root/MANIFEST.sha256" | cut -d' ' -f1)
say "wrote $out ($(du -h "$out" | cut -f1), $nfiles files, $nlibs libraries$( [ -n "$model" ] && echo ", model $model_name"))"
say "tarball sha256: $(cut -d' ' -f1 "$out.sha256") (also in $out.sha256)"
say "MANIFEST.sha256 sha256: $manifest_sum (install.sh prints it; compare it out of band)"
echo "$out"
