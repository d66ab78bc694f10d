"""Command-line views for people without Grafana: ranked leaderboards and runs."""

from __future__ import annotations

import json
from typing import Any

from . import k8s, leaderboards
from .reconcile.identity import model_identity


def _namespace(namespace: str | None) -> str:
    return namespace or k8s.current_namespace()


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def leaderboard_show(name: str, namespace: str | None, output: str, task: str | None) -> int:
    ns = _namespace(namespace)
    board = k8s.get_leaderboard(ns, name)
    if board is None:
        print(f"leaderboard {ns}/{name} not found")
        return 1
    entries, _ = leaderboards.read(ns, board)
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
                str(e["rank"] or "-"),
                str(e["model"]),
                f"{e['metric']} {arrow}",
                "" if e.get("value") is None else f"{e['value']:.4g}",
                "" if e.get("stderr") is None else f"{e['stderr']:.2g}",
                str(e.get("settings") or ""),
                str(e.get("run")),
            ]
        )
    print(_table(rows))
    return 0


def runs(namespace: str | None, all_namespaces: bool, output: str) -> int:
    items = k8s.list_evalruns(None if all_namespaces else _namespace(namespace))
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
