"""`make demo`: the whole path on this machine, with nothing downloaded.

A local control plane with GPU nodes, the CRDs, the operator, a small model server
(OpenAI-compatible, on loopback) and a custom lmms-eval task in a ConfigMap; then an
EvalRun whose pod the process executor runs for real: the runner starts lmms-eval,
and the EvalRun's status follows it to Succeeded with the scores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from . import devcluster
from .imagestore import HOST_IMAGE

REPO = Path(__file__).resolve().parents[3]
NAMESPACE = "demo"
TASK_DIR = "/etc/lmms/tasks/colors-task"


def _start(
    argv: list[str], log: Path, env: dict[str, str] | None = None, capture: bool = False
) -> subprocess.Popen[str]:
    out = log.open("ab")
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE if capture else out,
        stderr=out,
        text=True,
        env=env,
        start_new_session=True,
    )
    out.close()
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmms-demo")
    parser.add_argument("--dir", type=Path, default=devcluster.DEFAULT_DIR)
    parser.add_argument("--samples", type=int, default=24)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tests.fixtures import colortask  # the demo's task and model are the e2e tests' own

    cluster = devcluster.DevCluster(args.dir.resolve())
    cluster.up()
    kubectl = cluster.kubectl
    kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
    print("\nNodes (kwok simulates gpu-node-*, the process executor runs executor-0):")
    for node in nodes:
        alloc = node["status"]["allocatable"]
        print(f"  {node['metadata']['name']:<12} gpus={alloc.get(devcluster.GPU_RESOURCE, '0')}")

    logs = cluster.log_dir
    env = dict(
        os.environ,
        KUBECONFIG=str(cluster.kubeconfig),
        LMMS_SCRAPE_INTERVAL="2",
        # The demo's runner runs with the devcluster's own Python environment, so that
        # `make demo` needs no image build (`make images` builds the real ones).
        LMMS_RUNNER_IMAGE=HOST_IMAGE,
    )
    model = _start(
        [
            sys.executable,
            str(REPO / "tests/fixtures/openai_server.py"),
            "--delay",
            "0.3",
            "--wrong-every",
            "6",
        ],
        logs / "demo-model.log",
        capture=True,
    )
    assert model.stdout is not None
    port = json.loads(model.stdout.readline())["port"]
    operator = _start(
        [
            sys.executable,
            "-m",
            "lmms_operator",
            "run",
            "--liveness",
            "",
            "--metrics-address",
            "127.0.0.1:0",
        ],
        logs / "operator.log",
        env,
    )
    try:
        kubectl("create", "namespace", NAMESPACE, check=False)
        files = colortask.files("colors", samples=args.samples, data_dir=TASK_DIR)
        docs: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "colors-task", "namespace": NAMESPACE}, "data": files},
            {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "model-key", "namespace": NAMESPACE,
                          "labels": {"eval.lmms.dev/usable-by-evalruns": "true"}},
             "stringData": {"key": "sk-demo-not-a-real-key"}},
            {"apiVersion": "eval.lmms.dev/v1alpha1", "kind": "EvalRun",
             "metadata": {"name": "colors-demo", "namespace": NAMESPACE},
             "spec": {
                 "model": {"type": "openai",
                           "args": {"model_version": "local",
                                    "base_url": f"http://127.0.0.1:{port}/v1",
                                    "num_concurrent": "1"},
                           "apiKey": {"secretKeyRef": {"name": "model-key", "key": "key"}}},
                 "customTasks": [{"configMap": "colors-task", "tasks": ["colors"]}],
                 "env": [{"name": "HF_HUB_OFFLINE", "value": "1"},
                         {"name": "HF_DATASETS_OFFLINE", "value": "1"}],
                 "scheduling": {"nodeSelector": {devcluster.EXECUTOR_LABEL: "true"},
                                "tolerations": [{"key": devcluster.EXECUTOR_LABEL,
                                                 "operator": "Exists"}]},
             }},
        ]  # fmt: skip
        kubectl("delete", "evalrun", "colors-demo", "-n", NAMESPACE, "--ignore-not-found")
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        print("\nkubectl get evalruns -n demo  (the runner starts lmms-eval: ~30-60 s on 2 cores)")
        last = ""
        deadline = time.monotonic() + 600
        phase = ""
        while time.monotonic() < deadline:
            out = kubectl(
                "get",
                "evalrun",
                "colors-demo",
                "-n",
                NAMESPACE,
                "--no-headers",
                "-o",
                "custom-columns=NAME:.metadata.name,PHASE:.status.phase,REASON:.status.reason,"
                "PROGRESS:.status.summary,JOB:.status.jobName",
            )
            if out != last:
                print("  " + out.strip())
                last = out
            run = json.loads(
                kubectl("get", "evalrun", "colors-demo", "-n", NAMESPACE, "-o", "json")
            )
            phase = (run.get("status") or {}).get("phase", "")
            if phase in ("Succeeded", "Failed", "Cancelled"):
                break
            time.sleep(1)
        status = run.get("status") or {}
        print(f"\nphase={phase} reason={status.get('reason')}: {status.get('message')}")
        if status.get("results"):
            print(
                "\nScores (status.results; the full results are in ConfigMap "
                f"{status.get('resultsConfigMap')}):"
            )
            for r in status["results"]:
                arrow = "higher is better" if r.get("higherIsBetter") else "lower is better"
                print(f"  {r['task']:<12} {r['metric']:<14} {r['value']:.4f}  ({arrow})")
        print("\nlmms-operator leaderboard show default -n demo")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "lmms_operator",
                "leaderboard",
                "show",
                "default",
                "-n",
                NAMESPACE,
            ],
            env=env,
            check=False,
        )
        print(
            f"\nexport KUBECONFIG={cluster.kubeconfig}   # the cluster stays up;"
            " stop it with: make devcluster-down"
        )
        return 0 if phase == "Succeeded" else 1
    finally:
        for proc in (operator, model):
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)


if __name__ == "__main__":
    sys.exit(main())
