"""Scale benchmark: many EvalRuns on the devcluster, their pods simulated by kwok.

Measured in one run and written to docs/benchmarks.md:
- EvalRuns admitted per second (Job created and status written) against a plain client
  creating the same Jobs directly;
- time from create to Job for single runs at low load (p50);
- the operator's peak RSS with all runs present;
- API writes per completed run, from the API server's own apiserver_request_total.

    python tests/bench/scale.py [--runs 1000] [--single 20]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kubernetes import client, config  # noqa: E402

from lmms_devcluster import devcluster  # noqa: E402
from tests.bench.docs import write_section  # noqa: E402
from tests.operator_process import OperatorProcess  # noqa: E402

SECTION = "## Scale"
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")
#: Resources only the operator writes in this benchmark (events are counted by source).
OPERATOR_RESOURCES = ("evalruns", "leaderboards", "configmaps", "secrets")


def apiserver_writes(cluster: devcluster.DevCluster) -> dict[str, float]:
    ctx = ssl.create_default_context(cafile=str(cluster.directory / "pki" / "ca.crt"))
    req = urllib.request.Request(
        cluster.server + "/metrics", headers={"Authorization": f"Bearer {cluster.token}"}
    )
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("verb") not in WRITE_VERBS:
            continue
        res = labels.get("resource", "")
        if res == "jobs" and labels.get("verb") != "POST":
            continue  # the Job controller writes Job status
        if res not in (*OPERATOR_RESOURCES, "jobs"):
            continue
        key = f"{labels['verb']} {res}{'/' + labels['subresource'] if labels.get('subresource') else ''}"
        out[key] = out.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return out


def evalrun(name: str) -> dict[str, object]:
    return {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": {
            "model": {"type": "qwen2_vl"},
            "tasks": ["mme"],
            "resources": {"gpus": 0},
            "scheduling": {"nodeSelector": {"type": "kwok"}},
            "leaderboard": None,
        },
    }


def plain_job(name: str) -> dict[str, object]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"type": "kwok"},
                    "containers": [
                        {
                            "name": "runner",
                            "image": "lmms-operator-runner:0.1.0",
                            "command": ["lmms-runner"],
                        }
                    ],
                }
            },
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--single", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmms-scale-"))
    with devcluster.running(work / "dc") as cluster:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        op = OperatorProcess(
            cluster, work, env={"LMMS_SCRAPE_INTERVAL": "5", "LMMS_RESYNC_INTERVAL": "15"}
        )
        op.start()
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        co, batch, core = (
            client.CustomObjectsApi(api),
            client.BatchV1Api(api),
            client.CoreV1Api(api),
        )
        for ns in ("single", "bulk", "plain"):
            core.create_namespace({"metadata": {"name": ns}})
        # Finished pods keep their node's pod slots: enough kwok nodes for every pod of
        # the run (the devcluster's two GPU nodes hold 110 pods each).
        extra = math.ceil((2 * args.runs + args.single) / 500)
        for i in range(extra):
            node = devcluster._node_manifest(f"bench-node-{i}", kwok=True)
            node["status"]["capacity"]["pods"] = node["status"]["allocatable"]["pods"] = "500"
            core.create_node(node)
        cluster.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=120s")
        time.sleep(2)

        # 1. create -> Job at low load.
        latencies = []
        for i in range(args.single):
            name = f"s{i}"
            start = time.monotonic()
            co.create_namespaced_custom_object(
                "eval.lmms.dev", "v1alpha1", "single", "evalruns", evalrun(name)
            )
            while not batch.list_namespaced_job(
                "single", label_selector=f"eval.lmms.dev/run={name}"
            ).items:
                time.sleep(0.005)
            latencies.append(time.monotonic() - start)
            time.sleep(0.2)
        p50 = statistics.median(latencies) * 1000

        # 2. plain client creating the same number of Jobs.
        def create_job(i: int) -> None:
            batch.create_namespaced_job("plain", plain_job(f"p{i}"))

        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create_job, range(args.runs)))
        plain_rate = args.runs / (time.monotonic() - start)
        # Their finished pods would still fill the kwok nodes' pod slots.
        batch.delete_collection_namespaced_job("plain", propagation_policy="Background")
        while core.list_namespaced_pod("plain", limit=1).items:
            time.sleep(1)

        # 3. EvalRuns admitted: Job created and status written.
        writes_before = apiserver_writes(cluster)

        def create_run(i: int) -> None:
            co.create_namespaced_custom_object(
                "eval.lmms.dev", "v1alpha1", "bulk", "evalruns", evalrun(f"r{i}")
            )

        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create_run, range(args.runs)))
        admitted_at = None
        finished_at = None
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            items = co.list_namespaced_custom_object(
                "eval.lmms.dev", "v1alpha1", "bulk", "evalruns"
            )["items"]
            with_job = sum(1 for r in items if (r.get("status") or {}).get("jobName"))
            done = sum(
                1 for r in items if (r.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            )
            if admitted_at is None and with_job == args.runs:
                admitted_at = time.monotonic()
            if done == args.runs:
                finished_at = time.monotonic()
                break
            time.sleep(1)
        assert admitted_at is not None and finished_at is not None, "runs did not finish"
        admit_rate = args.runs / (admitted_at - start)
        rss_kib = int(
            re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{op.proc.pid}/status").read_text()).group(1)
        )  # type: ignore[union-attr]
        time.sleep(5)
        rss_now_kib = int(
            re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{op.proc.pid}/status").read_text()).group(1)
        )  # type: ignore[union-attr]
        writes_after = apiserver_writes(cluster)
        events = core.list_namespaced_event("bulk").items
        operator_events = sum(
            1 for e in events if (e.source and e.source.component == "lmms-operator")
        )
        delta = {k: writes_after.get(k, 0) - writes_before.get(k, 0) for k in writes_after}
        delta = {k: v for k, v in delta.items() if v}
        per_run = (sum(delta.values()) + operator_events) / args.runs
        reach = sum(1 for e in events if e.reason == "RunnerUnreachable")
        op.stop()

    breakdown = ", ".join(f"{k}: {v / args.runs:.2f}" for k, v in sorted(delta.items()))
    text = (
        f"{SECTION}\n\n"
        f"`python tests/bench/scale.py --runs {args.runs} --single {args.single}` on "
        f"{os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}; the devcluster, its kwok "
        "nodes simulating the pods (no runner: no progress is scraped).\n\n"
        "| measure | figure | target |\n|---|---:|---|\n"
        f"| EvalRuns admitted per second (Job created, status written) | {admit_rate:.1f}/s | "
        f">= half the plain rate |\n"
        f"| plain client creating the same Jobs | {plain_rate:.1f}/s | |\n"
        f"| create -> Job at low load, p50 of {args.single} | {p50:.0f} ms | <= 150 ms |\n"
        f"| operator peak RSS with {args.runs} runs present | {rss_kib / 1024:.0f} MiB | "
        "<= 150 MiB |\n"
        f"| operator RSS after they finished | {rss_now_kib / 1024:.0f} MiB | |\n"
        f"| API writes per completed run | {per_run:.1f} | <= 12 |\n\n"
        f"Writes per run by kind: {breakdown}, events from the operator: "
        f"{operator_events / args.runs:.2f} (of which RunnerUnreachable: "
        f"{reach / args.runs:.2f}, since kwok pods serve no /progress).\n"
    )
    write_section(SECTION, text)
    print(text)
    print(
        json.dumps(
            {
                "admit_rate": admit_rate,
                "plain_rate": plain_rate,
                "p50_ms": p50,
                "rss_mib": rss_kib / 1024,
                "rss_after_mib": rss_now_kib / 1024,
                "writes_per_run": per_run,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
