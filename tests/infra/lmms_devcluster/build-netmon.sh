#!/usr/bin/env bash
# Builds what the devcluster's pod network and monitoring need from their Go modules and
# caches it outside the repository, keyed by version, so only the first run pays:
#
#   - the CNI plugins bridge, host-local (IPAM) and loopback
#     (github.com/containernetworking/plugins): the process executor gives each pod a
#     network namespace of its own with an address on a bridge through them;
#   - the Prometheus Operator (github.com/prometheus-operator/prometheus-operator,
#     cmd/operator), which tests run against the devcluster;
#   - Prometheus itself (github.com/prometheus/prometheus, cmd/prometheus, the release the
#     operator's go.mod names) for the configuration the operator generates: Debian's
#     package is built without Kubernetes service discovery, which that configuration
#     uses. Built as upstream's `make plugins` does with a plugins.yml listing only the
#     kubernetes SD (file and http are always in), and without the web UI's assets (the
#     HTTP API is complete without them).
#
#   tests/infra/lmms_devcluster/build-netmon.sh       # prints the directory of the binaries
#   tests/infra/lmms_devcluster/build-netmon.sh cni   # the CNI plugins only (devcluster up)
#
# The Prometheus Operator's go.mod replaces two of its own modules (pkg/apis/monitoring,
# pkg/client) with local paths, which `go install pkg@version` refuses and which its module
# download does not hold (they are modules of their own): it is built from a copy of the
# module's source with those replaces dropped, so they come at the same version.
set -euo pipefail

CNI_PLUGINS_VERSION="${CNI_PLUGINS_VERSION:-v1.10.0}"
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
# Prometheus v3.5.0 (its Go module's versions are v0.<minor><patch>).
PROMETHEUS_MODULE_VERSION="${PROMETHEUS_MODULE_VERSION:-v0.305.0}"
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-3.5.0}"
CACHE_ROOT="${LMMS_CACHE_DIR:-$HOME/.cache/lmms-operator}"
BIN_DIR="$CACHE_ROOT/netmon-cni-$CNI_PLUGINS_VERSION-prometheus-operator-$PROMETHEUS_OPERATOR_VERSION/bin"
PROM_DIR="$CACHE_ROOT/prometheus-$PROMETHEUS_VERSION-kubernetes-sd/bin"

CNI_PLUGINS=(main/bridge main/loopback ipam/host-local)

log() { echo "build-netmon: $*" >&2; }

ONLY_CNI=0
[ "${1:-}" = cni ] && ONLY_CNI=1

complete() {
  for p in "${CNI_PLUGINS[@]}"; do
    [ -x "$BIN_DIR/$(basename "$p")" ] || return 1
  done
  [ "$ONLY_CNI" = 1 ] && return 0
  [ -x "$BIN_DIR/prometheus-operator" ] || return 1
  # The CRDs the operator needs and the example ClusterRoles, from the same module.
  [ -f "$BIN_DIR/crds/monitoring.coreos.com_prometheuses.yaml" ] && [ -d "$BIN_DIR/rbac/prometheus" ] \
    && [ -x "$BIN_DIR/prometheus" ]
}

if complete; then
  echo "$BIN_DIR"
  exit 0
fi

mkdir -p "$BIN_DIR"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

for p in "${CNI_PLUGINS[@]}"; do
  name="$(basename "$p")"
  [ -x "$BIN_DIR/$name" ] && continue
  log "go install github.com/containernetworking/plugins/plugins/$p@$CNI_PLUGINS_VERSION"
  GOBIN="$BIN_DIR" go install -trimpath \
    -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/$p@$CNI_PLUGINS_VERSION"
done

if [ "$ONLY_CNI" = 0 ] && { [ ! -x "$BIN_DIR/prometheus-operator" ] || [ ! -d "$BIN_DIR/rbac/prometheus" ]; }; then
  module="github.com/prometheus-operator/prometheus-operator"
  dir="$(go mod download -json "$module@$PROMETHEUS_OPERATOR_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  src="$CACHE_ROOT/src-prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
  if [ ! -f "$src/go.mod" ]; then
    rm -rf "$src.tmp"
    cp -r "$dir" "$src.tmp"
    chmod -R u+w "$src.tmp"
    (
      cd "$src.tmp"
      go mod edit \
        -dropreplace "$module/pkg/apis/monitoring" -dropreplace "$module/pkg/client" \
        -require "$module/pkg/apis/monitoring@$PROMETHEUS_OPERATOR_VERSION" \
        -require "$module/pkg/client@$PROMETHEUS_OPERATOR_VERSION"
      go mod download "$module/pkg/apis/monitoring" "$module/pkg/client"
      GOFLAGS=-mod=mod go list ./cmd/operator >/dev/null  # go.sum entries of the two
    )
    mv "$src.tmp" "$src"
  fi
  if [ ! -x "$BIN_DIR/prometheus-operator" ]; then
    log "go build $module/cmd/operator ($PROMETHEUS_OPERATOR_VERSION)"
    (
      cd "$src"
      GOFLAGS=-mod=mod go build -trimpath \
        -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_OPERATOR_VERSION#v} \
          -X github.com/prometheus/common/version.Revision=$PROMETHEUS_OPERATOR_VERSION \
          -X github.com/prometheus/common/version.Branch=release" \
        -o "$BIN_DIR/prometheus-operator.tmp" ./cmd/operator
    )
    mv "$BIN_DIR/prometheus-operator.tmp" "$BIN_DIR/prometheus-operator"
  fi
  mkdir -p "$BIN_DIR/crds"
  cp "$src"/example/prometheus-operator-crd/*.yaml "$BIN_DIR/crds/"
  mkdir -p "$BIN_DIR/rbac"
  cp -r "$src/example/rbac/prometheus-operator" "$src/example/rbac/prometheus" "$BIN_DIR/rbac/"
fi

if [ "$ONLY_CNI" = 0 ] && [ ! -x "$BIN_DIR/prometheus" ]; then
  if [ ! -x "$PROM_DIR/prometheus" ]; then
    module="github.com/prometheus/prometheus"
    dir="$(go mod download -json "$module@$PROMETHEUS_MODULE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
    src="$CACHE_ROOT/src-prometheus-$PROMETHEUS_VERSION"
    rm -rf "$src"
    cp -r "$dir" "$src"
    chmod -R u+w "$src"
    log "go build $module/cmd/prometheus ($PROMETHEUS_VERSION, kubernetes SD only)"
    (
      cd "$src"
      echo "- github.com/prometheus/prometheus/discovery/kubernetes" >plugins.yml
      (cd plugins && go run -tags plugins generate.go)
      mkdir -p "$PROM_DIR"
      go build -trimpath \
        -ldflags "-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION \
          -X github.com/prometheus/common/version.Revision=$PROMETHEUS_MODULE_VERSION \
          -X github.com/prometheus/common/version.Branch=release" \
        -o "$PROM_DIR/prometheus.tmp" ./cmd/prometheus
      mv "$PROM_DIR/prometheus.tmp" "$PROM_DIR/prometheus"
    )
    rm -rf "$src"
  fi
  ln -sf "$PROM_DIR/prometheus" "$BIN_DIR/prometheus"
fi

complete || { log "binaries missing in $BIN_DIR"; exit 1; }
echo "$BIN_DIR"
