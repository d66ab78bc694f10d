"""Benchmark P6: fan-out. Four equal local tasks with ``parallelism: 4`` against one of
them alone with ``parallelism: 1``, and (for reference) the four in one pod, through the
devcluster (real API server, Job controller, scheduler), the operator with its default
settings, the process executor and the real runner with real lmms-eval 0.7.3, offline,
against the loopback OpenAI-compatible model. Wall time is from ``kubectl create`` to
the status saying Succeeded (results published), start-up included. The cases run one
after another, ``--repeats`` times in turn; the medians go to docs/benchmarks.md.

    python tests/bench/fanout.py [--samples 40] [--delay 0.5] [--repeats 2]

With ``--image REF`` (a runner image `make images` built; as root) the pods run from that
image, as on a cluster, instead of the devcluster's Python environment; the figures go to
their own section.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "infra"))

from kubernetes import client  # noqa: E402

from lmms_devcluster.executor import (  # noqa: E402
    HOST_CODE_CACHE,
    HOST_PUNCTUATION_INDEX,
    HOST_TASK_INDEX,
    HOST_TRANSFORMERS_INDEX,
)
from tests import evalruns as er  # noqa: E402
from tests.bench.docs import write_section  # noqa: E402
from tests.bench.host import Steal, reference_seconds  # noqa: E402
from tests.e2e.test_runner import ModelServer  # noqa: E402
from tests.fixtures import colortask  # noqa: E402
from tests.helpers import LOCAL_TASK_DIR, local_task_cluster  # noqa: E402
from tests.operator_process import OperatorProcess  # noqa: E402

SECTION = "## Fan-out (P6)"
IMAGE_SECTION = "## Fan-out from the runner image (P6)"
TASKS = ["bench_a", "bench_b", "bench_c", "bench_d"]


def timed_run(
    api: client.ApiClient, namespace: str, name: str, tasks: list[str], parallelism: int, url: str
) -> dict[str, Any]:
    body = er.local_run(name, url, tasks, parallelism=parallelism, leaderboard=None)
    created = time.time()
    start = time.monotonic()
    er.create(api, namespace, body)
    deadline = start + 900
    while time.monotonic() < deadline:
        status = er.get(api, namespace, name).get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.2)
    wall = time.monotonic() - start
    if status.get("phase") != "Succeeded" or not status.get("results"):
        raise SystemExit(f"{name} did not succeed: {json.dumps(status)[:2000]}")
    return {
        "wall": wall,
        "created": created,
        "done": created + wall,
        "results": {r["task"]: r["value"] for r in status["results"]},
        "timeline": timeline(api, namespace, name, status),
    }


def timeline(
    api: client.ApiClient, namespace: str, name: str, status: dict[str, Any]
) -> dict[str, Any]:
    """Seconds from the EvalRun's creation (the API server's clock, 1 s resolution) to
    each pod's creation, start and end, and to the results being published."""
    run = er.get(api, namespace, name)
    t0 = _time(run["metadata"]["creationTimestamp"])
    pods = client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"job-name={status['jobName']}"
    )
    out: dict[str, Any] = {"published": _time(status["completionTime"]) - t0, "pods": []}
    for pod in sorted(pods.items, key=lambda p: p.metadata.name):
        term = pod.status.container_statuses[0].state.terminated
        out["pods"].append(
            {
                "created": pod.metadata.creation_timestamp.timestamp() - t0,
                "started": term.started_at.timestamp() - t0 if term else None,
                "finished": term.finished_at.timestamp() - t0 if term else None,
            }
        )
    return out


