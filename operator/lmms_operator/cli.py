"""Command-line views for people without Grafana: ranked leaderboards, runs, and the
comparison of two runs (or two models of a leaderboard) with significance."""

from __future__ import annotations

import json
from typing import Any

from . import k8s, leaderboards
from .reconcile.identity import model_identity
from .reconcile.significance import DEFAULT_ALPHA, Row, compare


def _namespace(namespace: str | None) -> str:
    return namespace or k8s.current_namespace()


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def leaderboard_show(name: str, namespace: str | None, output: str, task: str | None) -> int:
    ns = _namespace(namespace)
    api = k8s.Api()
    board = api.get_leaderboard(ns, name)
    if board is None:
        print(f"leaderboard {ns}/{name} not found")
        return 1
    entries, _ = leaderboards.read(api, ns, board)
    entries = [e for e in entries if task is None or e["task"] == task]
    entries.sort(key=lambda e: (e["task"], e["rank"] == 0, e["rank"], e["metric"]))
    if output == "json":
        print(json.dumps(entries, indent=1))
        return 0
    if not entries:
        print(f"leaderboard {ns}/{name} has no entries yet")
        return 0
    rows = [["TASK", "RANK", "MODEL", "METRIC", "VALUE", "STDERR", "SETTINGS", "RUN"]]
    for e in entries:
        arrow = "↓" if e.get("higherIsBetter") is False else "↑"
        rows.append(
            [
                e["task"],
                str(e["rank"] or "-") + (" ≈1" if e.get("tiedWithBest") else ""),
                str(e["model"]),
                f"{e['metric']} {arrow}",
                "" if e.get("value") is None else f"{e['value']:.4g}",
                "" if e.get("stderr") is None else f"{e['stderr']:.2g}",
                str(e.get("settings") or ""),
                str(e.get("run")),
            ]
        )
    print(_table(rows))
    if any(e.get("tiedWithBest") for e in entries):
        print(
            f"\n≈1: tied with the task's best within error (not significant at p < "
            f"{DEFAULT_ALPHA}, z-test on both standard errors)"
        )
    return 0


def _run_results(ref: str, namespace: str) -> tuple[str, list[dict[str, Any]]]:
    ns, _, name = ref.rpartition("/")
    ns = ns or namespace
    run = k8s.Api().get_evalrun(ns, name)
    if run is None:
        raise LookupError(f"EvalRun {ns}/{name} not found")
    status = run.get("status") or {}
    if not status.get("results"):
        raise LookupError(f"EvalRun {ns}/{name} has no results (phase {status.get('phase')})")
    return f"{ns}/{name}", list(status["results"])


def _model_entries(
    api: k8s.Api, board: dict[str, Any], ns: str, model: str
) -> tuple[str, list[dict[str, Any]]]:
    entries, _ = leaderboards.read(api, ns, board)
    mine = [e for e in entries if e.get("model") == model]
    if not mine:
        raise LookupError(f"leaderboard {ns}/{board['metadata']['name']} has no model {model}")
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for e in sorted(mine, key=lambda e: str(e.get("finishedAt") or "")):
        latest[e["task"], e["metric"]] = e  # the newest finish per task and metric
    return model, list(latest.values())


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "" if value is None else format(value, spec)


def compare_results(
    a: str,
    b: str,
    namespace: str | None,
    leaderboard: str | None,
    alpha: float,
    output: str,
) -> int:
    """Per task and metric: both values, A - B, its standard error, z, p, and whether
    the difference is significant at ``alpha`` (a two-sided z-test on lmms-eval's standard
    errors, for independent runs)."""
    if not 0 < alpha < 1:
        print(f"--alpha must be between 0 and 1 (exclusive), not {alpha}")
        return 2
    ns = _namespace(namespace)
    try:
        if leaderboard:
            api = k8s.Api()
            board = api.get_leaderboard(ns, leaderboard)
            if board is None:
                raise LookupError(f"leaderboard {ns}/{leaderboard} not found")
            (name_a, res_a), (name_b, res_b) = (_model_entries(api, board, ns, m) for m in (a, b))
        else:
            (name_a, res_a), (name_b, res_b) = (_run_results(r, ns) for r in (a, b))
    except LookupError as exc:
        print(exc)
        return 1
    rows = compare(res_a, res_b, alpha)
    if output == "json":
        print(json.dumps([_row_json(r) for r in rows], indent=1))
        return 0
    table = [["TASK", "METRIC", "A", "B", "A-B", "STDERR", "Z", "P", "VERDICT", "BETTER"]]
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
                d.verdict if d else "in one result only",
                r.better or "-",
            ]
        )
    print(f"A = {name_a}\nB = {name_b}\n")
    print(_table(table))
    print(
        f"\nsignificant: p < {alpha} (two-sided z-test on the difference, standard error "
        "sqrt(stderr_A² + stderr_B²) from lmms-eval's reported standard errors)"
    )
    return 0


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
        "better": r.better or None,
    }


def runs(namespace: str | None, all_namespaces: bool, output: str) -> int:
    items = k8s.Api().list_evalruns(None if all_namespaces else _namespace(namespace))
    if output == "json":
        print(
            json.dumps(
                [
                    {
                        "namespace": r["metadata"]["namespace"],
                        "name": r["metadata"]["name"],
                        "status": r.get("status") or {},
                    }
                    for r in items
                ],
                indent=1,
            )
        )
        return 0
    rows = [["NAMESPACE", "NAME", "MODEL", "PHASE", "PROGRESS", "REASON", "RESULTS"]]
    for r in items:
        status: dict[str, Any] = r.get("status") or {}
        results = ", ".join(
            f"{x['task']}={x['value']:.4g}"
            for x in status.get("results") or []
            if x.get("value") is not None
        )
        rows.append(
            [
                r["metadata"]["namespace"],
                r["metadata"]["name"],
                model_identity(r.get("spec") or {}),
                status.get("phase") or "-",
                status.get("summary") or "-",
                status.get("reason") or "-",
                results or "-",
            ]
        )
    print(_table(rows) if len(rows) > 1 else "no EvalRuns")
    return 0
