"""Leaderboard tables: entries in, ranked table out (JSON, CSV, Markdown). Pure.

An entry is keyed by (model identity, revision, settings, task, metric): a re-run of the
same model with the same settings on the same task replaces the older entry (the newer
finish wins, also when the re-run is the same EvalRun edited or re-created); a run with
other settings (``limit: 10``) gets a row of its own; publishing the same run (uid and
spec hash) twice changes nothing.

Ranks follow the values; an entry whose gap to the task's best is within error (not
significant at ``significance.DEFAULT_ALPHA`` by a z-test on both standard errors) is
marked ``tiedWithBest``, so that a table never presents noise as an order.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..api import LeaderboardEntry, LeaderboardStatus
from . import conditions as C
from . import identity
from . import reasons as R
from .significance import DEFAULT_ALPHA, tied_with_best
from .times import fmt_time

#: Bytes of table text per ConfigMap (JSON + CSV + Markdown), well under the 1 MiB limit.
SHARD_BUDGET = 700 * 1024

COLUMNS = (
    "rank",
    "task",
    "metric",
    "value",
    "stderr",
    "higherIsBetter",
    "tiedWithBest",
    "model",
    "revision",
    "settings",
    "run",
    "finishedAt",
)


def key(entry: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    return (
        str(entry.get("model")),
        str(entry.get("revision") or ""),
        str(entry.get("settings") or ""),
        str(entry["task"]),
        str(entry["metric"]),
    )


def _same_publish(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """The same evaluation published again (not a re-run of the same EvalRun name)."""
    if old.get("runUid") or new.get("runUid"):
        return bool(
            old.get("runUid") == new.get("runUid") and old.get("specHash") == new.get("specHash")
        )
    return bool(old.get("run") == new.get("run"))


def merge(
    existing: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Entries after adding ``new``; an older finish never replaces a newer one."""
    table = {key(e): dict(e) for e in existing}
    for entry in new:
        k = key(entry)
        old = table.get(k)
        if old is not None and _same_publish(old, entry):
            continue  # the same run published again
        if old is None or str(entry.get("finishedAt") or "") >= str(old.get("finishedAt") or ""):
            table[k] = dict(entry)
    return sorted(table.values(), key=lambda e: (e["task"], e["metric"], str(e.get("model"))))


def rank(
    entries: Iterable[Mapping[str, Any]],
    rank_by: Mapping[str, str],
    alpha: float = DEFAULT_ALPHA,
) -> list[dict[str, Any]]:
    """Ranks per task by its ranking metric (``rankBy`` or the first metric published for
    it), respecting higher_is_better (lower WER is better). Unranked metrics keep rank 0.
    Ranked entries other than the best say whether they are tied with it within error."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_task.setdefault(str(e["task"]), []).append(dict(e))
    out: list[dict[str, Any]] = []
    for task in sorted(by_task):
        rows = by_task[task]
        metric = rank_by.get(task) or rows[0]["metric"]
        ranked = [r for r in rows if r["metric"] == metric and _finite(r.get("value"))]
        lower_better = any(r.get("higherIsBetter") is False for r in ranked)
        ranked.sort(key=lambda r: (r["value"] if lower_better else -r["value"], str(r["model"])))
        for i, r in enumerate(ranked, start=1):
            r["rank"] = i
            r.pop("tiedWithBest", None)
            if i > 1:
                r["tiedWithBest"] = tied_with_best(r, ranked[0], alpha)
        rest = [dict(r, rank=0) for r in rows if r not in ranked]
        for r in rest:  # not ranked (now): no tie to claim
            r.pop("tiedWithBest", None)
        out += ranked + sorted(rest, key=lambda r: (r["metric"], str(r["model"])))
    return out


def _finite(value: Any) -> bool:
    """A score that can be ranked: a number, not NaN or infinite (NaN would sort first)."""
    return isinstance(value, int | float) and math.isfinite(value)


def top(ranked: Iterable[Mapping[str, Any]], n: int) -> list[dict[str, Any]]:
    return [dict(r) for r in ranked if 0 < int(r.get("rank") or 0) <= n]


def render(ranked: list[dict[str, Any]]) -> dict[str, str]:
    """The table as JSON, CSV and Markdown."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in ranked:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in COLUMNS})
    md = [
        "| rank | task | metric | value | ± | model | revision | settings | run |",
        "|---:|---|---|---:|---:|---|---|---|---|",
    ]
    tied_note = False
    for r in ranked:
        value = "" if r.get("value") is None else f"{r['value']:.4g}"
        err = "" if r.get("stderr") is None else f"{r['stderr']:.2g}"
        arrow = "↓" if r.get("higherIsBetter") is False else "↑"
        shown_rank = str(r.get("rank") or "")
        if r.get("tiedWithBest"):
            shown_rank += " ≈1"
            tied_note = True
        md.append(
            f"| {shown_rank} | {r['task']} | {r['metric']} {arrow} | {value} | "
            f"{err} | {r['model']} | {r.get('revision') or ''} | {r.get('settings') or ''} | "
            f"{r.get('run')} |"
        )
    if tied_note:
        md.append("")
        md.append(
            "≈1: tied with the best within error (the gap is not significant at "
            f"p < {DEFAULT_ALPHA}, z-test on both standard errors)."
        )
    return {
        "table.json": json.dumps(ranked, indent=1),
        "table.csv": buf.getvalue(),
        "table.md": "\n".join(md) + "\n",
    }


