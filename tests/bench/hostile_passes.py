"""CPU of one admission pass over the worst EvalRuns the schema admits (issue 30, item 1:
every pass over one object is bounded, about 1 s at worst).

Each case goes through the pure parts of a pass as the controller runs them: the spec
validated (``reconcile.validate``), the decision over a snapshot (``admission.decide``:
references, the fan-out plan with the custom tasks' document counts, ``job.build``), and,
for a spec that raises, the guard that ends it (``reconcile.guard``). The snapshot holds
the largest custom-task ConfigMaps a tenant can store (1 MiB each, 20 of them): many
YAML files, YAML nested deep, YAML aliases ("billion laughs"), JSON data nested deep.
The script prints the median and the worst of ``--repeats`` passes per case.

    python tests/bench/hostile_passes.py [--repeats 5]

No assertion: a figure on a busy machine is no test. The unit tests check behaviour.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO))

from lmms_operator import catalogue, errors  # noqa: E402
from lmms_operator.api.parse import parse_spec  # noqa: E402
from lmms_operator.config import Settings  # noqa: E402
from lmms_operator.k8s import jsonsplit  # noqa: E402
from lmms_operator.reconcile import admission, guard  # noqa: E402
from lmms_operator.reconcile.validate import validate  # noqa: E402
from tests.bench.docs import write_section  # noqa: E402

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SETTINGS = Settings()
RULES = admission.Rules(SETTINGS.policy, SETTINGS.runner, SETTINGS.timeouts, 600)
CONFIG_MAP_BYTES = 1024 * 1024  # what the API server stores at most, about


def _tasks(count: int) -> list[str]:
    """Tasks the default policy admits (none whose scoring code runs model output)."""
    cat = catalogue.load()
    return sorted(cat.tasks - cat.remote_code_tasks)[:count]


def _affinity_terms() -> dict[str, Any]:
    """32 terms, as large as 16 KiB lets them be."""
    values = [f"v{i:02d}" + "x" * 28 for i in range(10)]
    term = {"matchExpressions": [{"key": "k" * 60, "operator": "In", "values": values}]}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term] * 16},
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": term}]
            * 16,
        }
    }


def big_spec() -> dict[str, Any]:
    """Every list at its maximum: 200 tasks, 20 custom sources, parallelism 64."""
    tasks = _tasks(200)
    return {
        "model": {
            "type": "qwen2_vl",
            "args": {k: "x" * 200 for k in ("system_prompt", "reasoning_prompt")},
        },
        "tasks": tasks,
        "customTasks": [
            {"configMap": f"tasks-{j}", "tasks": [f"custom_{j}_{i}" for i in range(100)]}
            for j in range(20)
        ],
        "parallelism": 64,
        "env": [{"name": "NCCL_DEBUG", "value": "x" * 64}] * 64,
        "scheduling": {
            "nodeSelector": {f"k{i}": "v" for i in range(16)},
            "tolerations": [{"key": f"k{i}", "operator": "Exists"} for i in range(32)],
            "affinity": _affinity_terms(),
        },
    }


def _fill(files: dict[str, str], make: Callable[[int], tuple[str, str]]) -> dict[str, str]:
    i = 0
    while sum(map(len, files.values())) < CONFIG_MAP_BYTES:
        name, text = make(i)
        files[name] = text
        i += 1
    return files


def many_yaml(j: int) -> dict[str, str]:
    """100 task YAMLs of 10 KiB, each naming a data file, and the data files."""

    def make(i: int) -> tuple[str, str]:
        if i >= 100:
            return f"d{i}.jsonl", '{"q": 1}\n' * 500
        head = f"task: custom_{j}_{i}\ndataset_path: json\n"
        head += f"dataset_kwargs:\n  data_files:\n    test: d{i + 100}.jsonl\n"
        body = "".join(f"k{n}: [a, b, {{c: d}}]\n" for n in range(500))
        return f"t{i}.yaml", head + body[: 10 * 1024]

    return _fill({}, make)


def deep_yaml(j: int) -> dict[str, str]:
    """Task YAMLs nested as deep as 64 KiB lets them (flow and block)."""
    flow = "task: t\nx: " + "[" * 30000 + "]" * 30000 + "\n"
    block = "task: t\n" + "".join(" " * n + f"k{n}:\n" for n in range(300))
    return _fill({}, lambda i: (f"t{i}.yaml", flow if i % 2 else block))


def laughs_yaml(j: int) -> dict[str, str]:
    """The "billion laughs": nine levels of aliases, ten each."""
    lines = ["task: t", 'a0: &a0 ["lol"]']
    lines += [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]" for n in range(1, 10)]
    text = "\n".join(lines) + "\n"
    return _fill({}, lambda i: (f"t{i}.yaml", text))


def deep_json(j: int) -> dict[str, str]:
    """A task whose JSON data file is nested deep (json.loads recurses)."""
    data = "[" * 500_000 + "]" * 500_000
    yaml_ = "task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: d.json\n"
    return {"t.yaml": yaml_, "d.json": data}


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": "r" * 63, "namespace": "n" * 63, "uid": "u-1", "generation": 1}
    return {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": meta,
        "spec": spec,
    }


def admission_pass(
    spec: dict[str, Any], custom: Callable[[int], dict[str, str]]
) -> Callable[[], object]:
    configmaps = tuple({"data": custom(j)} for j in range(20))
    body = _run(spec)

    def one() -> object:
        try:
            validate(body["spec"], SETTINGS.policy)
        except Exception as exc:
            # Refused (or, mid-change elsewhere, raising): the guard's plan; the decision
            # is still timed, over the spec as the models parse it.
            refused = guard.failed(body, exc, NOW, "admitting")
            if isinstance(exc, RecursionError | errors.InvalidSpec) and refused is not None:
                return refused
        snap = admission.Snapshot(
            run=body,
            spec=parse_spec(body["spec"]),
            now=NOW,
            new_token="t",
            references=admission.References(frozenset(f"tasks-{j}" for j in range(20))),
            custom=configmaps,
        )
        try:
            return admission.decide(snap, RULES)
        except Exception as exc:
            return guard.failed(body, exc, NOW, "admitting")

    return one


def deep_affinity_pass() -> Callable[[], object]:
    """An affinity as deep as the store can hold (the decoder's limit), through the guard."""
    spec = big_spec()
    value: dict[str, Any] = {}
    for _ in range(900):
        value = {"x": value}
    spec["scheduling"]["affinity"] = value
    return admission_pass(spec, lambda j: {})


def decode_page() -> Callable[[], object]:
    """An informer's page of 250 runs, one of them nested 100000 deep."""
    good = json.dumps(_run(big_spec()))
    deep = '{"x":' * 100_000 + "1" + "}" * 100_000
    bad = good.replace('"scheduling": {', '"scheduling": {"affinity": ' + deep + ", ", 1)
    items = ",".join([good] * 124 + [bad] + [good] * 125)
    raw = ('{"kind": "EvalRunList", "metadata": {}, "items": [' + items + "]}").encode()
    return lambda: jsonsplit.page(raw)


CASES: dict[str, Callable[[], Callable[[], object]]] = {
    "largest spec, 20 ConfigMaps of many task YAMLs": lambda: admission_pass(big_spec(), many_yaml),
    "largest spec, 20 ConfigMaps of deep YAML": lambda: admission_pass(big_spec(), deep_yaml),
    "largest spec, 20 ConfigMaps of YAML aliases": lambda: admission_pass(big_spec(), laughs_yaml),
    "largest spec, 20 ConfigMaps of deep JSON data": lambda: admission_pass(big_spec(), deep_json),
    "affinity 900 deep (guard)": deep_affinity_pass,
    "decode a page of 250 runs, one 100000 deep": decode_page,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args(argv)
    sys.setrecursionlimit(1000)  # the interpreter's default, as in the operator
    print(f"{'case':52} {'p50 s':>8} {'max s':>8}  outcome")
    rows = []
    for name, build in CASES.items():
        one = build()
        times, outcome = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            outcome = one()
            times.append(time.perf_counter() - start)
        status = getattr(outcome, "status", None) or {}
        what = status.get("reason") or status.get("phase") or type(outcome).__name__
        if getattr(outcome, "evaluation", None) is not None:
            what = "Job planned"
        print(f"{name:52} {statistics.median(times):8.3f} {max(times):8.3f}  {what}")
        rows.append(f"| {name} | {statistics.median(times):.3f} | {max(times):.3f} | {what} |")
    if args.write:
        write_section(
            "## Hostile passes (issue 30)",
            "## Hostile passes (issue 30)\n\n"
            f"`python tests/bench/hostile_passes.py --repeats {args.repeats}` "
            f"({dt.date.today()}, this 2-core machine, {_load()}): the CPU of one pass "
            "over the worst EvalRuns the schema admits (target: about 1 s at worst).\n\n"
            "| case | p50 s | max s | outcome |\n|---|---|---|---|\n" + "\n".join(rows) + "\n",
        )
    return 0


def _load() -> str:
    import os

    return f"load average {os.getloadavg()[0]:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
