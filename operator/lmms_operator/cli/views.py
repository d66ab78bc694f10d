"""Command-line views for people without Grafana: runs, ranked leaderboards, and the
comparison of two runs (or two models of a leaderboard) with significance. Each view
reads, then returns what it shows and the exit code; ``commands`` parses and prints."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import k8s, leaderboards
from ..reconcile.columns import headline_score, tasks_label
from ..reconcile.identity import model_identity
from ..reconcile.reasons import ACTIVE
from ..reconcile.significance import DEFAULT_ALPHA, PAIRED_T_TEST, Row, Scores, compare
from ..reconcile.times import human_duration, seconds_between
from . import output as out
from . import samples as logged


@dataclass(frozen=True)
class Target:
    """Where a command looks: the connection, the namespace (``-n`` or the context's)
    and whether every namespace (``-A``)."""

    api: k8s.Api
    namespace: str
    all_namespaces: bool = False

    def split(self, ref: str) -> tuple[str, str]:
        """``NAME`` (in the namespace) or ``NAMESPACE/NAME``."""
        ns, _, name = ref.rpartition("/")
        return ns or self.namespace, name


# -- runs ----------------------------------------------------------------------------------------


def task_names(spec: Mapping[str, Any]) -> list[str]:
    """The run's tasks in the order the runner evaluates them (spec.tasks, then the
    custom tasks' own)."""
    names = [str(t) for t in spec.get("tasks") or []]
    for source in spec.get("customTasks") or []:
        if isinstance(source, Mapping):
            names += [str(t) for t in source.get("tasks") or [] if str(t) not in names]
    return names


def run_record(run: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """One EvalRun as the views show it; the status fields the operator writes for the
    columns are used where they are, and computed from the spec and the status where an
    older operator did not write them. ``durationSeconds`` of an active run grows."""
    meta, spec = run.get("metadata") or {}, run.get("spec") or {}
    status: dict[str, Any] = dict(run.get("status") or {})
    tasks = task_names(spec)
    start, end = status.get("startTime"), status.get("completionTime")
    active = status.get("phase") in ACTIVE
    seconds = (
        seconds_between(start, end) if end else seconds_between(start, now) if active else None
    )
    return {
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "phase": status.get("phase"),
        "reason": status.get("reason"),
        "progress": status.get("summary"),
        "model": status.get("model") or model_identity(spec),
        "tasks": tasks,
        "score": status.get("score") or headline_score(status.get("results") or [], tasks),
        "results": status.get("results") or [],
        "startTime": start,
        "completionTime": end,
        "durationSeconds": None if seconds is None else int(seconds),
        "created": meta.get("creationTimestamp"),
        # Whether the status describes the spec as it is (not an edit the operator has
        # yet to see).
        "upToDate": status.get("observedGeneration") == meta.get("generation"),
        "status": status,
    }


def _age(created: str | None, now: dt.datetime) -> str:
    seconds = seconds_between(created, now)
    return "<unknown>" if seconds is None else human_duration(seconds)


def runs(target: Target, output: str, now: dt.datetime) -> tuple[str, int]:
    """The EvalRuns of the namespace (or all): phase, model, tasks, score, duration, age."""
    items = target.api.list_evalruns(None if target.all_namespaces else target.namespace)
    records = [run_record(r, now) for r in items]
    if output in ("json", "yaml"):
        return out.data(records, output), out.OK
    if not records:
        where = "any namespace" if target.all_namespaces else f"namespace {target.namespace}"
        return f"No EvalRuns found in {where}.", out.OK
    wide = output == "wide"
    head = ["NAME", "PHASE", "PROGRESS", "MODEL", "TASKS", "SCORE", "DURATION", "AGE"]
    if wide:
        head += ["REASON", "JOB", "RESULTS"]
    rows = [(["NAMESPACE"] if target.all_namespaces else []) + head]
    for rec in records:
        seconds = rec["durationSeconds"]
        row = [
            str(rec["name"]),
            rec["phase"] or "-",
            rec["progress"] or "-",
            rec["model"] or "-",
            rec["status"].get("tasks") or tasks_label(rec["tasks"]) or "-",
            rec["score"] or "-",
            "-" if seconds is None else human_duration(seconds),
            _age(rec["created"], now),
        ]
        if wide:
            results = ", ".join(
                f"{x['task']}={x['value']:.4g}"
                for x in rec["results"]
                if isinstance(x.get("value"), int | float)
            )
            row += [rec["reason"] or "-", rec["status"].get("jobName") or "-", results or "-"]
        rows.append(([str(rec["namespace"])] if target.all_namespaces else []) + row)
    return out.table(rows), out.OK


# -- leaderboards ---------------------------------------------------------------------------------


def leaderboard_show(target: Target, name: str, output: str, task: str | None) -> tuple[str, int]:
    """The ranked table; ``-o json`` prints the entries as they are stored."""
    ns = target.namespace
    board = target.api.get_leaderboard(ns, name)
    if board is None:
        raise out.Failure(f"Leaderboard {ns}/{name} not found")
    entries, _ = leaderboards.read(target.api, ns, board)
    entries = [e for e in entries if task is None or e["task"] == task]
    entries.sort(key=lambda e: (e["task"], e["rank"] == 0, e["rank"], e["metric"]))
    if output in ("json", "yaml"):
        return out.data(entries, output), out.OK
    if not entries:
        return f"Leaderboard {ns}/{name} has no entries yet.", out.OK
    head = ["TASK", "RANK", "MODEL", "METRIC", "VALUE", "STDERR", "SETTINGS", "RUN"]
    rows = [[*head, "FINISHED"] if output == "wide" else head]
    for e in entries:
        arrow = "↓" if e.get("higherIsBetter") is False else "↑"
        row = [
            e["task"],
            str(e["rank"] or "-") + (" ≈1" if e.get("tiedWithBest") else ""),
            str(e["model"]),
            f"{e['metric']} {arrow}",
            _fmt(e.get("value")),
            _fmt(e.get("stderr"), ".2g"),
            str(e.get("settings") or ""),
            str(e.get("run")),
        ]
        rows.append([*row, str(e.get("finishedAt") or "")] if output == "wide" else row)
    text = out.table(rows)
    if any(e.get("tiedWithBest") for e in entries):
        text += (
            f"\n\n≈1: tied with the task's best within error (not significant at p < "
            f"{DEFAULT_ALPHA}, z-test on both standard errors)"
        )
    return text, out.OK


# -- compare --------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, int | float) else ""


def _run_results(target: Target, ref: str) -> tuple[str, list[dict[str, Any]], Scores | None]:
    """The run's results and, when it kept its logged samples, its per-document scores."""
    ns, name = target.split(ref)
    run = target.api.get_evalrun(ns, name)
    if run is None:
        raise out.Failure(f"EvalRun {ns}/{name} not found")
    status = run.get("status") or {}
    if not status.get("results"):
        raise out.Failure(f"EvalRun {ns}/{name} has no results (phase {status.get('phase')})")
    return f"{ns}/{name}", list(status["results"]), logged.run_scores(target.api, run)


def _model_entries(
    target: Target, board: dict[str, Any], model: str
) -> tuple[str, list[dict[str, Any]]]:
    ns = target.namespace
    entries, _ = leaderboards.read(target.api, ns, board)
    mine = [e for e in entries if e.get("model") == model]
    if not mine:
        raise out.Failure(f"Leaderboard {ns}/{board['metadata']['name']} has no model {model}")
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for e in sorted(mine, key=lambda e: str(e.get("finishedAt") or "")):
        latest[e["task"], e["metric"]] = e  # the newest finish per task and metric
    return model, list(latest.values())


def significance(
    a: list[dict[str, Any]],
    b: list[dict[str, Any]],
    alpha: float,
    samples: tuple[Scores | None, Scores | None] = (None, None),
) -> tuple[list[Row], str]:
    """The one place that chooses the test, and says which it was: when both runs kept
    their logged samples, the paired t-test on the per-document scores of the documents
    both scored (lmms-eval's paired test); else the z-test for independent runs, on
    lmms-eval's reported standard errors."""
    sa, sb = samples
    both = (sa, sb) if sa is not None and sb is not None else None
    rows = compare(a, b, alpha, both)
    counts = sorted(
        {r.difference.n or 0 for r in rows if r.difference and r.difference.test == PAIRED_T_TEST}
    )
    paired = sum(1 for r in rows if r.difference and r.difference.test == PAIRED_T_TEST)
    lines = [f"significant: p < {alpha}"]
    if paired:
        shown = ", ".join(str(n) for n in counts)
        lines.append(
            "paired: two-sided paired t-test on the per-document scores (lmms-eval's paired "
            f"test), documents matched by doc id, only those both runs scored ({shown} paired)"
        )
    if paired < len(rows):
        if paired:
            why = "the other rows: "
        elif both is None:
            why = "unpaired: both runs' logged samples (spec.evaluation.logSamples) are needed "
            why += "for the paired test; "
        else:
            why = "unpaired: no metric was scored per document in both runs; "
        lines.append(
            f"z: {why}two-sided z-test on the difference, standard error "
            "sqrt(stderr_A² + stderr_B²) from lmms-eval's reported standard errors"
        )
    return rows, "\n".join(lines)


def _lost(r: Row) -> bool:
    """A holds a score B lacks: the candidate dropped the metric (or the task), or its
    score is not a number (lmms-eval's NaN is stored as null). A gate fails closed: no
    score is no pass."""
    return r.a is not None and r.b is None


def _worse_unknown(r: Row) -> bool:
    """B is worse than A (in the metric's direction) where no standard error allows a
    test: its significance is unknown. A gate fails closed on it too: a candidate whose
    results carry no standard errors (a runner's termination message carries none) must
    not pass a large drop."""
    d = r.difference
    if d is None or d.significant is not None or d.diff == 0:
        return False
    return (d.diff > 0) == (r.higher_is_better is not False)


#: What makes ``compare`` exit with ``REGRESSION``.
FAIL_ON: dict[str, Callable[[Row], bool]] = {
    # B (the candidate) is significantly worse, worse where significance is unknown, or
    # has no score where A has one: fail-safe.
    "regression": lambda r: r.better == "A" or _worse_unknown(r) or _lost(r),
    # The same, but a drop whose significance is unknown passes.
    "significant-regression": lambda r: r.better == "A" or _lost(r),
    "difference": lambda r: (
        bool(r.difference and r.difference.significant) or (r.a is None) != (r.b is None)
    ),
    "never": lambda r: False,
}


def _verdict(r: Row) -> str:
    if _worse_unknown(r):
        return "B worse, significance unknown"
    if r.difference is not None:
        return r.difference.verdict
    return "no score in B" if _lost(r) else "no score in A" if r.b is not None else "no score"


def compare_results(
    target: Target, a: str, b: str, leaderboard: str | None, alpha: float, output: str, fail_on: str
) -> tuple[str, int]:
    """Per task and metric: both values, A - B, its standard error, z, p, whether the
    difference is significant at ``alpha`` and which side is better. A is the baseline
    and B the candidate: the exit code is ``REGRESSION`` when a row meets ``fail_on``."""
    if not 0 < alpha < 1:
        raise out.Failure(f"--alpha must be between 0 and 1 (exclusive), not {alpha}", out.USAGE)
    if leaderboard:
        board = target.api.get_leaderboard(target.namespace, leaderboard)
        if board is None:
            raise out.Failure(f"Leaderboard {target.namespace}/{leaderboard} not found")
        (name_a, res_a), (name_b, res_b) = (_model_entries(target, board, m) for m in (a, b))
        scores: tuple[Scores | None, Scores | None] = (None, None)
    else:
        (name_a, res_a, sa), (name_b, res_b, sb) = (_run_results(target, r) for r in (a, b))
        scores = (sa, sb)
    rows, told = significance(res_a, res_b, alpha, scores)
    failing = [r for r in rows if FAIL_ON[fail_on](r)]
    code = out.REGRESSION if failing else out.OK
    if output in ("json", "yaml"):
        return out.data([_row_json(r) for r in rows], output), code
    table = [["TASK", "METRIC", "A", "B", "A-B", "STDERR", "Z|T", "P", "TEST", "VERDICT", "BETTER"]]
    for r in rows:
        d = r.difference
        arrow = "↓" if r.higher_is_better is False else "↑"
        table.append(
            [
                r.task,
                f"{r.metric} {arrow}",
                _fmt(r.a),
                _fmt(r.b),
                _fmt(d.diff if d else None, "+.4g"),
                _fmt(d.stderr if d else None, ".2g"),
                _fmt(d.z if d else None, ".2f"),
                _fmt(d.p if d else None, ".3g"),
                _test(r),
                _verdict(r),
                r.better or "-",
            ]
        )
    text = f"A = {name_a}\nB = {name_b}\n\n{out.table(table)}\n\n{told}"
    if failing:
        what = "a regression" if "regression" in fail_on else "a significant difference"
        text += f"\n{what} (--fail-on {fail_on}): " + ", ".join(
            out.printable(f"{r.task} {r.metric}") for r in failing
        )
    return text, code


def _test(r: Row) -> str:
    d = r.difference
    if d is None:
        return "-"
    return f"paired n={d.n}" if d.test == PAIRED_T_TEST else "z"


def _row_json(r: Row) -> dict[str, Any]:
    d = r.difference
    return {
        "task": r.task,
        "metric": r.metric,
        "higherIsBetter": r.higher_is_better,
        "a": r.a,
        "b": r.b,
        "diff": d.diff if d else None,
        "stderr": d.stderr if d else None,
        "z": d.z if d else None,
        "p": d.p if d else None,
        "significant": d.significant if d else None,
        "test": d.test if d else None,
        "paired": d.n if d else None,
        "ci": list(d.ci) if d and d.ci else None,
        "better": r.better or None,
        "regression": FAIL_ON["regression"](r),
    }
