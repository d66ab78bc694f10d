#!/usr/bin/env bash
# Builds the project's images without a container daemon (buildah, vfs storage, chroot
# isolation), from a base made from Debian packages (mmdebstrap), since no container
# registry is reachable here. Users build the same Dockerfiles with docker or buildah
# and their public default bases.
#
#   tests/infra/lmms_devcluster/images.sh operator      # make images
#
# Cached: the base under ~/.cache/lmms-operator/images, keyed by its package list; an
# image is rebuilt only when the hash of its Dockerfile, lock file and sources changed
# (the hash is the image's tag).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../../.." && pwd)"
CACHE="${LMMS_CACHE_DIR:-$HOME/.cache/lmms-operator}/images"
B=(buildah --storage-driver vfs)
BASE_PACKAGES="python3,python3-venv,ca-certificates,passwd"
BASE_TAG="localhost/lmms-base-python:bookworm-$(echo "$BASE_PACKAGES" | sha256sum | cut -c1-12)"

log() { echo "images: $*" >&2; }

for tool in buildah mmdebstrap; do
  command -v "$tool" >/dev/null || { log "$tool is needed: apt-get install buildah mmdebstrap"; exit 1; }
done
mkdir -p "$CACHE"

base() {
  if "${B[@]}" inspect --type image "$BASE_TAG" >/dev/null 2>&1; then
    return
  fi
  local tarball="$CACHE/${BASE_TAG##*:}.tar"
  if [ ! -f "$tarball" ]; then
    log "mmdebstrap --variant=minbase bookworm ($BASE_PACKAGES)"
    mmdebstrap --quiet --format=tar --variant=minbase --include="$BASE_PACKAGES" bookworm \
      "$tarball.tmp"
    mv "$tarball.tmp" "$tarball"
  fi
  local ctr mnt
  ctr="$("${B[@]}" from scratch)"
  mnt="$("${B[@]}" mount "$ctr")"
  tar -xf "$tarball" -C "$mnt"
  ln -sf python3 "$mnt/usr/bin/python"  # python:3.11-slim has `python`
  "${B[@]}" umount "$ctr" >/dev/null
  "${B[@]}" commit --quiet "$ctr" "$BASE_TAG" >/dev/null
  "${B[@]}" rm "$ctr" >/dev/null
}

# The build host's package-index settings (a CA bundle, pip's config) reach RUN steps.
build_mounts() {
  local mounts=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
  [ -f /etc/pip.conf ] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
  printf '%s\n' "${mounts[@]}"
}

operator() {
  local hash
  hash="$(cd "$REPO" && cat operator/Dockerfile requirements/operator.txt pyproject.toml README.md \
    <(git ls-files -s operator runner-image/lmms_runner) | sha256sum | cut -c1-12)"
  local tag="localhost/lmms-operator:$hash"
  if "${B[@]}" inspect --type image "$tag" >/dev/null 2>&1; then
    log "$tag is up to date"
  else
    base
    mapfile -t mounts < <(build_mounts)
    log "building $tag"
    (cd "$REPO" && "${B[@]}" bud --quiet --isolation chroot --layers=false \
      --build-arg PYTHON_BASE="$BASE_TAG" "${mounts[@]}" \
      -f operator/Dockerfile -t "$tag" .) >/dev/null
  fi
  "${B[@]}" tag "$tag" localhost/lmms-operator:0.1.0
  echo "$tag"
}

case "${1:-operator}" in
  operator) operator ;;
  *) log "unknown image ${1}: operator"; exit 2 ;;
esac
