#!/usr/bin/env bash
# Builds the control-plane binaries the devcluster needs from their Go modules and
# caches them outside the repository, keyed by version, so only the first run pays.
#
#   hack/build-k8s.sh            # prints the directory that holds the binaries
#
# k8s.io/kubernetes cannot be `go install`ed directly: its go.mod requires every
# staging module at v0.0.0 with local replace lines. A wrapper module requires it at
# a pinned release and replaces each staging module with the matching v0.<minor>.<patch>.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${HELM_VERSION:-v3.19.0}"
CACHE_ROOT="${LMMS_CACHE_DIR:-$HOME/.cache/lmms-operator}"
BIN_DIR="$CACHE_ROOT/k8s-$K8S_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION/bin"

K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
STAGING=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
  cloud-provider cluster-bootstrap code-generator component-base component-helpers
  controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
  endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
  kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
  sample-apiserver sample-cli-plugin sample-controller)

log() { echo "build-k8s: $*" >&2; }

complete() {
  for b in "${K8S_BINARIES[@]}" kwok helm; do
    [ -x "$BIN_DIR/$b" ] || return 1
  done
  [ -f "$BIN_DIR/.helm-ldflags-$HELM_VERSION" ]
}

if complete; then
  echo "$BIN_DIR"
  exit 0
fi

mkdir -p "$BIN_DIR"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

if [ ! -x "$BIN_DIR/kwok" ]; then
  log "go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  GOBIN="$BIN_DIR" go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
fi
# Helm with the ldflags of upstream's release builds: without the Kubernetes version of
# its client-go, `helm template` assumes v1.20 and refuses charts that need newer.
# (A helm built before this has no stamp and is rebuilt.)
HELM_STAMP="$BIN_DIR/.helm-ldflags-$HELM_VERSION"
if [ ! -x "$BIN_DIR/helm" ] || [ ! -f "$HELM_STAMP" ]; then
  gomod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  client_go="$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod")"  # v0.34.0
  k8s_minor="$(echo "$client_go" | cut -d. -f2)"
  k8s_major="$(( $(echo "${client_go#v}" | cut -d. -f1) + 1 ))"
  log "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION (Kubernetes $k8s_major.$k8s_minor)"
  GOBIN="$BIN_DIR" go install -ldflags "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$k8s_major \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$k8s_major \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  touch "$HELM_STAMP"
fi

need_k8s=0
for b in "${K8S_BINARIES[@]}"; do [ -x "$BIN_DIR/$b" ] || need_k8s=1; done
if [ "$need_k8s" = 1 ]; then
  minor_patch="${K8S_VERSION#v1.}"
  major=1
  minor="${minor_patch%%.*}"
  wrapper="$CACHE_ROOT/wrapper-$K8S_VERSION"
  mkdir -p "$wrapper"
  {
    echo "module lmms.dev/k8s-wrapper"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    for m in "${STAGING[@]}"; do
      echo "replace k8s.io/$m => k8s.io/$m v0.$minor_patch"
    done
  } >"$wrapper/go.mod"
  cat >"$wrapper/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
  cd "$wrapper"
  log "resolving modules for k8s.io/kubernetes $K8S_VERSION"
  go mod tidy >&2
  go mod download k8s.io/kubernetes
  commit="$(go list -m -json k8s.io/kubernetes | sed -n 's/.*"Version": "\(.*\)".*/\1/p')"
  date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date -X $pkg.gitCommit=$commit"
  done
  for b in "${K8S_BINARIES[@]}"; do
    [ -x "$BIN_DIR/$b" ] && continue
    log "go build k8s.io/kubernetes/cmd/$b ($K8S_VERSION)"
    go build -trimpath -ldflags "-s -w $ldflags" -o "$BIN_DIR/$b.tmp" "k8s.io/kubernetes/cmd/$b"
    mv "$BIN_DIR/$b.tmp" "$BIN_DIR/$b"
  done
fi

complete || { log "binaries missing in $BIN_DIR"; exit 1; }
echo "$BIN_DIR"
