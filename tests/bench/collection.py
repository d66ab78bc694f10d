"""Benchmark: how long a finished runner waits for the operator to collect its results.

A runner that has written its results keeps serving them, and keeps its pod (and on a
real cluster its GPUs), until the operator has fetched and kept them (``/ack``). This
measures that wait on every runner pod: small runs one after another, alternately one
pod (``parallelism: 1``) and two shards (``parallelism: 2``), through the devcluster (real
API server, Job controller, scheduler), the operator with its default settings (a 5 s
scrape), the process executor and the real runner with real lmms-eval 0.7.3 against the
loopback model. The wait is what the runner itself reports (``results acknowledged after
N s``, from the moment it began to hold); wall time is from ``kubectl create`` to the
status saying Succeeded. Writes docs/benchmarks.md's section.

    python tests/bench/collection.py [--runs 6] [--samples 30] [--delay 0.1] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "infra"))

from kubernetes import client  # noqa: E402

from tests import evalruns as er  # noqa: E402
from tests.bench.docs import write_section  # noqa: E402
from tests.e2e.test_runner import ModelServer  # noqa: E402
from tests.fixtures import colortask  # noqa: E402
from tests.helpers import LOCAL_TASK_DIR, local_task_cluster  # noqa: E402
from tests.operator_process import OperatorProcess  # noqa: E402

SECTION = "## Result collection"
NAMESPACE = "bench-collection"
ACKED = re.compile(r"results acknowledged after ([0-9.]+)s")


def holds(executor_dir: Path, pod_uids: list[str]) -> list[float]:
    """The wait each runner pod reported in its log."""
    out = []
    for uid in pod_uids:
        log = (executor_dir / "pods" / uid / "container.log").read_text(errors="replace")
        found = ACKED.findall(log)
        if not found:
            raise SystemExit(f"pod {uid}: no acknowledgement in its log:\n{log[-2000:]}")
        out.append(float(found[-1]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=6, help="runs of each kind")
    parser.add_argument("--samples", type=int, default=30, help="documents per task")
    parser.add_argument("--delay", type=float, default=0.1, help="seconds per model answer")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmms-collection-"))
    server = ModelServer(delay=args.delay)
    waits: dict[int, list[float]] = {1: [], 2: []}
    walls: dict[int, list[float]] = {1: [], 2: []}
    data: dict[str, str] = {}
    for task in ("bench_a", "bench_b"):
        data.update(colortask.files(task, args.samples, LOCAL_TASK_DIR))
    try:
        with local_task_cluster(work, NAMESPACE, data) as (cluster, api):
            core = client.CoreV1Api(api)
            (work / "op").mkdir()
            op = OperatorProcess(cluster, work / "op", defaults=True)
            op.start()
            try:
                for i in range(args.runs):
                    for parallelism, tasks in ((1, ["bench_a"]), (2, ["bench_a", "bench_b"])):
                        name = f"p{parallelism}-{i}"
                        start = time.monotonic()
                        body = er.local_run(
                            name, server.url, tasks, parallelism=parallelism, leaderboard=None
                        )
                        er.create(api, NAMESPACE, body)
                        while time.monotonic() - start < 600:
                            status = er.get(api, NAMESPACE, name).get("status") or {}
                            if status.get("phase") in ("Succeeded", "Failed"):
                                break
                            time.sleep(0.05)
                        wall = time.monotonic() - start
                        if status.get("phase") != "Succeeded":
                            raise SystemExit(f"{name}: {status}")
                        pods = core.list_namespaced_pod(
                            NAMESPACE, label_selector=f"job-name={status['jobName']}"
                        ).items
                        got = holds(work / "dc" / "executor", [p.metadata.uid for p in pods])
                        waits[parallelism] += got
                        walls[parallelism].append(wall)
                        print(f"{name}: {wall:.1f} s, waits {got}", flush=True)
            finally:
                op.stop()
    finally:
        server.stop()
    every = waits[1] + waits[2]
    rows = "".join(
        f"| {label} | {len(w)} | {statistics.median(w):.2f} s | {max(w):.2f} s | "
        f"{statistics.median(walls[p]):.1f} s |\n"
        for label, p, w in (
            ("one pod (`parallelism: 1`)", 1, waits[1]),
            ("two shards (`parallelism: 2`)", 2, waits[2]),
        )
    )
    text = (
        f"{SECTION}\n\n"
        f"`python tests/bench/collection.py --runs {args.runs} --samples {args.samples} "
        f"--delay {args.delay}` on {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}: "
        "small runs one after another through the devcluster, the operator with its default "
        "settings (a 5 s scrape), the process executor and the real runner (lmms-eval 0.7.3, "
        "the loopback model). A finished runner holds its results, and its pod (its GPUs on "
        "a real cluster), until the operator has kept them; the wait is what each runner "
        "reports (`results acknowledged after N s`).\n\n"
        "| runs | runner pods | median wait | longest wait | median wall time |\n"
        "|---|---:|---:|---:|---:|\n"
        f"{rows}\n"
        f"Over all {len(every)} pods: median wait **{statistics.median(every):.2f} s**, "
        f"mean {statistics.mean(every):.2f} s. With a scrape every 5 s and nothing else, a "
        "finished runner waits 2.5 s on average (up to 5 s); the operator scrapes a run "
        "again sooner when its runner is about to finish (`reconcile.progress.follow_up`: the runner's "
        "ETA within the interval, or past its last answer), at most a few times in a row, "
        "and asks a runner near its end for its results with a long poll "
        "(`/results?wait=`, `reconcile.progress.near_end`), which the runner answers the moment they "
        "are ready.\n"
    )
    if not args.no_write:
        write_section(SECTION, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
