"""Campaign benchmark: 300 EvalRuns of mixed sizes behind the real Kueue, against the same
campaign as plain Kueue-managed Jobs with no operator.

Everything on the devcluster: the real API server, Job controller, scheduler and Kueue
(v0.17, built from its Go module). Eight kwok nodes of 8 GPUs (a second kwok, whose pod
stages finish each pod after the duration its run's name carries) behind one ClusterQueue
of 64 GPUs; other tenants' pods and Jobs and finished EvalRuns fill the cluster as in
scale.py. The runs ask for 1, 2, 4 or 8 GPUs and last 5 to 25 s (seeded, the same in both
campaigns). Measured, for each campaign:

- the makespan: from the first object created to the last pod finished, against the lower
  bound (the GPU-seconds over the 64 GPUs, or the longest run if that is longer);
- the gap: for each run that had to wait for quota, from the last pod finish before its pod
  started to that start (median and p90): Kueue's admission, the Job controller, the
  scheduler and, for EvalRuns, the operator between them;
- for the operator campaign, the operator's CPU seconds and peak RSS.

    python tests/bench/kueue_campaign.py [--runs 300] [--write]

Targets (issue 31): operator makespan <= 1.05x the plain Jobs' makespan; median gap <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kubernetes import client, config, watch  # noqa: E402

from lmms_devcluster import devcluster  # noqa: E402
from tests.bench.docs import write_section  # noqa: E402
from tests.bench.scale import (  # noqa: E402
    GROUP,
    VERSION,
    Bench,
    _proc_status,
    apiserver_requests,
    cpu_seconds,
    request_key,
)
from tests.operator_process import OperatorProcess  # noqa: E402

SECTION = "## Campaign behind Kueue"
KUEUE = ("kueue.x-k8s.io", "v1beta2")
NODES = 8
GPUS = devcluster.GPUS_PER_NODE
POOL_LABEL = "bench.lmms.dev/pool"
RUN_LABEL = "eval.lmms.dev/run"
SIZES = (1, 2, 4, 8)
QUEUE = "campaign"

#: kwok pod stages for the campaign's nodes: Running at once, then Succeeded after the
#: seconds that the run's name ends with ("...-d17" finishes 17 s after it started).
STAGES = f"""
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: pod-ready}}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - {{key: .metadata.deletionTimestamp, operator: DoesNotExist}}
    - {{key: .status.podIP, operator: DoesNotExist}}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "True", type: Initialized}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "True", type: Ready}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "True", type: ContainersReady}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: true
        restartCount: 0
        state: {{running: {{startedAt: {{{{ $now | Quote }}}}}}}}
      {{{{ end }}}}
      hostIP: {{{{ NodeIPWith .spec.nodeName | Quote }}}}
      podIP: {{{{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}}}
      phase: Running
      startTime: {{{{ $now | Quote }}}}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: pod-complete}}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - {{key: .metadata.deletionTimestamp, operator: DoesNotExist}}
    - {{key: .status.phase, operator: In, values: [Running]}}
    - {{key: '.metadata.ownerReferences.[].kind', operator: In, values: [Job]}}
  delay:
    durationMilliseconds: 1000
    durationFrom:
      jq:
        expression: '.metadata.labels["{RUN_LABEL}"] | capture("-d(?<s>[0-9]+)$") | .s + "s"'
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated: {{exitCode: 0, finishedAt: {{{{ $now | Quote }}}}, reason: Completed, startedAt: {{{{ $now | Quote }}}}}}
      {{{{ end }}}}
      phase: Succeeded
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: pod-delete}}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - {{key: .metadata.deletionTimestamp, operator: Exists}}
  next:
    finalizers: {{empty: true}}
    delete: true
