"""Admission cost of the most expensive specs the schema admits (issue 30, item 2).

Each spec goes end to end through ``reconcile.validate.validate`` (schema, catalogue,
model-args allow-list and grammar, suggestions, kernel limits), and the script prints
the median and the worst of ``--repeats`` runs. Every pass must stay well under 1 s:
suggestions are offered for the first three unknown names only and only for names of
at most 64 characters, each against a length-filtered candidate list.

    python tests/bench/hostile_specs.py [--repeats 5]

No assertion: a figure on a busy machine is no test. The unit tests check behaviour.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO))

from lmms_operator import catalogue  # noqa: E402
from lmms_operator.errors import InvalidSpec  # noqa: E402
from lmms_operator.reconcile.validate import validate  # noqa: E402


def _name(i: int, length: int, seed: str = "zq") -> str:
    """A task name near real ones (so difflib's quick filters pass) and unknown."""
    stem = f"mmbench_en_dev_{seed}{i}_"
    return (stem + "textvqa_val_" * (length // 12 + 1))[:length]


def unknown_tasks() -> dict[str, Any]:
    """200 unknown task names of 200 characters, 20 custom sources of 100 names."""
    return {
        "model": {"type": "qwen2_vl"},
        "tasks": [_name(i, 200) for i in range(200)],
        "customTasks": [
            {"configMap": f"tasks-{j}", "tasks": [_name(i, 200, f"c{j}x") for i in range(100)]}
            for j in range(20)
        ],
    }


def short_unknown_tasks() -> dict[str, Any]:
    """200 unknown names of 60 characters (each could get a suggestion) and 2,000 custom
    names of the same shape among the candidates."""
    spec = unknown_tasks()
    spec["tasks"] = [_name(i, 60) for i in range(200)]
    for j, source in enumerate(spec["customTasks"]):
        source["tasks"] = [_name(i, 60, f"c{j}x") for i in range(100)]
    return spec


def unknown_model_args() -> dict[str, Any]:
    """64 model args of 4,096 characters under keys the backend does not take."""
    args = {f"max_pixels_{i:02d}_{'x' * 80}": "v" * 4096 for i in range(64)}
    return {"model": {"type": "qwen2_vl", "args": args}, "tasks": ["mme"]}


def accepted_model_args() -> dict[str, Any]:
    """64 model args of 4,096 characters that dummy accepts: every value goes through
    the grammar, the credential shapes, the round trip and the kernel limits."""
    args = {f"k{i:02d}_{'x' * 90}": ("abc-" * 1024)[:4096] for i in range(64)}
    return {"model": {"type": "dummy", "args": args}, "tasks": ["mme"]}


def everything() -> dict[str, Any]:
    spec = unknown_tasks()
    spec["model"] = unknown_model_args()["model"]
    spec["env"] = [{"name": f"NCCL_X{i}", "value": "v" * 4096} for i in range(64)]
    return spec


SPECS: dict[str, Callable[[], dict[str, Any]]] = {
    "200 unknown tasks x 200 chars, 20 x 100 custom names": unknown_tasks,
    "200 unknown tasks x 60 chars, 20 x 100 custom names": short_unknown_tasks,
    "64 unknown model args x 4096 chars": unknown_model_args,
    "64 accepted model args x 4096 chars (dummy)": accepted_model_args,
    "all of the above, with 64 env values x 4096 chars": everything,
}


def measure(build: Callable[[], dict[str, Any]], repeats: int) -> tuple[float, float, int]:
    times: list[float] = []
    problems = 0
    for _ in range(repeats):
        raw = build()
        start = time.perf_counter()
        try:
            validate(raw)
        except InvalidSpec as exc:
            problems = len(exc.problems)
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times), problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args(argv)
    catalogue.load()  # read once, as the operator does at start-up
    validate({"model": {"type": "qwen2_vl"}, "tasks": ["mme"]})
    print(f"{'spec':<56} {'median':>9} {'worst':>9} {'problems':>9}")
    rows = []
    for label, build in SPECS.items():
        median, worst, problems = measure(build, args.repeats)
        print(f"{label:<56} {median * 1000:>7.1f}ms {worst * 1000:>7.1f}ms {problems:>9}")
        rows.append(f"| {label} | {median * 1000:.1f} | {worst * 1000:.1f} | {problems} |")
    if args.write:
        import datetime as dt
        import os

        from tests.bench.docs import write_section

        write_section(
            "## Hostile specs (issue 30)",
            "## Hostile specs (issue 30)\n\n"
            f"`python tests/bench/hostile_specs.py --repeats {args.repeats}` ({dt.date.today()}, "
            f"this 2-core machine, load average {os.getloadavg()[0]:.1f}): `validate()` of the "
            "largest specs the schema admits, unknown names and suggestions included (it "
            "used to take minutes on 200 long unknown task names).\n\n"
            "| spec | median ms | worst ms | problems |\n|---|---|---|---|\n"
            + "\n".join(rows)
            + "\n",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
