"""Property-based runs of the EvalRun round trip (issue 30), many more than CI's.

Specs from the CRD's schema (``tests.strategies.sample_specs``: a fixed seed, one in
four near the limits), each through ``tests.roundtrip.check`` under the default policy
and the widest one: validate, admission's plan, the runner's configuration and command
line, lmms-eval 0.7.3's parser. Counts the examples, the accepted, the refused by field,
the failures by kind (with the smallest example of each), and the slowest validate +
plan + build. Writes docs/benchmarks.md's section.

    python tests/bench/properties.py [--examples 20000] [--seconds 600] [--seed 30]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests import roundtrip, strategies  # noqa: E402
from tests.bench.docs import write_section  # noqa: E402

SECTION = "## Property-based runs (issue 30)"


def _kind(exc: BaseException) -> str:
    """A failure's kind: the assertion's first words, or the exception's type and place."""
    if isinstance(exc, AssertionError):
        text = re.sub(r"'[^']*'|\d+", "_", str(exc).splitlines()[0] if str(exc) else "assert")
        return "round trip: " + text[:90]
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"


def run(examples: int, seconds: float, seed: int) -> dict[str, Any]:
    counts: collections.Counter[str] = collections.Counter()
    refused: collections.Counter[str] = collections.Counter()
    failures: dict[str, tuple[int, str, str]] = {}
    slowest = 0.0
    start = time.monotonic()
    specs = strategies.sample_specs(seed)
    for n in range(examples):
        if time.monotonic() - start > seconds:
            break
        spec = next(specs)
        policy_name = "open" if n % 2 else "default"
        policy = roundtrip.OPEN_POLICY if n % 2 else roundtrip.DEFAULT_POLICY
        counts["examples"] += 1
        try:
            outcome = roundtrip.check(spec, policy)
        except Exception as exc:  # every failure is counted and shown
            counts["failed"] += 1
            kind = _kind(exc)
            text = json.dumps(spec, ensure_ascii=False)
            if kind not in failures or len(text) < failures[kind][0]:
                failures[kind] = (len(text), f"{policy_name}: {text}", str(exc)[:600])
            continue
        slowest = max(slowest, outcome.seconds)
        counts["accepted" if outcome.accepted else "refused"] += 1
        refused.update({re.sub(r"\[\d+\]", "[]", f) for f in outcome.fields})
    return {
        "counts": counts,
        "refused": refused,
        "failures": failures,
        "slowest": slowest,
        "elapsed": time.monotonic() - start,
        "seed": seed,
    }


def report(result: dict[str, Any]) -> str:
    counts, refused, failures = result["counts"], result["refused"], result["failures"]
    lines = [
        SECTION,
        "",
        f"`python tests/bench/properties.py` (seed {result['seed']}): {counts['examples']} specs "
        f"from the CRD's schema in {result['elapsed']:.0f} s, half under the default policy "
        "and half under the widest; each validated, planned by admission, read by the "
        "runner and parsed back by lmms-eval 0.7.3's own parser.",
        "",
        "| outcome | specs |",
        "|---|---|",
        f"| accepted and round-tripped | {counts['accepted']} |",
        f"| refused with problems naming fields | {counts['refused']} |",
        f"| **failed** (accepted but did not round-trip, or raised) | {counts['failed']} |",
        "",
        f"Slowest validate + plan + build: {result['slowest'] * 1000:.1f} ms.",
        "",
        "Refused, by field (a spec counts once per field):",
        "",
        "| field | specs |",
        "|---|---|",
    ]
    lines += [f"| `{f}` | {n} |" for f, n in refused.most_common(15)]
    if failures:
        lines += ["", "Failures, by kind, with the smallest spec found:", ""]
        for kind, (_, spec, message) in sorted(failures.items()):
            lines += [f"- {kind}", f"  - message: `{message[:300]}`", f"  - spec: `{spec[:400]}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=600.0, help="time budget")
    parser.add_argument("--seed", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    text = report(run(args.examples, args.seconds, args.seed))
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
