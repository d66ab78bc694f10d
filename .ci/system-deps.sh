#!/usr/bin/env bash
# Debian packages the tests and the demo need. Installs only what is missing.
set -euo pipefail
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v unshare >/dev/null || need+=(util-linux)
command -v prometheus >/dev/null || need+=(prometheus)
command -v openssl >/dev/null || need+=(openssl)
command -v lua5.1 >/dev/null || need+=(lua5.1)
# The executor's pod network (network namespaces on a bridge, the real CNI plugins).
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v sysctl >/dev/null || need+=(procps)
# make images: buildah (vfs storage, chroot isolation: no daemon) and mmdebstrap (the
# base images, from Debian packages).
command -v buildah >/dev/null || need+=(buildah)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v go >/dev/null || { echo "Go is required to build the Kubernetes binaries (or set KUBEBUILDER_ASSETS)" >&2; }
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${need[*]} (run: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
