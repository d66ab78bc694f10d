#!/usr/bin/env bash
# Builds Kueue's manager from its Go module and caches it outside the repository, keyed
# by version, so only the first run pays (a few minutes; the binary is ~120 MB).
#
#   tests/infra/lmms_devcluster/build-kueue.sh   # prints the directory that holds `kueue`
#
# The module's own manifests (CRDs under config/components/crd, webhooks under
# config/components/webhook) come from the same download: the directory printed on the
# second line is the module's source, which devcluster.py reads them from.
set -euo pipefail

KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
CACHE_ROOT="${LMMS_CACHE_DIR:-$HOME/.cache/lmms-operator}"
BIN_DIR="$CACHE_ROOT/kueue-$KUEUE_VERSION/bin"
MODULE="sigs.k8s.io/kueue"

log() { echo "build-kueue: $*" >&2; }

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# The module source (manifests), downloaded once into Go's module cache.
src="$(go mod download -json "$MODULE@$KUEUE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
[ -d "$src/config/components/crd/bases" ] || { log "no CRDs in $src"; exit 1; }

if [ ! -x "$BIN_DIR/kueue" ]; then
  mkdir -p "$BIN_DIR"
  log "go install $MODULE/cmd/kueue@$KUEUE_VERSION"
  date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  tmp="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
  GOBIN="$tmp" go install -trimpath \
    -ldflags "-s -w -X $MODULE/pkg/version.GitVersion=$KUEUE_VERSION -X $MODULE/pkg/version.BuildDate=$date" \
    "$MODULE/cmd/kueue@$KUEUE_VERSION"
  mv "$tmp/kueue" "$BIN_DIR/kueue"
  rmdir "$tmp"
fi

echo "$BIN_DIR"
echo "$src"