"""


def campaign(runs: int, seed: int) -> list[tuple[str, int, int]]:
    """(name, gpus, seconds) for each run: sizes 1/2/4/8 equally likely, 5 to 25 s."""
    rng = random.Random(seed)
    out = []
    for i in range(runs):
        gpus = rng.choice(SIZES)
        seconds = rng.randint(5, 25)
        out.append((f"c{i:03d}-g{gpus}-d{seconds}", gpus, seconds))
    return out


def lower_bound(plan: list[tuple[str, int, int]]) -> float:
    gpu_seconds = sum(g * s for _, g, s in plan)
    return max(gpu_seconds / (NODES * GPUS), max(s for _, _, s in plan))


def evalrun(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": {
            # A 7B model fits on one GPU: one process per GPU (spec.model.multiGPU).
            "model": {"type": "qwen2_vl", "multiGPU": "DataParallel"},
            "tasks": ["mme"],
            "resources": {"gpus": gpus},
            "scheduling": {"queueName": QUEUE},
        },
    }


def plain_job(name: str, template: dict[str, Any]) -> dict[str, Any]:
    """A Job with the pod the operator renders for a run of that size (its requests,
    image and command), labelled like a run's pods, queued in the same LocalQueue."""
    pod = json.loads(json.dumps(template))
    pod.setdefault("metadata", {}).setdefault("labels", {})[RUN_LABEL] = name
    return {
        "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": QUEUE}},
        "spec": {"suspend": True, "backoffLimit": 0, "template": pod},
    }


class Recorder:
    """Watches a namespace's pods; records when each run's pod first ran and finished."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        rv = None
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                kwargs: dict[str, Any] = {"timeout_seconds": 30}
                if rv:
                    kwargs["resource_version"] = rv
                for ev in w.stream(self.core.list_namespaced_pod, self.namespace, **kwargs):
                    now = time.monotonic()
                    pod = ev["object"]
                    rv = pod.metadata.resource_version
                    run = (pod.metadata.labels or {}).get(RUN_LABEL)
                    if not run:
                        continue
                    phase = pod.status.phase if pod.status else None
                    if phase in ("Running", "Succeeded") and run not in self.started:
                        self.started[run] = now
                    if phase == "Succeeded" and run not in self.finished:
                        self.finished[run] = now
                    if self._stop.is_set():
                        break
            except Exception:  # a benchmark's watch: list again
                rv = None
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()


def gaps(rec: Recorder, t0: float) -> list[float]:
    """For each run that started after the first finish: its start minus the last finish
    before it (a run admitted at once, in the first wave, waited for nothing)."""
    finishes = sorted(rec.finished.values())
    out = []
    for start in rec.started.values():
        before = [f for f in finishes if f <= start]
        if before:
            out.append(start - before[-1])
    return out


def setup_cluster(cluster: devcluster.DevCluster, work: Path) -> subprocess.Popen[bytes]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    core = client.CoreV1Api(api)
    for i in range(NODES):
        node = devcluster._node_manifest(f"campaign-{i}", kwok=True)
        node["metadata"]["annotations"]["kwok.x-k8s.io/node"] = "campaign"
        node["metadata"]["labels"][POOL_LABEL] = "campaign"
        node["metadata"]["labels"].pop("type")
        core.create_node(node)
    stages = work / "stages.yaml"
    stages.write_text(STAGES)
    binaries = devcluster.find_binaries()
    log = open(work / "kwok-campaign.log", "ab")  # noqa: SIM115 - owned by the child
    kwok = subprocess.Popen(
        [
            binaries["kwok"],
            f"--kubeconfig={cluster.kubeconfig}",
            f"--config={stages}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=campaign",
            "--cidr=127.2.0.1/16",
            "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{devcluster.free_port()}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "KUBE_FEATURE_WatchListClient": "false"},
    )
    cluster.kubectl(
        "wait", "--for=condition=Ready", "node", "-l", f"{POOL_LABEL}=campaign", "--timeout=120s"
    )
    objs = client.CustomObjectsApi(api)
    objs.create_cluster_custom_object(
        *KUEUE,
        "resourceflavors",
        {
            "apiVersion": "/".join(KUEUE),
            "kind": "ResourceFlavor",
            "metadata": {"name": "campaign-gpu"},
            "spec": {"nodeLabels": {POOL_LABEL: "campaign"}},
        },
    )
    quota = {"cpu": NODES * 32, "memory": f"{NODES * 256}Gi", devcluster.GPU_RESOURCE: NODES * GPUS}
    objs.create_cluster_custom_object(
        *KUEUE,
        "clusterqueues",
        {
            "apiVersion": "/".join(KUEUE),
            "kind": "ClusterQueue",
            "metadata": {"name": "campaign"},
            "spec": {
                "namespaceSelector": {"matchLabels": {"bench.lmms.dev/campaign": "true"}},
                "queueingStrategy": "BestEffortFIFO",
                "resourceGroups": [
                    {
                        "coveredResources": list(quota),
                        "flavors": [
                            {
                                "name": "campaign-gpu",
                                "resources": [
                                    {"name": k, "nominalQuota": v} for k, v in quota.items()
                                ],
                            }
                        ],
                    }
                ],
            },
        },
    )
    return kwok


def prepare_namespace(api: client.ApiClient, name: str) -> None:
    client.CoreV1Api(api).create_namespace(
        {"metadata": {"name": name, "labels": {"bench.lmms.dev/campaign": "true"}}}
    )
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        *KUEUE,
        name,
        "localqueues",
        {
            "apiVersion": "/".join(KUEUE),
            "kind": "LocalQueue",
            "metadata": {"name": QUEUE},
            "spec": {"clusterQueue": "campaign"},
        },
    )


def api_requests(cluster: devcluster.DevCluster) -> dict[str, float]:
    """The API server's request counters, by verb and resource (watches left out)."""
    out: dict[str, float] = {}
    for labels, count in apiserver_requests(cluster):
        if labels.get("verb") not in ("WATCH", "CONNECT"):
            out[request_key(labels)] = out.get(request_key(labels), 0) + count
    return out


