"""Benchmark P4: on a small run, where start-up is nearly all of the time, `lmms-runner`
against the same evaluation through plain `python -m lmms_eval`.

A 40-document local task against an instant loopback model, paired runs (plain, then
runner), ``--repeats`` times; the runner's indexes are written by a first, unmeasured
run (as the runner image writes them when it is built). Checks that both give the same
scores, and writes the figures to docs/benchmarks.md ("Runner start-up").

    python tests/bench/runner_startup.py [--samples 40] [--repeats 4]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.docs import write_section  # noqa: E402
from tests.bench.runner_overhead import Setup, run  # noqa: E402

SECTION = "## Runner start-up"
TARGET = 0.8


def scores(out: Path) -> dict[str, float]:
    """The task's metrics from lmms-eval's own results file under ``out``."""
    (path,) = glob.glob(str(out / "**" / "*_results.json"), recursive=True)
    results = json.loads(Path(path).read_text())["results"]["colors"]
    return {k: v for k, v in results.items() if isinstance(v, int | float)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lmms-bench-startup-"))
    setup = Setup(tmp, args.samples, 0.0)
    # The runner's indexes live where the runner image puts them when it is built; the
    # first, unmeasured run writes them here.
    setup.env["LMMS_TASK_INDEX"] = str(tmp / "task-index.json")
    setup.env["LMMS_TRANSFORMERS_INDEX"] = str(tmp / "transformers-index.json")
    setup.env["LMMS_PUNCTUATION_INDEX"] = str(tmp / "punctuation.json")
    setup.env["LMMS_CODE_CACHE"] = str(tmp / "code-cache.marshal")
    times: dict[str, list[float]] = {"plain": [], "runner": []}
    try:
        warmup = run(setup.runner(tmp / "warmup"), setup.env)
        for i in range(args.repeats):
            times["plain"].append(run(setup.plain(tmp / f"plain{i}"), setup.env))
            times["runner"].append(run(setup.runner(tmp / f"runner{i}"), setup.env))
            print(
                f"round {i + 1}: plain {times['plain'][-1]:.1f}s, "
                f"runner {times['runner'][-1]:.1f}s",
                flush=True,
            )
    finally:
        setup.stop()
    same = all(scores(tmp / f"plain{i}") == scores(tmp / f"runner{i}") for i in range(args.repeats))
    plain_s, runner_s = statistics.median(times["plain"]), statistics.median(times["runner"])
    ratio = runner_s / plain_s
    example = scores(tmp / "plain0")
    text = (
        f"{SECTION}\n\n"
        f"`python tests/bench/runner_startup.py --samples {args.samples} --repeats "
        f"{args.repeats}` on {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}: "
        f"{args.samples} documents of a local task against an instant loopback model, "
        "so that start-up is nearly all of the time; paired runs of plain "
        "`python -m lmms_eval` and `lmms-runner` (the same lmms-eval 0.7.3 underneath). "
        "The runner takes lmms-eval's built-in task index from a file (written when the "
        "runner image is built; here by a first run, which took "
        f"{warmup:.1f} s) instead of reading about 2,000 YAML files, and transformers' "
        "structure of its model modules from another (instead of parsing ~2,600 files), "
        "lmms-eval's table of Unicode punctuation from a third (instead of testing 1.1 "
        "million code points) and the compiled methods of dataclasses from a fourth, imports "
        "Hugging Face `evaluate`, `qwen_vl_utils` (torchvision), lmms-eval's LLM-judge "
        "package, the OpenAI client's Responses API types and aiohttp transport, sacrebleu "
        "and decord only when a metric, backend or task first uses them (and, with the "
        "OpenAI-compatible backend in one process, torch and accelerate, which such a run "
        "never uses: `lmms_runner/lazytorch.py`), with Python's "
        "garbage collector off while it imports and the imports then frozen out of its "
        "reach (`gc.freeze`); pytablewriter is imported while the model answers, and the "
        "process ends once the interpreter's exit is done, without the C++ libraries' "
        "destructors.\n\n"
        "| | median wall time | runs |\n|---|---:|---|\n"
        f"| plain `python -m lmms_eval` | {plain_s:.1f} s | "
        f"{', '.join(f'{t:.1f}' for t in times['plain'])} |\n"
        f"| `lmms-runner` | {runner_s:.1f} s | "
        f"{', '.join(f'{t:.1f}' for t in times['runner'])} |\n\n"
        f"**Ratio runner / plain: {ratio:.3f}** (target P4: at most {TARGET}). Scores "
        f"identical in every pair: **{'yes' if same else 'NO'}** "
        f"({', '.join(f'{k} {v:.4g}' for k, v in sorted(example.items()))}).\n"
    )
    write_section(SECTION, text)
    print(text)
    return 0 if ratio <= TARGET and same else 1


if __name__ == "__main__":
    sys.exit(main())
