"""Benchmark (issue 32, item 5): concurrent requests to an OpenAI-compatible model.

`lmms-runner --config` (by hand, as in a pod) with the real lmms-eval 0.7.3 evaluates
``--samples`` documents of a local task against the loopback model server, which answers
each request after ``--delay`` seconds, all requests at once; the EvalRun says
``spec.model.concurrency: --concurrency``. The answering cannot take less than the bound
``samples x delay / concurrency``; the target is at most 1.3 times that, plus start-up.

Start-up is measured apart: from the runner's start to the server's first request (the
server's own clock, ``GET /stats``: the same machine's). The rest, up to the runner's
exit (answering, scoring, writing results), is compared with the bound. The client's CPU
time is the runner's process tree's user + sys time (``wait4``: the runner's and every
process it waited for, lmms-eval included). Runs once without and, with ``--volume``,
once with a cache volume (``--state-dir``: lmms-eval then answers in chunks, each stored
before the next is asked). Writes the figures to docs/benchmarks.md.

    python tests/bench/concurrency.py [--samples 512] [--delay 0.5] [--concurrency 16]
        [--repeats 3] [--volume]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.docs import write_section  # noqa: E402
from tests.fixtures import colortask  # noqa: E402

SECTION = "## Concurrent requests (issue 32)"
TARGET = 1.3
FOUND = (
    "\nWhat the cache volume needed (measured with cProfile on lmms-eval's process and the "
    "server's request times): lmms-eval's response cache appends each answer to an audit "
    "log and `fsync`s it, one answer at a time, once a chunk is answered and before the "
    "next chunk is asked: 5.3 ms each on this disk, 0.34 s per chunk of 64 with no "
    "request in flight, 2.7 s of the 512 answers (ratio 1.26 and 1.32 in two runs). The "
    "runner's patch (`patches/chunked_answers.py`) now syncs the log once per chunk, which "
    "is where its guarantee (a killed attempt loses at most one chunk) stands: 9 fsyncs, "
    "0.05 s. Chunks were 8 answers before this issue, which bounded the requests in "
    "flight to 8 whatever the concurrency; they are now 4 x the requests in flight.\n"
)


@dataclass
class Figures:
    label: str
    wall: float  # the runner's start to its exit
    startup: float  # the runner's start to the server's first request
    answering: float  # the first request to the last answer (the server's clock)
    cpu: float  # the runner's process tree's user + sys
    peak: int  # the most requests the server held at once
    requests: int

    def ratio(self, bound: float) -> float:
        return (self.wall - self.startup) / bound


class Server:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests/fixtures/openai_server.py"), "--delay", str(delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = json.loads(self.proc.stdout.readline())["port"]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as r:
            result: dict[str, object] = json.load(r)
            return result

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def run_once(
    label: str, tmp: Path, tasks: Path, concurrency: int, delay: float, volume: bool
) -> Figures:
    """One runner against a fresh server (so its figures are this run's alone). The
    runner's indexes live where the runner image puts them when it is built; here in
    ``tmp``, written by a first, unmeasured run (``runner_startup.py`` does the same)."""
    server = Server(delay)
    try:
        config = tmp / f"{label}.json"
        config.write_text(
            json.dumps(
                {
                    "kind": "EvalRun",
                    "metadata": {"name": "bench"},
                    "spec": {
                        "model": {
                            "type": "openai",
                            "args": {"model_version": "local", "base_url": server.url},
                            "concurrency": concurrency,
                        },
                        "tasks": ["colors"],
                    },
                }
            )
        )
        out = tmp / label
        argv = [
            sys.executable,
            "-m",
            "lmms_runner",
            "--config",
            str(config),
            "--include-path",
            str(tasks),
            "--output",
            str(out / "out"),
            "--listen",
            "127.0.0.1:0",
            "--hold-timeout",
            "0",
            "--termination-log",
            str(out / "term"),
        ]
        if volume:
            argv += ["--state-dir", str(out / "state")]
        env = dict(
            os.environ,
            HF_HOME=str(tmp / "hf"),
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            OPENAI_API_KEY="sk-bench",
            LMMS_TASK_INDEX=str(tmp / "task-index.json"),
            LMMS_TRANSFORMERS_INDEX=str(tmp / "transformers-index.json"),
            LMMS_PUNCTUATION_INDEX=str(tmp / "punctuation.json"),
            LMMS_CODE_CACHE=str(tmp / "code-cache.marshal"),
        )
        out.mkdir(parents=True)
        log = (out / "runner.log").open("w")
        start_wall, start = time.time(), time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{label}: the runner exited {proc.returncode}; see {out}/runner.log")
        stats = server.stats()
        clients = stats["clients"]
        assert isinstance(clients, dict)
        first = min(c["first"] for c in clients.values())
        last = max(c["last"] for c in clients.values())
        requests = stats["requests"]
        peak = stats["peak"]
        assert isinstance(requests, int) and isinstance(peak, int)
        return Figures(
            label=label,
            wall=wall,
            startup=first - start_wall,
            answering=last + delay - first,
            cpu=usage.ru_utime + usage.ru_stime,
            peak=peak,
            requests=requests,
        )
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--volume", action="store_true", help="also run with a cache volume")
    args = parser.parse_args()
    load = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="lmms-bench-concurrency-"))
    tasks = colortask.write(tmp / "tasks", "colors", samples=args.samples)
    bound = args.samples * args.delay / args.concurrency
    warm = colortask.write(tmp / "warm", "colors", samples=args.concurrency)
    run_once("warm-up", tmp, warm, args.concurrency, 0.0, False)
    modes = [("by hand", False)] + ([("cache volume", True)] if args.volume else [])
    figures: dict[str, list[Figures]] = {label: [] for label, _ in modes}
    for i in range(args.repeats):
        for label, volume in modes:
            name = f"{label.replace(' ', '-')}-{i}"
            f = run_once(name, tmp, tasks, args.concurrency, args.delay, volume)
            f.label = label
            figures[label].append(f)
            print(
                f"{label} ({i + 1}): wall {f.wall:.2f} s, start-up {f.startup:.2f} s, "
                f"answering {f.answering:.2f} s, after start-up {f.wall - f.startup:.2f} s = "
                f"{f.ratio(bound):.3f} x the bound {bound:.1f} s; client CPU {f.cpu:.2f} s; "
                f"{f.requests} requests, at most {f.peak} at once",
                flush=True,
            )
    rows = "".join(
        f"| {f.label} | {f.wall:.2f} s | {f.startup:.2f} s | {f.answering:.2f} s | "
        f"{f.wall - f.startup:.2f} s | {f.ratio(bound):.3f} | {f.cpu:.2f} s | {f.peak} |\n"
        for runs in figures.values()
        for f in runs
    )
    medians = {
        label: statistics.median(f.ratio(bound) for f in runs) for label, runs in figures.items()
    }
    cpu = {label: statistics.median(f.cpu for f in runs) for label, runs in figures.items()}
    startup = {label: statistics.median(f.startup for f in runs) for label, runs in figures.items()}
    summary = "; ".join(
        f"{label} **{medians[label]:.3f}** (start-up {startup[label]:.2f} s, client CPU "
        f"{cpu[label]:.2f} s)"
        for label in figures
    )
    flags = (
        f"--samples {args.samples} --delay {args.delay} --concurrency {args.concurrency} "
        f"--repeats {args.repeats}{' --volume' if args.volume else ''}"
    )
    text = (
        f"{SECTION}\n\n"
        f"`python tests/bench/concurrency.py {flags}` on {os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d')}: `lmms-runner --config` (the real lmms-eval 0.7.3, "
        f"`openai` backend) evaluates {args.samples} documents of a local task against the "
        f"loopback model server, which answers each request after {args.delay} s, all at "
        f"once; the EvalRun says `spec.model.concurrency: {args.concurrency}`. The bound is "
        f"{args.samples} x {args.delay} / {args.concurrency} = {bound:.1f} s. Start-up is the "
        "runner's start to the server's first request (the server's clock; the runner's "
        "indexes written by a first, unmeasured run, as the image has them); the rest, to "
        "the runner's exit (answering, scoring, the results), is compared with the bound. "
        "Answering is the server's first request to its last answer. Client CPU: the "
        "runner's process tree's user + sys time (`wait4`, lmms-eval included, start-up "
        "too). Peak: the most requests the server held at once. With a cache volume "
        f"lmms-eval answers in chunks of {4 * args.concurrency} (4 x concurrency), each "
        "stored before the next is asked. The load average was "
        f"{load[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at the end: on a shared "
        "machine the figures vary by several percent; run it on an idle one.\n\n"
        "| run | wall | start-up | answering | after start-up | / bound | client CPU "
        "| peak |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
        f"{rows}\n"
        f"Ratio (after start-up) / bound, median: {summary} (target: at most {TARGET}).\n"
        f"{FOUND}"
    )
    write_section(SECTION, text)
    print(text)
    return 0 if max(medians.values()) <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