def shard(entries: list[dict[str, Any]], budget: int = SHARD_BUDGET) -> list[list[dict[str, Any]]]:
    """Splits the entries so that each ConfigMap's rendered table stays under ``budget``."""
    shards: list[list[dict[str, Any]]] = [[]]
    size = 0
    for e in entries:
        cost = 3 * len(json.dumps(e))  # JSON, CSV and Markdown of one row, roughly
        if shards[-1] and size + cost > budget:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += cost
    return shards


def entries_for_run(
    run: Mapping[str, Any],
    results: list[dict[str, Any]],
    finished_at: str,
    lmms_eval_version: str | None = None,
    commit: str | None = None,
    served: str | None = None,
) -> list[dict[str, Any]]:
    """Leaderboard entries of a finished run (its primary metric per task): the model's
    identity and the settings that change a score are part of each entry; the run's uid
    and spec hash tell a re-run from the same run published twice."""
    spec = run.get("spec") or {}
    model = spec.get("model") or {}
    status = run.get("status") or {}
    settings = identity.settings_label(spec, lmms_eval_version)
    return [
        {
            "model": identity.model_identity(spec, commit, served),
            "revision": model.get("revision"),
            "settings": settings,
            "runUid": run["metadata"].get("uid"),
            "specHash": status.get("specHash"),
            "task": r["task"],
            "metric": r["metric"],
            "value": r.get("value"),
            "stderr": r.get("stderr"),
            "higherIsBetter": r.get("higherIsBetter"),
            "run": f"{run['metadata']['namespace']}/{run['metadata']['name']}",
            "finishedAt": finished_at,
        }
        for r in results
    ]


def _entry(row: Mapping[str, Any], fields: set[str]) -> LeaderboardEntry | None:
    try:
        return LeaderboardEntry.model_validate({k: v for k, v in row.items() if k in fields})
    except ValueError:
        return None


def board_status(
    board: Mapping[str, Any],
    ranked: list[dict[str, Any]],
    config_maps: list[str],
    stored: tuple[str | None, str | None] | None,
    now: dt.datetime,
) -> dict[str, Any]:
    """A Leaderboard's status (``api.LeaderboardStatus``) for its ranked table, kept in
    ``config_maps`` (the index first); ``stored``: the object store's copy, as (its URL,
    why it failed), or None without one."""
    spec = board.get("spec") or {}
    fields = {f.alias or name for name, f in LeaderboardEntry.model_fields.items()}
    status = LeaderboardStatus(
        observed_generation=(board.get("metadata") or {}).get("generation"),
        entries=len(ranked),
        models=len({(str(e.get("model")), str(e.get("revision"))) for e in ranked}),
        tasks=len({str(e.get("task")) for e in ranked}),
        last_update=fmt_time(now),
        # The table is in the tenant's namespace: only the fields of an entry are shown,
        # and a row edited into something else is left out of the summary.
        top=[e for e in (_entry(r, fields) for r in top(ranked, int(spec.get("top") or 5))) if e],
        config_maps=config_maps,
    ).to_wire()
    if stored is not None:
        url, error = stored
        before = C.find((board.get("status") or {}).get("conditions"), R.OBJECT_STORE_SYNCED)
        if error is None and url is not None:
            status["tableLocation"] = url
            message = f"the table is in {url}table.json (also .csv, .md)"
            cond = C.condition(
                before, R.OBJECT_STORE_SYNCED, "True", R.LEADERBOARD_STORE_WRITTEN, message, now
            )
        else:
            cond = C.condition(
                before,
                R.OBJECT_STORE_SYNCED,
                "False",
                R.LEADERBOARD_STORE_FAILED,
                error or "",
                now,
            )
        status["conditions"] = [cond]
    return status
