"""Scale benchmark: the operator in a busy shared cluster, then a burst of new EvalRuns.

Everything on the devcluster (real API server, Job controller, scheduler; kwok nodes
simulate the runs' pods), measured in one run and written to docs/benchmarks.md:

1. **Busy-cluster restart.** Other tenants' objects fill the cluster: pods (bound to a
   node that runs nothing, so they stay as they are), Jobs (suspended: no pods) and
   finished EvalRuns (Succeeded, with results). The operator is started; EvalRuns are
   created from 5 s after its start; measured: create -> Job for each, the operator's
   CPU from 60 s to 70 s after its start, and its RSS then.
2. **Independence.** The other tenants' objects are doubled and step 1 repeated.
3. **Burst.** Create -> Job at low load (p50), then many new EvalRuns at once: the
   rate at which they are admitted (Job created, status written) against a plain
   client making the same API writes per run with the same number of threads,
   peak RSS, and the API writes per completed run (the API server's own counters).

    python tests/bench/scale.py [--pods 10000 --jobs 2000 --finished 5000] [--runs 1000]
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
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kubernetes import client, config, watch  # noqa: E402

from lmms_devcluster import devcluster  # noqa: E402
from lmms_operator import k8s  # noqa: E402
from lmms_operator.k8s.writes import Writer  # noqa: E402
from tests.bench.docs import write_section  # noqa: E402
from tests.operator_process import OperatorProcess  # noqa: E402

SECTION = "## Scale"
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")
#: Resources only the operator writes in the burst (events are counted by source).
OPERATOR_RESOURCES = ("evalruns", "leaderboards", "configmaps", "secrets")
THREADS = 8
PROBES = 11  # EvalRuns created one after another from 5 s after a restart
GROUP, VERSION = "eval.lmms.dev", "v1alpha1"
TICK = os.sysconf("SC_CLK_TCK")


# -- measuring the operator process ----------------------------------------------------------
def _proc_status(pid: int, field: str) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"{field}:\s+(\d+)", text)
    assert match, field
    return int(match.group(1)) / 1024  # MiB


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def apiserver_requests(cluster: devcluster.DevCluster) -> list[tuple[dict[str, str], float]]:
    """The API server's request counters: each series' labels and its count."""
    ctx = ssl.create_default_context(cafile=str(cluster.directory / "pki" / "ca.crt"))
    req = urllib.request.Request(
        cluster.server + "/metrics", headers={"Authorization": f"Bearer {cluster.token}"}
    )
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
        text = resp.read().decode()
    return [
        (dict(re.findall(r'(\w+)="([^"]*)"', line)), float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("apiserver_request_total{")
    ]


def request_key(labels: dict[str, str]) -> str:
    """``VERB resource[/subresource]``."""
    sub = "/" + labels["subresource"] if labels.get("subresource") else ""
    return f"{labels.get('verb')} {labels.get('resource', '')}{sub}"


def apiserver_writes(cluster: devcluster.DevCluster) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, count in apiserver_requests(cluster):
        if labels.get("verb") not in WRITE_VERBS:
            continue
        res = labels.get("resource", "")
        if res == "jobs" and labels.get("verb") != "POST":
            continue  # the Job controller writes Job status
        if res not in (*OPERATOR_RESOURCES, "jobs"):
            continue
        out[request_key(labels)] = out.get(request_key(labels), 0) + count
    return out


# -- objects ---------------------------------------------------------------------------------
def evalrun(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": {
            "model": {"type": "qwen2_vl"},
            "tasks": ["mme"],
            "resources": {"gpus": 0},
            "scheduling": {"nodeSelector": {"type": "kwok"}},
        },
    }


def finished_status(name: str) -> dict[str, Any]:
    """What a run that finished long ago holds in its status."""
    at = "2026-10-01T12:00:00Z"
    conditions = [
        {
            "type": t,
            "status": s,
            "reason": "Succeeded",
            "message": "the evaluation finished",
            "lastTransitionTime": at,
            "observedGeneration": 1,
        }
        for t, s in (
            ("Ready", "True"),
            ("Reconciling", "False"),
            ("Stalled", "False"),
            ("Suspended", "False"),
        )
    ]
    return {
        "phase": "Succeeded",
        "reason": "Succeeded",
        "message": "the evaluation finished",
        "observedGeneration": 1,
        "specHash": "0123456789",
        "jobName": f"{name}-0123456789",
        "podName": f"{name}-0123456789-abcde",
        "startTime": at,
        "completionTime": at,
        "conditions": conditions,
        "summary": "100%",
        "progress": {
            "percent": 100.0,
            "tasks": [{"name": "mme", "done": 2374, "total": 2374}],
            "phase": "done",
            "lastUpdate": at,
        },
        "results": [
            {"task": "mme", "metric": "mme_cognition_score", "value": 312.5},
            {"task": "mme_perception", "metric": "mme_perception_score", "value": 1402.1},
        ],
        "resultsConfigMap": f"{name}-0123456789-results",
    }


def other_pod(name: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": "web", "team": "other"}},
        "spec": {
            "nodeName": node,
            # The node runs nothing (no kubelet): the pods stay bound, and tolerate it.
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                },
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                },
            ],
            "containers": [
                {
                    "name": "web",
                    "image": "registry.example/team/web:1.2.3",
                    "env": [{"name": f"SETTING_{i}", "value": "x" * 20} for i in range(8)],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                }
            ],
        },
    }


def other_job(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"team": "other"}},
        "spec": {
            "suspend": True,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "batch", "image": "registry.example/batch:1"}],
                }
            },
        },
    }


def parallel(fn: Callable[[int], object], n: int, threads: int = 16) -> float:
    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, range(n)))
    return time.monotonic() - start


class Bench:
    def __init__(self, cluster: devcluster.DevCluster, work: Path) -> None:
        self.cluster = cluster
        self.work = work
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        self.co = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.namespaces: set[str] = set()
        self.probes = 0

    def namespace(self, name: str) -> str:
        if name not in self.namespaces:
            self.core.create_namespace({"metadata": {"name": name}})
            self.namespaces.add(name)
        return name

    def populate(self, tag: str, pods: int, jobs: int, finished: int) -> float:
        """Other tenants' pods and Jobs, and finished EvalRuns, in 10 namespaces each."""
        node = f"elsewhere-{tag}"
        manifest = devcluster._node_manifest(node, kwok=False, label="bench/elsewhere")
        self.core.create_node(manifest)

        def pod(i: int) -> None:
            ns = self.namespace(f"tenant-{tag}-{i % 10}")
            self.core.create_namespaced_pod(ns, other_pod(f"web-{i}", node))

        def job(i: int) -> None:
            ns = self.namespace(f"tenant-{tag}-{i % 10}")
            self.batch.create_namespaced_job(ns, other_job(f"batch-{i}"))

        def run(i: int) -> None:
            ns = self.namespace(f"history-{tag}-{i % 10}")
            name = f"old-{i}"
            self.co.create_namespaced_custom_object(GROUP, VERSION, ns, "evalruns", evalrun(name))
            self.co.patch_namespaced_custom_object_status(
                GROUP, VERSION, ns, "evalruns", name, {"status": finished_status(name)}
            )

        for i in range(10):  # namespaces first, not in the threads' race
            self.namespace(f"tenant-{tag}-{i}")
            self.namespace(f"history-{tag}-{i}")
        took = parallel(pod, pods) + parallel(job, jobs) + parallel(run, finished)
        print(f"populated {tag}: {pods} pods, {jobs} Jobs, {finished} finished runs in {took:.0f}s")
        return took

    def probe(self, namespace: str) -> float:
        """Seconds from creating an EvalRun to its Job existing."""
        self.probes += 1
        name = f"probe-{self.probes}"
        start = time.monotonic()
        self.co.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "evalruns", evalrun(name)
        )
        while not self.batch.list_namespaced_job(
            namespace, label_selector=f"eval.lmms.dev/run={name}"
        ).items:
            if time.monotonic() - start > 600:
                raise AssertionError(f"no Job for {name} in 600s")
            time.sleep(0.005)
        return time.monotonic() - start

    def restart(self, label: str, env: dict[str, str]) -> dict[str, float]:
        """Starts the operator over the cluster as it is; probes from 5 s after the start."""
        ns = self.namespace(f"probes-{label}")
        op = OperatorProcess(self.cluster, self.work / label, env=env)
        (self.work / label).mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        op.start()
        assert op.proc is not None
        pid = op.proc.pid
        time.sleep(max(0.0, started + 5 - time.monotonic()))
        latencies = []
        for _ in range(PROBES):
            latencies.append(self.probe(ns))
            time.sleep(0.5)
        first_job_after_start = 5 + latencies[0]
        time.sleep(max(0.0, started + 60 - time.monotonic()))
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(10)
        cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        figures = {
            "first_probe_s": latencies[0],
            "probe_p50_ms": statistics.median(latencies) * 1000,
            "job_after_start_s": first_job_after_start,
            "cpu_60s": cpu,
            "rss_mib": _proc_status(pid, "VmRSS"),
            "hwm_mib": _proc_status(pid, "VmHWM"),
        }
        self.op = op
        print(label, json.dumps(figures))
        return figures

    def plain(self, runs: int, patches: int, events: int) -> float:
        """A plain client making the API writes the operator makes per run, with the
        operator's own HTTP client (``lmms_operator.k8s``), in sequence, on THREADS
        threads, while the operator is stopped: create the EvalRun, a Secret, a
        ConfigMap, a Job, then ``patches`` status patches of the EvalRun (the last one
        finishes it, so that it is a record the operator ignores) and ``events`` Events
        about it. Returns runs per second."""
        ns = self.namespace("plain")
        os.environ["KUBECONFIG"] = str(self.cluster.kubeconfig)
        api = k8s.Api()
        writer = Writer(api)

        def one(i: int) -> None:
            name = f"p{i}"
            run = evalrun(name)
            run["metadata"]["namespace"] = ns
            created = api.call("POST", k8s.path("EvalRun", ns), body=run)
            owner = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "EvalRun",
                "name": name,
                "uid": created["metadata"]["uid"],
            }
            meta = {"namespace": ns, "ownerReferences": [owner]}
            writer.create(
                {
                    "kind": "Secret",
                    "metadata": {"name": f"{name}-token", **meta},
                    "stringData": {"token": "x" * 43},
                }
            )
            writer.create(
                {
                    "kind": "ConfigMap",
                    "metadata": {"name": f"{name}-config", **meta},
                    "data": {"config.json": "{}" * 400},
                }
            )
            job = json.loads(json.dumps(PLAIN_JOB))
            job["kind"] = "Job"
            job["metadata"] = {"name": name, **meta}
            writer.create(job)
            phases = ["Pending", "Running", "Succeeded"]
            for k in range(max(patches, events)):
                if k < patches:
                    phase = phases[min(k, 2)] if k < patches - 1 else "Succeeded"
                    status = (
                        finished_status(name)
                        if phase == "Succeeded"
                        else {"phase": phase, "jobName": name, "observedGeneration": 1}
                    )
                    writer.patch_evalrun_status(ns, name, status)
                if k < events:
                    writer.event(created, "Normal", "JobCreated", f"created Job {name}")

        # The same watch on the runs as during the burst, so that both put the same load
        # on the API server.
        seen = threading.Thread(target=self._follow, args=(ns, runs, {}), daemon=True)
        seen.start()
        time.sleep(1)
        took = parallel(one, runs, THREADS)
        seen.join(60)
        self.batch.delete_collection_namespaced_job(ns, propagation_policy="Background")
        return runs / took

    def _follow(self, ns: str, runs: int, marks: dict[str, float]) -> None:
        """Watches the namespace's EvalRuns until ``runs`` of them finished; marks when
        all had a Job and when all had finished."""
        admitted: set[str] = set()
        done: set[str] = set()
        w = watch.Watch()
        for event in w.stream(
            self.co.list_namespaced_custom_object,
            GROUP,
            VERSION,
            ns,
            "evalruns",
            timeout_seconds=3600,
        ):
            obj = event["object"]
            name, status = obj["metadata"]["name"], obj.get("status") or {}
            if status.get("jobName"):
                admitted.add(name)
            if status.get("phase") in ("Succeeded", "Failed"):
                done.add(name)
            if "admitted" not in marks and len(admitted) == runs:
                marks["admitted"] = time.monotonic()
            if len(done) == runs:
                marks["finished"] = time.monotonic()
                w.stop()

    def burst(self, runs: int) -> dict[str, float]:
        ns = self.namespace("bulk")
        assert self.op.proc is not None
        pid = self.op.proc.pid
        writes_before = apiserver_writes(self.cluster)

        def create(i: int) -> None:
            self.co.create_namespaced_custom_object(
                GROUP, VERSION, ns, "evalruns", evalrun(f"r{i}")
            )

        # Followed with a watch (as a dashboard would), not by listing every run again and
        # again: the API server's time goes to the operator, not to the benchmark.
        marks: dict[str, float] = {}
        peak = [0.0]

        def follow() -> None:
            self._follow(ns, runs, marks)

        def sample() -> None:
            while "finished" not in marks:
                peak[0] = max(peak[0], _proc_status(pid, "VmRSS"))
                time.sleep(0.5)

        followers = [threading.Thread(target=f, daemon=True) for f in (follow, sample)]
        for t in followers:
            t.start()
        time.sleep(1)  # the watch is open
        start = time.monotonic()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(create, range(runs)))
        for t in followers:
            t.join(3600)
        admitted_at, finished_at = marks.get("admitted"), marks.get("finished")
        assert admitted_at is not None and finished_at is not None, "runs did not finish"
        time.sleep(5)
        writes_after = apiserver_writes(self.cluster)
        events = self.core.list_namespaced_event(ns).items
        operator_events = sum(
            1 for e in events if (e.source and e.source.component == "lmms-operator")
        )
        delta = {k: writes_after.get(k, 0) - writes_before.get(k, 0) for k in writes_after}
        delta = {k: v for k, v in delta.items() if v}
        self.breakdown = ", ".join(f"{k}: {v / runs:.2f}" for k, v in sorted(delta.items()))
        self.events_per_run = operator_events / runs
        self.patches_per_run = delta.get("PATCH evalruns/status", 0) / runs
        return {
            "admit_rate": runs / (admitted_at - start),
            "finish_s": finished_at - start,
            "peak_rss_mib": max(peak[0], _proc_status(pid, "VmRSS")),
            "hwm_mib": _proc_status(pid, "VmHWM"),
            "rss_after_mib": _proc_status(pid, "VmRSS"),
            "writes_per_run": (sum(delta.values()) + operator_events) / runs,
        }


