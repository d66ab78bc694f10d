#!/usr/bin/env bash
# Builds the project's images without a container daemon (buildah, vfs storage, chroot
# isolation), from a base made from Debian packages (mmdebstrap), since no container
# registry is reachable here. Users build the same Dockerfiles with docker or buildah
# and their public default bases.
#
#   tests/infra/lmms_devcluster/images.sh [operator|runner|all]   # make images: all
#   tests/infra/lmms_devcluster/images.sh engine-vllm|engine-sglang   # make images ENGINES=vllm
#   tests/infra/lmms_devcluster/images.sh engine-stub   # the engine e2e test's stand-in
#   tests/infra/lmms_devcluster/images.sh user-check   # the runner's user on two bases
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

# The inference engines' images (spec.model.engine), each from its own lock
# (runner-image/engines/<engine>/requirements.txt, Python 3.12): large (CUDA, torch), so
# built only when asked. They need a base whose python3 is 3.12 (ENGINE_BASE, default
# NVIDIA's CUDA runtime on Ubuntu 24.04 as the Dockerfile says), which the Debian bookworm
# base made here is not.
engine() {
  local e="$1" dir="runner-image/engines/$1" extra=()
  [ -n "${ENGINE_BASE:-}" ] && extra+=(--build-arg CUDA_BASE="$ENGINE_BASE")
  build "lmms-engine-$e" "$(sources_hash -- "$dir")" \
    "$dir/Dockerfile" "${extra[@]}"
}

# The engine e2e test's stand-in engine: the loopback model server behind `vllm serve`.
engine_stub() {
  build lmms-engine-stub "$(sources_hash tests/fixtures/openai_server.py -- tests/fixtures/engine)" \
    tests/fixtures/engine/Dockerfile
}

# user-check: the runner Dockerfile's runtime stage (its packages and its user at uid and
# gid 1000) on the base above and on a variant of it that already holds uid and gid 1000,
# as Ubuntu 24.04 images hold `ubuntu` (the default CUDA base's; here also in group adm,
# so that dropping supplementary groups is checked). Both must end with one user and one
# group at 1000, both named lmms. Prints what each base held and what the stage made;
# removes the images and containers it made. `user-check full` builds the whole runner
# image on the variant only (as `make images` does on the base) and starts the runner in
# it as uid 1000.
in_image() {  # in_image IMAGE COMMAND: runs COMMAND (sh) in a container of IMAGE
  local ctr out rc=0
  ctr="$("${B[@]}" from --quiet "$1")"
  out="$("${B[@]}" run --isolation chroot "$ctr" -- sh -c "$2")" || rc=$?
  "${B[@]}" rm "$ctr" >/dev/null
  echo "$out"
  return $rc
}

user_check() {
  local full="${1:-}"
  base
  local variant="localhost/lmms-user-check:uid1000-base" ctr name i=0 held got
  local made=("$variant")
  ctr="$("${B[@]}" from --quiet "$BASE_TAG")"
  "${B[@]}" run --isolation chroot "$ctr" -- sh -c 'groupadd --gid 1000 ubuntu &&
    useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash ubuntu && usermod -aG adm ubuntu'
  "${B[@]}" commit --quiet "$ctr" "$variant" >/dev/null
  "${B[@]}" rm "$ctr" >/dev/null
  local mounts
  mapfile -t mounts < <(build_mounts)
  local ok=0
  local bases=("$BASE_TAG" "$variant") what=(--target runtime)
  if [ "$full" = full ]; then
    bases=("$variant")
    what=(--build-arg RUNNER_LOCK=requirements/runner-py311.txt)
  fi
  for name in "${bases[@]}"; do
    i=$((i + 1))
    held="$(in_image "$name" 'id 1000 2>&1 || true')"
    (cd "$REPO" && "${B[@]}" bud --quiet --isolation chroot --layers=false "${what[@]}" \
      --build-arg CUDA_BASE="$name" "${mounts[@]}" -f runner-image/Dockerfile \
      -t "localhost/lmms-user-check:runtime-$i" .) >/dev/null || { ok=1; continue; }
    made+=("localhost/lmms-user-check:runtime-$i")
    got="$(in_image "localhost/lmms-user-check:runtime-$i" \
      'id lmms; grep -h ":x:1000:" /etc/passwd /etc/group | cut -d: -f1,3,4,6,7 | tr "\n" " "')"
    echo "base $name held: $held; it made: $(echo "$got" | tr '\n' ' ')"
    if [ "$full" = full ]; then
      ctr="$("${B[@]}" from --quiet "localhost/lmms-user-check:runtime-$i")"
      "${B[@]}" run --isolation chroot --user 1000:1000 "$ctr" -- lmms-runner --help | sed -n 1p || ok=1
      "${B[@]}" rm "$ctr" >/dev/null
    fi
    case "$got" in
      "uid=1000(lmms) gid=1000(lmms) groups=1000(lmms)"*"lmms:1000:1000:/home/lmms:/usr/sbin/nologin lmms:1000: ") ;;
      *) log "FAILED on $name"; ok=1 ;;
    esac
  done
  "${B[@]}" rmi "${made[@]}" >/dev/null
  return $ok
}

case "${1:-all}" in
  operator) operator ;;
  runner) runner ;;
  all) operator && runner ;;
  engine-vllm) engine vllm ;;
  engine-sglang) engine sglang ;;
  engine-stub) engine_stub ;;
  user-check) user_check "${2:-}" ;;
  *) log "unknown image ${1}: operator, runner, all, engine-vllm, engine-sglang, engine-stub or user-check"; exit 2 ;;
esac
