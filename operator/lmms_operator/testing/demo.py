"""`make demo`: a local control plane with GPU nodes, the CRDs, and what runs on it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import devcluster

REPO = Path(__file__).resolve().parents[3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmms-demo")
    parser.add_argument("--dir", type=Path, default=devcluster.DEFAULT_DIR)
    args = parser.parse_args(argv)
    cluster = devcluster.DevCluster(args.dir.resolve())
    cluster.up()
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    print("\nNodes of the devcluster (kwok simulates gpu-node-*, the executor runs executor-0):")
    for node in nodes:
        alloc = node["status"]["allocatable"]
        print(
            f"  {node['metadata']['name']:<12} gpus={alloc.get(devcluster.GPU_RESOURCE, '0'):<3} "
            f"cpu={alloc['cpu']:<4} memory={alloc['memory']}"
        )
    print("\nCRDs installed:")
    print(cluster.kubectl("get", "crd", "-l", "app.kubernetes.io/part-of=lmms-operator"))
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    print("Stop everything with: make devcluster-down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