def control_plane_cpu(cluster: devcluster.DevCluster) -> float:
    """CPU seconds of the API server and etcd so far."""
    pids = json.loads(cluster.state_file.read_text())["pids"]
    return sum(cpu_seconds(pids[n]) for n in ("kube-apiserver", "etcd"))


class Load:
    """The API server's requests and its and etcd's CPU over a campaign."""

    def __init__(self, cluster: devcluster.DevCluster) -> None:
        self.cluster = cluster
        self.requests = api_requests(cluster)
        self.cpu = control_plane_cpu(cluster)

    def done(self, runs: int) -> dict[str, Any]:
        after = api_requests(self.cluster)
        delta = {k: v - self.requests.get(k, 0) for k, v in after.items()}
        top = sorted(((v, k) for k, v in delta.items() if v > 0), reverse=True)[:8]
        return {
            "requests_per_run": sum(delta.values()) / runs,
            "control_plane_cpu_s": control_plane_cpu(self.cluster) - self.cpu,
            "top": ", ".join(f"{k} {v / runs:.1f}" for v, k in top),
        }


def wait_done(
    rec: Recorder, n: int, timeout: float, failed: Callable[[], list[str]] | None = None
) -> None:
    """Until every run's pod finished; a run that failed instead ends the benchmark."""
    deadline = time.monotonic() + timeout
    checked = time.monotonic()
    while len(rec.finished) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(rec.finished)} of {n} finished in {timeout:.0f}s")
        if failed is not None and time.monotonic() - checked > 10:
            checked = time.monotonic()
            if bad := failed():
                raise AssertionError(f"runs failed: {'; '.join(bad[:5])}")
        time.sleep(0.5)