def clients(url: str) -> dict[str, dict[str, float]]:
    """The model server's clients: when each connection sent its first and last request."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as r:
        return dict(json.load(r)["clients"])


def requests_timeline(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], out: dict[str, Any]
) -> tuple[float, float]:
    """(seconds from the EvalRun's creation to the last pod's first model request, from
    the last model request to the run's Succeeded) of one run, from the model server's
    clients that are new since ``before``: where a fan-out's extra time goes, at the
    start or at the end. NaN for a run that asked the model nothing (reused results)."""
    new = [c for key, c in after.items() if key not in before]
    if not new:
        return math.nan, math.nan
    return (
        max(c["first"] for c in new) - out["created"],
        out["done"] - max(c["last"] for c in new),
    )


def _time(value: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def start_cpu_seconds(samples: int) -> float:
    """CPU seconds (user + sys, the runner and its lmms-eval) of one runner evaluating
    one such task against an instant model, with a fresh HF_HOME as a pod has: what each
    pod spends, nearly all of it starting. Median of 3."""
    import resource
    import subprocess

    from tests.bench.runner_overhead import Setup

    tmp = Path(tempfile.mkdtemp(prefix="lmms-fanout-cpu-"))
    setup = Setup(tmp, samples, 0.0)
    # The indexes the devcluster's host-environment pods use, as the runner image has them.
    indexes = {
        "LMMS_TASK_INDEX": str(HOST_TASK_INDEX),
        "LMMS_TRANSFORMERS_INDEX": str(HOST_TRANSFORMERS_INDEX),
        "LMMS_PUNCTUATION_INDEX": str(HOST_PUNCTUATION_INDEX),
        "LMMS_CODE_CACHE": str(HOST_CODE_CACHE),
    }
    spent = []
    try:
        for i in range(3):
            env = dict(setup.env, HF_HOME=str(tmp / f"hf{i}"), **indexes)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(setup.runner(tmp / f"out{i}"), env=env, check=True, capture_output=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            spent.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    finally:
        setup.stop()
    return statistics.median(spent)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=40, help="documents per task")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds per model answer")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--cases", default="alone,fan2,fan4,serial", help="a subset, to look closer"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--image", help="run the pods from this runner image (as root)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmms-fanout-"))
    walls: dict[str, list[float]] = {"alone": [], "fan2": [], "fan4": [], "serial": []}
    starts: dict[str, list[float]] = {k: [] for k in walls}
    tails: dict[str, list[float]] = {k: [] for k in walls}
    # The host's speed before each run and the CPU stolen during it (tests/bench/host.py).
    host: dict[str, list[tuple[float, float]]] = {k: [] for k in walls}
    server = ModelServer(delay=args.delay)
    namespace = "bench-fanout"
    data: dict[str, str] = {}
    for task in TASKS:
        data.update(colortask.files(task, args.samples, LOCAL_TASK_DIR))
    try:
        with local_task_cluster(work, namespace, data) as (cluster, api):
            # The operator with its defaults (a 5 s scrape), but a short runner hold.
            (work / "op").mkdir()
            env = {"LMMS_HOLD_TIMEOUT": "120"}
            if args.image:
                env.update(LMMS_RUNNER_IMAGE=args.image, LMMS_RUNNER_COMMAND="lmms-runner")
            op = OperatorProcess(cluster, work / "op", env=env, defaults=True)
            op.start()
            try:
                cases = [
                    c
                    for c in [
                        ("alone", TASKS[:1], 1),
                        ("fan2", TASKS[:2], 2),
                        ("fan4", TASKS, 4),
                        ("serial", TASKS, 1),
                    ]
                    if c[0] in args.cases.split(",")
                ]
                for repeat in range(args.repeats):
                    for label, tasks, parallelism in cases:
                        speed = reference_seconds()
                        steal = Steal()
                        seen = clients(server.url)
                        steal.start()
                        out = timed_run(
                            api, namespace, f"{label}-{repeat}", tasks, parallelism, server.url
                        )
                        host[label].append((speed, steal.stop()))
                        first, tail = requests_timeline(seen, clients(server.url), out)
                        walls[label].append(out["wall"])
                        starts[label].append(first)
                        tails[label].append(tail)
                        print(
                            f"{label} #{repeat}: {out['wall']:.1f} s {out['results']} (last "
                            f"pod's first request at {first:.2f} s, last request to "
                            f"Succeeded {tail:.2f} s; host: reference {speed:.3f} CPU-s, "
                            f"steal {host[label][-1][1]:.1%})"
                        )
                        print(f"  timeline: {json.dumps(out['timeline'])}", flush=True)
            finally:
                op.stop()
    finally:
        server.stop()
    if args.no_write or set(walls) - {k for k, v in walls.items() if v}:
        print({k: [round(w, 1) for w in v] for k, v in walls.items()})
        return 0
    med = {k: statistics.median(v) for k, v in walls.items()}
    ratio = med["fan4"] / med["alone"]
    timing = timing_text(starts, tails) + "\n" + host_text(host)
    if args.image:
        return write_image_section(args, walls, med, ratio, timing)
    cpu = start_cpu_seconds(args.samples)
    cores = os.cpu_count() or 1
    # Four runners starting at once on `cores` cores take about max(1, 4 / cores) times
    # as long as one: the extra wall time, and the ratio it allows.
    extra = (max(1.0, 4 / cores) - 1) * cpu
    slower = max(1.0, 4 / cores)
    bound = 0.15 * (med["alone"] - cpu) / (slower - 1.15) if slower > 1.15 else None
    if bound is None:
        need = ""
    elif ratio > 1.15:
        need = f" To reach 1.15x on {cores} cores a start would have to cost under {bound:.1f} CPU-seconds."
    else:
        need = f" On {cores} cores 1.15x holds while a start costs under about {bound:.1f} CPU-seconds."
    text = (
        f"{SECTION}\n\n"
        f"`python tests/bench/fanout.py --samples {args.samples} --delay {args.delay} "
        f"--repeats {args.repeats}` on {os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d')}: four equal local tasks of {args.samples} documents "
        f"(the loopback model answers in {args.delay} s, one request at a time, so a task "
        f"takes about {args.samples * args.delay:.0f} s of model time), through the "
        "devcluster, the operator with its default settings (a 5 s scrape), the process "
        "executor and the real runner with lmms-eval 0.7.3. Wall time from the EvalRun's "
        "creation to `Succeeded` with its results published, start-up included; the "
        f"cases ran in turn, medians of {args.repeats}.\n\n"
        "| case | wall (median) | runs |\n|---|---:|---|\n"
        f"| one task alone, `parallelism: 1` | {med['alone']:.1f} s | "
        f"{', '.join(f'{w:.1f}' for w in walls['alone'])} |\n"
        f"| two tasks, `parallelism: 2` | {med['fan2']:.1f} s | "
        f"{', '.join(f'{w:.1f}' for w in walls['fan2'])} |\n"
        f"| four tasks, `parallelism: 4` | {med['fan4']:.1f} s | "
        f"{', '.join(f'{w:.1f}' for w in walls['fan4'])} |\n"
        f"| four tasks, `parallelism: 1` (reference) | {med['serial']:.1f} s | "
        f"{', '.join(f'{w:.1f}' for w in walls['serial'])} |\n\n"
        f"**P6: four tasks over four pods take {ratio:.3f}x one task alone** (target "
        f"<= 1.15x: {'met' if ratio <= 1.15 else 'missed'}); two tasks over two pods take {med['fan2'] / med['alone']:.2f}x; the "
        f"four tasks in one pod take {med['serial'] / med['alone']:.2f}x.\n\n"
        f"**Where the rest goes.** One runner spends {cpu:.1f} CPU-seconds on such a task "
        "(runner and lmms-eval, user + sys, a fresh `HF_HOME` as in a pod, an instant "
        "model, median of 3), nearly all of it starting: importing torch, the OpenAI "
        f"client, transformers and datasets. Four pods start at once on {cores} cores, so "
        f"each starts about {max(1.0, 4 / cores):.0f}x slower: about {extra:.1f} s more "
        f"than one pod alone, measured {med['fan4'] - med['alone']:.1f} s. Where every pod "
        "has cores of its own (a GPU node gives each pod its CPU request), four pods cost "
        f"what two do here: {med['fan2'] / med['alone']:.2f}x.{need}\n\n{timing}"
    )
    write_section(SECTION, text)
    print(text)
    return 0


def timing_text(starts: dict[str, list[float]], tails: dict[str, list[float]]) -> str:
    """Where the time of each case goes (the model server's view, medians)."""
    asked = {k: [x for x in v if not math.isnan(x)] for k, v in starts.items()}
    med = {k: statistics.median(v) for k, v in asked.items() if v}
    tail = {
        k: statistics.median([x for x in v if not math.isnan(x)])
        for k, v in tails.items()
        if k in med
    }
    rows = "".join(
        f"| {k} | {med[k]:.2f} s | {tail[k]:.2f} s |\n"
        for k in ("alone", "fan2", "fan4")
        if k in med
    )
    return (
        "From the model server's clock (medians): from the EvalRun's creation to the last "
        "pod's first request (start-up: the API server, the Job controller, the scheduler, "
        "the executor, the runner and lmms-eval), and from the last request to "
        "`Succeeded` (the last answer, lmms-eval's results, the long poll, the pod's "
        "exit, the Job's completion, the results published).\n\n"
        "| case | last pod's first request | last request to `Succeeded` |\n"
        f"|---|---:|---:|\n{rows}"
    )


def host_text(host: dict[str, list[tuple[float, float]]]) -> str:
    """How fast the host was during the runs (``tests/bench/host.py``): a fan-out on
    shared cores moves with it."""
    runs = [h for v in host.values() for h in v]
    speeds = sorted(s for s, _ in runs)
    steals = [x for _, x in runs if not math.isnan(x)]
    stolen = f"{max(steals):.1%}" if steals else "not reported"
    return (
        f"The host during these runs: the reference workload of `tests/bench/host.py` took "
        f"{statistics.median(speeds):.3f} CPU-s (median; {speeds[0]:.3f} to {speeds[-1]:.3f}) "
        f"before a run, and the hypervisor took at most {stolen} of the CPU time during one.\n"
    )


def write_image_section(
    args: argparse.Namespace,
    walls: dict[str, list[float]],
    med: dict[str, float],
    ratio: float,
    timing: str,
) -> int:
    rows = [
        ("one task alone, `parallelism: 1`", "alone"),
        ("two tasks, `parallelism: 2`", "fan2"),
        ("four tasks, `parallelism: 4`", "fan4"),
        ("four tasks, `parallelism: 1` (reference)", "serial"),
    ]
    table = "".join(
        f"| {label} | {med[k]:.1f} s | {', '.join(f'{w:.1f}' for w in walls[k])} |\n"
        for label, k in rows
    )
    text = (
        f"{IMAGE_SECTION}\n\n"
        f"`python tests/bench/fanout.py --image {args.image} --samples {args.samples} "
        f"--delay {args.delay} --repeats {args.repeats}` on {os.cpu_count()} CPU cores, "
        f'{time.strftime("%Y-%m-%d")}: the cases of "Fan-out (P6)" with every pod run '
        "from the runner image as a node runs it (the executor: overlay root filesystem, "
        "chroot, uid 1000, read-only root), the image's own Python, bytecode and task "
        f"index.\n\n| case | wall (median) | runs |\n|---|---:|---|\n{table}\n"
        f"**P6 from the image: four tasks over four pods take {ratio:.3f}x one task alone** "
        f"(target <= 1.15x: {'met' if ratio <= 1.15 else 'missed'}); two tasks over two "
        f"pods take {med['fan2'] / med['alone']:.2f}x.\n\n{timing}"
    )
    write_section(IMAGE_SECTION, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
