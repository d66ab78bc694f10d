#!/usr/bin/env bash
# Builds the project's images without a container daemon (buildah, vfs storage, chroot
# isolation), from a base made from Debian packages (mmdebstrap), since no container
# registry is reachable here. Users build the same Dockerfiles with docker or buildah
# and their public default bases.
#
#   tests/infra/lmms_devcluster/images.sh [operator|runner|all]   # make images: all
#
# Cached: the base under ~/.cache/lmms-operator/images, keyed by its package list; an
# image is rebuilt only when the hash of its Dockerfile, lock file and sources changed
# (the hash is the image's tag). Each stage is committed as one layer (--layers=false):
# with vfs storage every layer is a full copy of the root filesystem, and the runner's is
# about 8 GB. pip's downloads are kept in buildah's cache mount between builds. Older
# builds of an image are removed. Prints `name tag` per image on stdout.
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
  local mounts=(-v /etc/ssl/certs:/etc/ssl/certs:ro) f
  [ -f /etc/pip.conf ] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
  for f in /etc/apt/apt.conf.d/99*; do
    [ -f "$f" ] && mounts+=(-v "$f:$f:ro")
  done
  printf '%s\n' "${mounts[@]}"
}

# build NAME HASH DOCKERFILE BUILD-ARG...: builds localhost/NAME:HASH unless it exists,
# tags it NAME:0.1.0 as well, removes the older builds of NAME.
build() {
  local name="$1" hash="$2" dockerfile="$3"
  shift 3
  local tag="localhost/$name:$hash"
  if "${B[@]}" inspect --type image "$tag" >/dev/null 2>&1; then
    log "$tag is up to date"
  else
    base
    local mounts
    mapfile -t mounts < <(build_mounts)
    log "building $tag"
    local started=$SECONDS
    (cd "$REPO" && "${B[@]}" bud --quiet --isolation chroot --layers=false \
      --build-arg PYTHON_BASE="$BASE_TAG" "$@" "${mounts[@]}" \
      -f "$dockerfile" -t "$tag" .) >/dev/null
    log "built $tag in $((SECONDS - started)) s"
    # For tests/bench/images.py: what a cold build of this image took here.
    printf '%s\t%s\t%s\t%s\n' "$name" "$hash" "$((SECONDS - started))" "$(date -u +%F)" \
      >>"$CACHE/build-times.tsv"
  fi
  "${B[@]}" tag "$tag" "localhost/$name:0.1.0"
  local old
  for old in $("${B[@]}" images --noheading --format '{{.Name}}:{{.Tag}}'); do
    case "$old" in
      "$tag" | "localhost/$name:0.1.0") ;;
      "localhost/$name:"*) "${B[@]}" rmi "$old" >/dev/null 2>&1 || true ;;
    esac
  done
  echo "$name $hash"
}

# sources_hash FILE... -- DIR...: the hash of the files, pyproject.toml, README.md and
# every file under the directories (as they are in the working tree, committed or not).
sources_hash() {
  local files=() dirs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do files+=("$1"); shift; done
  shift
  dirs=("$@")
  (cd "$REPO" && { cat "${files[@]}" pyproject.toml README.md
    git ls-files -z --cached --others --exclude-standard "${dirs[@]}" |
      sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-12)
}

operator() {
  build lmms-operator "$(sources_hash operator/Dockerfile requirements/operator.txt \
    -- operator runner-image/lmms_runner)" \
    operator/Dockerfile
}

runner() {
  build lmms-operator-runner "$(sources_hash runner-image/Dockerfile \
    requirements/runner-py311.txt -- operator runner-image)" \
    runner-image/Dockerfile --build-arg CUDA_BASE="$BASE_TAG" \
    --build-arg RUNNER_LOCK=requirements/runner-py311.txt
}

case "${1:-all}" in
  operator) operator ;;
  runner) runner ;;
  all) operator && runner ;;
  *) log "unknown image ${1}: operator, runner or all"; exit 2 ;;
esac