def failed_runs(objs: client.CustomObjectsApi, namespace: str) -> list[str]:
    runs = objs.list_namespaced_custom_object(GROUP, VERSION, namespace, "evalruns")["items"]
    return [
        f"{r['metadata']['name']}: {r['status'].get('reason')}: {r['status'].get('message')}"
        for r in runs
        if (r.get("status") or {}).get("phase") == "Failed"
    ]


def summary(
    label: str, rec: Recorder, t0: float, plan: list[tuple[str, int, int]]
) -> dict[str, Any]:
    g = gaps(rec, t0)
    makespan = max(rec.finished.values()) - t0
    out = {
        "makespan_s": makespan,
        "vs_lower_bound": makespan / lower_bound(plan),
        "gap_p50_s": statistics.median(g) if g else 0.0,
        "gap_p90_s": statistics.quantiles(g, n=10)[-1] if len(g) > 1 else 0.0,
        "waited": len(g),
    }
    print(label, json.dumps({k: round(v, 3) for k, v in out.items()}), flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--other-pods", type=int, default=2000)
    parser.add_argument("--other-jobs", type=int, default=500)
    parser.add_argument("--finished", type=int, default=1000)
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    plan = campaign(args.runs, args.seed)
    bound = lower_bound(plan)
    work = Path(tempfile.mkdtemp(prefix="lmms-campaign-"))
    with devcluster.running(work / "dc") as cluster:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        kwok = setup_cluster(cluster, work)
        try:
            bench = Bench(cluster, work)
            bench.populate("a", args.other_pods, args.other_jobs, args.finished)
            objs = client.CustomObjectsApi(api)
            batch = client.BatchV1Api(api)

            # 1. The operator's campaign.
            prepare_namespace(api, "campaign-op")
            op = OperatorProcess(
                cluster,
                work / "op",
                env={"LMMS_SCRAPE_INTERVAL": "5", "LMMS_RESYNC_INTERVAL": "15"},
                defaults=True,
            )
            (work / "op").mkdir()
            op.start()
            assert op.proc is not None
            pid = op.proc.pid
            time.sleep(5)
            rec = Recorder(api, "campaign-op")
            peak = [0.0]
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    peak[0] = max(peak[0], _proc_status(pid, "VmRSS"))
                    time.sleep(0.5)

            threading.Thread(target=sample, daemon=True).start()
            cpu0 = cpu_seconds(pid)
            load = Load(cluster)
            t0 = time.monotonic()
            for name, gpus, _ in plan:
                objs.create_namespaced_custom_object(
                    GROUP, VERSION, "campaign-op", "evalruns", evalrun(name, gpus)
                )
            created_op = time.monotonic() - t0
            wait_done(rec, len(plan), bound * 4 + 300, lambda: failed_runs(objs, "campaign-op"))
            op_cpu = cpu_seconds(pid) - cpu0
            sampling.set()
            rec.stop()
            with_op = summary("operator", rec, t0, plan)
            with_op.update(cpu_s=op_cpu, peak_rss_mib=peak[0], create_s=created_op)
            with_op.update(load.done(len(plan)))
            print("operator load", with_op["top"], flush=True)
            templates: dict[int, dict[str, Any]] = {}
            for job in batch.list_namespaced_job("campaign-op").items:
                gpus = int(job.metadata.labels[RUN_LABEL].split("-g")[1].split("-")[0])
                if gpus not in templates:
                    t = api.sanitize_for_serialization(job.spec.template)
                    t["metadata"] = {"labels": {}}
                    # The run's ServiceAccount and Secrets exist only in the operator's
                    # namespace; kwok's pods use neither.
                    for key in ("serviceAccountName", "serviceAccount"):
                        t["spec"].pop(key, None)
                    # Kueue's admission injected the flavor's node selector; the plain Job
                    # gets it from its own admission.
                    t["spec"].get("nodeSelector", {}).pop(POOL_LABEL, None)
                    templates[gpus] = t
            op.stop()

            # 2. The same campaign as plain Jobs.
            prepare_namespace(api, "campaign-plain")
            rec = Recorder(api, "campaign-plain")
            time.sleep(2)
            load = Load(cluster)
            t0 = time.monotonic()
            for name, gpus, _ in plan:
                batch.create_namespaced_job("campaign-plain", plain_job(name, templates[gpus]))
            created_plain = time.monotonic() - t0
            wait_done(rec, len(plan), timeout=bound * 4 + 300)
            rec.stop()
            plain = summary("plain Jobs", rec, t0, plan)
            plain.update(create_s=created_plain)
            plain.update(load.done(len(plan)))
            print("plain load", plain["top"], flush=True)
        finally:
            kwok.terminate()
            kwok.wait(timeout=30)

    ratio = with_op["makespan_s"] / plain["makespan_s"]
    print(f"makespan ratio (operator / plain Jobs): {ratio:.3f} (target <= 1.05)")
    print(f"median gap with the operator: {with_op['gap_p50_s']:.2f} s (target <= 2 s)")
    if args.write:
        write_section(SECTION, render(args, plan, bound, with_op, plain, ratio))
    return 0


def render(
    args: argparse.Namespace,
    plan: list[tuple[str, int, int]],
    bound: float,
    op: dict[str, Any],
    plain: dict[str, Any],
    ratio: float,
) -> str:
    gpu_s = sum(g * s for _, g, s in plan)
    sizes = {s: sum(1 for _, g, _ in plan if g == s) for s in SIZES}
    return f"""{SECTION}

`python tests/bench/kueue_campaign.py --runs {args.runs} --write`: {args.runs} EvalRuns
({", ".join(f"{n}x {s} GPU" for s, n in sizes.items())}; 5 to 25 s each, seed
{args.seed}; {gpu_s} GPU-seconds) on {NODES} kwok nodes of {GPUS} GPUs behind one
ClusterQueue of {NODES * GPUS} GPUs of the real Kueue v0.17, among {args.other_pods} other
tenants' pods, {args.other_jobs} Jobs and {args.finished} finished EvalRuns; then the same
campaign as plain Kueue-managed Jobs with the same pods and durations, no operator.
Lower bound: {bound:.0f} s (GPU-seconds over {NODES * GPUS} GPUs, or the longest run).

| | makespan | vs lower bound | gap p50 | gap p90 | runs that waited |
|---|---|---|---|---|---|
| EvalRuns (operator) | {op["makespan_s"]:.1f} s | {op["vs_lower_bound"]:.2f}x | {op["gap_p50_s"]:.2f} s | {op["gap_p90_s"]:.2f} s | {op["waited"]:.0f} |
| plain Jobs | {plain["makespan_s"]:.1f} s | {plain["vs_lower_bound"]:.2f}x | {plain["gap_p50_s"]:.2f} s | {plain["gap_p90_s"]:.2f} s | {plain["waited"]:.0f} |

- Makespan ratio, operator over plain Jobs: **{ratio:.3f}** (target <= 1.05).
- Median gap from a pod finishing to the next admitted run's pod running, with the
  operator: **{op["gap_p50_s"]:.2f} s** (target <= 2 s).
- The operator over the campaign: {op["cpu_s"]:.1f} CPU-seconds, peak RSS
  {op["peak_rss_mib"]:.0f} MiB; creating the {args.runs} EvalRuns took {op["create_s"]:.1f} s
  (the plain Jobs {plain["create_s"]:.1f} s).
- API requests per run (watches left out) and the API server's and etcd's CPU over the
  campaign: with the operator {op["requests_per_run"]:.1f} per run,
  {op["control_plane_cpu_s"]:.0f} CPU-seconds; plain Jobs {plain["requests_per_run"]:.1f}
  per run, {plain["control_plane_cpu_s"]:.0f} CPU-seconds. The most frequent, per run, with
  the operator: {op["top"]}; plain Jobs: {plain["top"]}.
"""


if __name__ == "__main__":
    raise SystemExit(main())
