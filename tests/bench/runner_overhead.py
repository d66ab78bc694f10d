"""Benchmark: the same evaluation through `lmms-runner` and through plain lmms-eval.

Both run the real lmms-eval 0.7.3 on a local task against a local OpenAI-compatible
server whose per-request delay makes the evaluation last a few minutes, alternately,
``--repeats`` times each. Writes the wall-time ratio to docs/benchmarks.md.

    python tests/bench/runner_overhead.py [--samples 400] [--delay 0.35] [--repeats 2]
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.docs import write_section  # noqa: E402
from tests.fixtures import colortask  # noqa: E402

SECTION = "## Runner overhead"


def run(argv: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed ({proc.returncode}): {proc.stderr[-2000:]!r}")
    return elapsed


class Setup:
    """A local task, a local OpenAI-compatible server, and the two command lines (plain
    lmms-eval and lmms-runner) that evaluate it, each writing to its own directory."""

    def __init__(self, tmp: Path, samples: int, delay: float, wrong_every: int = 0) -> None:
        self.tmp = tmp
        self.tasks = colortask.write(tmp / "tasks", "colors", samples=samples)
        server = [sys.executable, str(REPO / "tests/fixtures/openai_server.py")]
        self.server = subprocess.Popen(
            [*server, "--delay", str(delay), "--wrong-every", str(wrong_every)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.server.stdout is not None
        url = f"http://127.0.0.1:{json.loads(self.server.stdout.readline())['port']}/v1"
        self.margs = {
            "model_version": "local",
            "base_url": url,
            "api_key": "sk-bench",
            "num_concurrent": "1",
        }
        self.config = tmp / "evalrun.json"
        self.config.write_text(
            json.dumps(
                {
                    "kind": "EvalRun",
                    "metadata": {"name": "bench"},
                    "spec": {"model": {"type": "openai", "args": self.margs}, "tasks": ["colors"]},
                }
            )
        )
        self.env = dict(
            os.environ, HF_HOME=str(tmp / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"
        )

    def plain(self, out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "lmms_eval",
            "--model",
            "openai",
            "--model_args",
            ",".join(f"{k}={v}" for k, v in self.margs.items()),
            "--tasks",
            "colors",
            "--include_path",
            str(self.tasks),
            "--batch_size",
            "1",
            "--seed",
            "1234",
            "--timezone",
            "UTC",
            "--verbosity",
            "INFO",
            "--output_path",
            str(out),
        ]

    def runner(self, out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "lmms_runner",
            "--config",
            str(self.config),
            "--include-path",
            str(self.tasks),
            "--output",
            str(out),
            "--listen",
            "127.0.0.1:0",
            "--hold-timeout",
            "0",
            "--termination-log",
            str(self.tmp / "term"),
        ]

    def stop(self) -> None:
        self.server.terminate()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--delay", type=float, default=0.35)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lmms-bench-"))
    setup = Setup(tmp, args.samples, args.delay)
    times: dict[str, list[float]] = {"lmms-eval": [], "lmms-runner": []}
    try:
        for i in range(args.repeats):
            times["lmms-eval"].append(run(setup.plain(tmp / f"plain{i}"), setup.env))
            times["lmms-runner"].append(run(setup.runner(tmp / f"runner{i}"), setup.env))
            print(
                f"round {i + 1}: plain {times['lmms-eval'][-1]:.1f}s, "
                f"runner {times['lmms-runner'][-1]:.1f}s",
                flush=True,
            )
    finally:
        setup.stop()
    plain_s = statistics.median(times["lmms-eval"])
    runner_s = statistics.median(times["lmms-runner"])
    ratio = runner_s / plain_s
    text = (
        f"{SECTION}\n\n"
        f"`python tests/bench/runner_overhead.py --samples {args.samples} --delay {args.delay} "
        f"--repeats {args.repeats}` on {os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d')}: the same evaluation ({args.samples} samples of a local "
        f"task, a local OpenAI-compatible model answering in {args.delay}s) through plain "
        "lmms-eval and through `lmms-runner` (which serves /progress and /metrics, parses "
        "every output line, redacts secrets and checks the results), alternately. Single runs "
        "vary by several percent on a shared machine; run it on an idle one.\n\n"
        "| | median wall time | runs |\n|---|---:|---|\n"
        f"| plain `python -m lmms_eval` | {plain_s:.1f} s | "
        f"{', '.join(f'{t:.1f}' for t in times['lmms-eval'])} |\n"
        f"| `lmms-runner` | {runner_s:.1f} s | "
        f"{', '.join(f'{t:.1f}' for t in times['lmms-runner'])} |\n\n"
        f"**Ratio runner / plain: {ratio:.3f}** (target: at most 1.02). Without a cache volume "
        "the runner starts lmms-eval once; with one it starts it once per task (to resume "
        'task by task), which adds the runner\'s start of lmms-eval ("Runner start-up": `runner_startup.py`) per extra task.\n'
    )
    write_section(SECTION, text)
    print(text)
    return 0 if ratio <= 1.02 else 1


if __name__ == "__main__":
    sys.exit(main())
