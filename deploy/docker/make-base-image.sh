#!/usr/bin/env bash
# Makes the Debian 12 base images of zfarm's Dockerfiles without any registry: debootstrap
# builds a root filesystem from a Debian mirror (or a local mirror of it), `docker import`
# turns it into an image. An air-gapped site has no Docker Hub, so nothing here pulls an image.
#
# Usage: deploy/docker/make-base-image.sh [--variant runtime|build|cuda] [--tag NAME:TAG]
#                                         [--mirror URL] [--cuda-debs DIR] [--docker CMD]
#   --variant runtime  (default) tag zfarm/debian:12: debootstrap's minbase, apt lists, docs and
#                      man pages removed. The runtime stages of Dockerfile.cpu start from it.
#   --variant build    tag zfarm/debian-build:12: minbase plus exactly the packages of
#                      `deploy/install-deps.sh --list build` (compiler, CMake, gRPC, libtorch, ...):
#                      the build stage of Dockerfile.cpu, which then needs no network. The
#                      image's ENV ZFARM_BASE_PACKAGES is the sha256 (16 digits) of that list, so
#                      a stale image is seen: compare it with
#                      `deploy/install-deps.sh --list build | sha256sum | cut -c1-16`.
#   --variant cuda     tag zfarm/debian-cuda:12: minbase plus the CUDA runtime from the .deb files
#                      in --cuda-debs DIR (NVIDIA's Debian 12 packages, fetched on a connected
#                      machine: apt-get download cuda-cudart-12-8 libcublas-12-8 libcudnn9-cuda-12
#                      libnccl2 cuda-nvrtc-12-8 ...), installed with dpkg; Dockerfile.cuda's base.
#   --mirror URL       the Debian mirror (default http://deb.debian.org/debian, or $DEBIAN_MIRROR)
#   --docker CMD       the docker client (default: $DOCKER, else docker)
#   --cache-dir DIR    keep the downloaded .deb files here, so that making the image again
#                      downloads nothing twice (default /var/cache/zfarm-base-image; not in the image)
# Needs root, debootstrap and a running Docker engine. Measured on 2 busy cores: 3 min (runtime),
# 21 min (build, downloads included; the .deb cache makes a remake download nothing).
# Exit status: 0 the image exists under its tag; 1 failed (nothing tagged); 2 usage.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "make-base-image: error: $*" >&2; exit 1; }
usage() { echo "make-base-image: $*" >&2; sed -n '6,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
say() { echo "make-base-image: $*" >&2; }

variant=runtime tag="" mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian} cuda_debs=""
cache=/var/cache/zfarm-base-image
docker=${DOCKER:-docker}
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) [ $# -ge 2 ] || usage "--variant needs runtime, build or cuda"; variant=$2; shift 2 ;;
    --tag) [ $# -ge 2 ] || usage "--tag needs NAME:TAG"; tag=$2; shift 2 ;;
    --mirror) [ $# -ge 2 ] || usage "--mirror needs a URL"; mirror=$2; shift 2 ;;
    --cuda-debs) [ $# -ge 2 ] || usage "--cuda-debs needs a directory"; cuda_debs=$2; shift 2 ;;
    --docker) [ $# -ge 2 ] || usage "--docker needs a command"; docker=$2; shift 2 ;;
    --cache-dir) [ $# -ge 2 ] || usage "--cache-dir needs a directory"; cache=$2; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage "unknown argument '$1'" ;;
  esac
done
case "$variant" in
  runtime) : "${tag:=zfarm/debian:12}" ;;
  build) : "${tag:=zfarm/debian-build:12}" ;;
  cuda)
    : "${tag:=zfarm/debian-cuda:12}"
    [ -n "$cuda_debs" ] || usage "--variant cuda needs --cuda-debs DIR (the CUDA runtime .deb files)"
    [ -d "$cuda_debs" ] || die "--cuda-debs $cuda_debs: not a directory"
    ls "$cuda_debs"/*.deb >/dev/null 2>&1 || die "--cuda-debs $cuda_debs: no .deb files in it"
    ;;
  *) usage "--variant '$variant': must be runtime, build or cuda" ;;
esac
[ "$(id -u)" -eq 0 ] || die "debootstrap and chroot need root"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
$docker info >/dev/null 2>&1 || die "'$docker info' failed: no running Docker engine"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/zfarm-base.XXXXXX")
root="$work/rootfs"
cleanup() {
  for m in var/cache/apt/archives proc sys dev/pts; do mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m"; done
  rm -rf "$work"
}
trap cleanup EXIT
start=$(date +%s)

say "debootstrap bookworm (minbase) from $mirror"
mkdir -p "$cache/debootstrap" "$cache/apt/partial"
cache=$(cd "$cache" && pwd)
debootstrap --variant=minbase --cache-dir="$cache/debootstrap" bookworm "$root" "$mirror" \
  > "$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (mirror $mirror)"; }

# Extra packages inside the new root: a chroot with /proc and /sys, and no service started.
chroot_apt() {
  mount -t proc proc "$root/proc"
  mount -t sysfs sys "$root/sys"
  mount --bind "$cache/apt" "$root/var/cache/apt/archives"
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  local rc=0
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@" || rc=$?
  rm -f "$root/usr/sbin/policy-rc.d"
  : > "$root/etc/resolv.conf"
  umount "$root/proc" "$root/sys" "$root/var/cache/apt/archives"
  return $rc
}
packages_sum=none
case "$variant" in
  build)
    mapfile -t pkgs < <(bash "$here/../install-deps.sh" --list build)
    packages_sum=$(printf '%s\n' "${pkgs[@]}" | sha256sum | cut -c1-16)
    say "installing the ${#pkgs[@]} build packages of deploy/install-deps.sh --list build"
    chroot_apt sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $(printf '%q ' "${pkgs[@]}")" \
      > "$work/apt.log" 2>&1 || { tail -30 "$work/apt.log" >&2; die "installing the build packages failed"; }
    ;;
  cuda)
    mkdir -p "$root/tmp/cuda-debs"
    cp "$cuda_debs"/*.deb "$root/tmp/cuda-debs/"
    say "installing $(ls "$root"/tmp/cuda-debs/*.deb | wc -l) CUDA runtime packages from $cuda_debs"
    chroot_apt sh -c 'dpkg -i /tmp/cuda-debs/*.deb && ldconfig' > "$work/apt.log" 2>&1 || {
      tail -30 "$work/apt.log" >&2; die "dpkg -i of the --cuda-debs packages failed (missing dependencies? add their .debs to $cuda_debs)"; }
    rm -rf "$root/tmp/cuda-debs"
    ;;
esac

# Slim it: no package lists, caches, docs or man pages (the runtime stages run no apt-get).
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log \
       "$root"/tmp/* "$root"/var/tmp/*
: > "$root/etc/resolv.conf"
echo "zfarm base image ($variant), debootstrap bookworm from $mirror, $(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  > "$root/etc/zfarm-base-image"

say "docker import -> $tag"
tar -C "$root" --numeric-owner -cf - . |
  $docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV ZFARM_BASE_PACKAGES=$packages_sum" \
    --change 'CMD ["/bin/bash"]' \
    --message "zfarm $variant base: debootstrap bookworm" - "$tag" >/dev/null ||
  die "docker import failed"
size=$($docker image inspect -f '{{.Size}}' "$tag")
say "$tag: $((size / 1000000)) MB, made in $(( $(date +%s) - start )) s"
echo "$tag"