PLAIN_JOB: dict[str, Any] = {
    "metadata": {"name": ""},
    "spec": {
        "backoffLimit": 0,
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {"type": "kwok"},
                "containers": [
                    {"name": "runner", "image": "lmms-operator-runner:0.1.0", "command": ["x"]}
                ],
            }
        },
    },
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=10000)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--finished", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--single", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmms-scale-"))
    env = {"LMMS_SCRAPE_INTERVAL": "5", "LMMS_RESYNC_INTERVAL": "15"}
    with devcluster.running(work / "dc") as cluster:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        bench = Bench(cluster, work)
        # Finished pods keep their node's pod slots: enough kwok nodes for every pod.
        for i in range(math.ceil((2 * args.runs + args.single + 20) / 500)):
            node = devcluster._node_manifest(f"bench-node-{i}", kwok=True)
            node["status"]["capacity"]["pods"] = node["status"]["allocatable"]["pods"] = "500"
            bench.core.create_node(node)
        cluster.kubectl(
            "wait", "--for=condition=Ready", "node", "-l", "type=kwok", "--timeout=120s"
        )

        bench.populate("a", args.pods, args.jobs, args.finished)
        time.sleep(10)  # the control plane settles
        one = bench.restart("busy", env)
        bench.op.stop()
        bench.populate("b", args.pods, args.jobs, args.finished)
        time.sleep(10)
        two = bench.restart("doubled", env)

        single = bench.namespace("single")
        latencies = []
        for _ in range(args.single):
            latencies.append(bench.probe(single))
            time.sleep(0.2)
        p50 = statistics.median(latencies) * 1000
        burst = bench.burst(args.runs)
        bench.op.stop()
        # The same writes per run as the operator made, by a plain client, same cluster.
        patches, events = round(bench.patches_per_run), round(bench.events_per_run)
        plain_rate = bench.plain(args.runs, patches, events)

    admit_growth = two["probe_p50_ms"] / one["probe_p50_ms"] - 1
    rss_growth = two["rss_mib"] / one["rss_mib"] - 1
    n = args
    text = (
        f"{SECTION}\n\n"
        f"`python tests/bench/scale.py --pods {n.pods} --jobs {n.jobs} --finished {n.finished} "
        f"--runs {n.runs}` on {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}: the "
        "devcluster (real API server, Job controller, scheduler), kwok nodes simulating the "
        "runs' pods (no runner: no progress is scraped). Other tenants: pods bound to a node "
        "that runs nothing, suspended Jobs, and finished EvalRuns with results, spread over "
        "10 namespaces each. One run of the script; every figure below comes from it.\n\n"
        "**Busy-cluster restart**: the operator started over the cluster; EvalRuns created "
        "from 5 s after its start, one every half second.\n\n"
        "| measure | busy | doubled | target |\n|---|---:|---:|---|\n"
        f"| other pods / Jobs / finished EvalRuns | {n.pods} / {n.jobs} / {n.finished} | "
        f"{2 * n.pods} / {2 * n.jobs} / {2 * n.finished} | |\n"
        f"| first EvalRun (created 5 s after start) -> its Job | {one['first_probe_s']:.2f} s | "
        f"{two['first_probe_s']:.2f} s | <= 5 s |\n"
        f"| create -> Job, p50 of the {PROBES} EvalRuns after start | "
        f"{one['probe_p50_ms']:.0f} ms | "
        f"{two['probe_p50_ms']:.0f} ms | growth < 10% |\n"
        f"| CPU from 60 s to 70 s after start | {one['cpu_60s'] * 100:.1f}% | "
        f"{two['cpu_60s'] * 100:.1f}% | < 2% of a core |\n"
        f"| RSS 70 s after start | {one['rss_mib']:.0f} MiB | {two['rss_mib']:.0f} MiB | "
        "<= 120 MiB, growth < 10% |\n"
        f"| RSS high-water mark by then | {one['hwm_mib']:.0f} MiB | {two['hwm_mib']:.0f} MiB | |\n\n"
        f"Doubling the other tenants' objects changed the time to admit by "
        f"{admit_growth * 100:+.0f}% and the idle RSS by {rss_growth * 100:+.0f}%.\n\n"
        f"**Burst**: then {n.runs} new EvalRuns at once (created on {THREADS} threads), with "
        "the doubled tenants still there.\n\n"
        "| measure | figure | target |\n|---|---:|---|\n"
        f"| EvalRuns admitted per second (Job created, status written) | "
        f"{burst['admit_rate']:.1f}/s | >= 0.8 x plain |\n"
        f"| plain client making the operator's writes per run ({THREADS} threads) | "
        f"{plain_rate:.1f}/s | |\n"
        f"| ratio | {burst['admit_rate'] / plain_rate:.2f} | >= 0.8 |\n"
        f"| create -> Job at low load, p50 of {n.single} | {p50:.0f} ms | <= 150 ms |\n"
        f"| operator peak RSS (sampled every 0.5 s) | {burst['peak_rss_mib']:.0f} MiB | "
        "<= 200 MiB |\n"
        f"| operator RSS high-water mark since its start | {burst['hwm_mib']:.0f} MiB | |\n"
        f"| operator RSS after the runs finished | {burst['rss_after_mib']:.0f} MiB | |\n"
        f"| API writes per completed run | {burst['writes_per_run']:.1f} | <= 10 |\n\n"
        f"Writes per run by kind: {bench.breakdown}, events from the operator: "
        f"{bench.events_per_run:.2f}. The plain client (the operator's own HTTP client, "
        "the operator stopped) makes per run, in sequence: the EvalRun, a Secret, a "
        f"ConfigMap, a Job, {patches} status patches of the EvalRun, {events} Events.\n"
    )
    write_section(SECTION, text)
    print(text)
    print(
        json.dumps(
            {"busy": one, "doubled": two, "burst": burst, "plain_rate": plain_rate, "p50_ms": p50}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
