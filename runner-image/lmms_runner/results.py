"""lmms-eval's ``*_results.json`` -> a compact, typed summary; and the termination message.

Success means a parsed results file holding every requested task, whatever lmms-eval's
exit code said.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmms_operator.api.runner import (
    TERMINATION_MESSAGE_LIMIT,
    Metric,
    Provenance,
    ResultsSummary,
    TaskResult,
)


class ResultsError(RuntimeError):
    """lmms-eval produced no usable results (exit code 3)."""


def find_results_file(output_dir: Path) -> Path | None:
    files = sorted(output_dir.rglob("*_results.json"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def finite_number(value: Any) -> float | None:
    """A JSON value as a finite float (a bool counts as 0 or 1), else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


#: At most this many values of one nested metric are kept.
MAX_LEAVES = 1000


def _flatten(name: str, value: Any) -> list[tuple[str, Any]]:
    """A metric whose value nests dicts (or lists) becomes one metric per leaf, with
    dotted names (``mme_score.perception.OCR``), as dashboards and tables expect."""
    out: list[tuple[str, Any]] = []

    def walk(prefix: str, v: Any) -> None:
        if len(out) >= MAX_LEAVES:
            return
        if isinstance(v, dict) and v:
            for k, sub in v.items():
                walk(f"{prefix}.{k}", sub)
        elif isinstance(v, list) and v and all(isinstance(x, dict | list | int | float) for x in v):
            for i, sub in enumerate(v):
                walk(f"{prefix}.{i}", sub)
        else:
            out.append((prefix, v))

    walk(name, value)
    return out


def parse(data: dict[str, Any], provenance: Provenance) -> ResultsSummary:
    results = data.get("results") or {}
    hib_all = data.get("higher_is_better") or {}
    samples = data.get("n-samples") or {}
    groups = {g for g, subs in (data.get("group_subtasks") or {}).items() if subs}
    tasks: list[TaskResult] = []
    for task, values in results.items():
        if not isinstance(values, dict):
            continue
        hib = hib_all.get(task) or {}
        metrics: list[Metric] = []
        for key, value in values.items():
            if key == "alias" or "," not in key:
                continue
            metric, _, filt = key.partition(",")
            if "_stderr" in metric:
                continue
            stderr = finite_number(values.get(f"{metric}_stderr,{filt}"))
            for leaf, leaf_value in _flatten(metric, value):
                number = finite_number(leaf_value)
                metrics.append(
                    Metric(
                        name=leaf if filt in ("none", "") else f"{leaf},{filt}",
                        value=number,
                        raw=None if number is not None else json.dumps(leaf_value)[:200],
                        stderr=stderr if leaf == metric else None,
                        higher_is_better=hib.get(metric),
                    )
                )
        order = list(hib)
        metrics.sort(
            key=lambda m: (
                order.index(m.name.split(",")[0]) if m.name.split(",")[0] in order else len(order),
                m.name,
            )
        )
        primary = next((m.name for m in metrics if m.value is not None), None)
        n = samples.get(task) or {}
        tasks.append(
            TaskResult(
                task=task,
                group=task in groups,
                primary=primary,
                metrics=metrics,
                samples=n.get("effective") if isinstance(n, dict) else None,
            )
        )
    return ResultsSummary(
        tasks=tasks,
        provenance=provenance,
        evaluation_seconds=finite_number(data.get("total_evaluation_time_seconds")),
    )


def missing_tasks(
    data: dict[str, Any], requested: Iterable[str], tags: Iterable[str] = ()
) -> list[str]:
    """Requested task (or group) names the results do not hold."""
    present = set(data.get("results") or {}) | set(data.get("group_subtasks") or {})
    tag_names = set(tags)
    missing = []
    for name in requested:
        if name in present:
            continue
        if name in tag_names and present:
            continue  # a tag expands to its tasks and has no entry of its own
        missing.append(name)
    return missing


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"cannot read {path.name}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ResultsError(f"{path.name} holds no results")
    return data


def termination_message(summary: ResultsSummary, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """At most ``limit`` bytes of JSON: every task's primary metric first (the first key
    of each task), then the other metrics while they fit; ``truncated`` says when
    something was left out."""
    primaries: dict[str, dict[str, float | None]] = {}
    for t in summary.tasks:
        primary = next((m for m in t.metrics if m.name == t.primary), None)
        primaries[t.task] = {primary.name: primary.value} if primary else {}
    doc: dict[str, Any] = {"v": 1, "ok": True, "truncated": False, "tasks": {}}
    if summary.s3_location:
        doc["s3"] = summary.s3_location

    def fits() -> bool:
        return len(json.dumps(doc, separators=(",", ":")).encode()) <= limit

    for name, values in primaries.items():
        doc["tasks"][name] = values
        if not fits():
            del doc["tasks"][name]
            doc["truncated"] = True
            return json.dumps(doc, separators=(",", ":"))
    for t in summary.tasks:
        for m in t.metrics:
            if m.name == t.primary or m.value is None:
                continue
            doc["tasks"][t.task][m.name] = m.value
            if not fits():
                del doc["tasks"][t.task][m.name]
                doc["truncated"] = True
    return json.dumps(doc, separators=(",", ":"))


def failure_message(reason: str, message: str, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    doc = {"v": 1, "ok": False, "reason": reason, "message": message}
    text = json.dumps(doc, separators=(",", ":"))
    if len(text.encode()) > limit:
        doc["message"] = message[: max(0, limit - 200)] + "..."
        text = json.dumps(doc, separators=(",", ":"))
    return text


#: Keys of a results file that map task (or group) names to values.
PER_TASK_KEYS = (
    "results",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
    "task_hashes",
)


def combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results document from the results of several lmms-eval processes."""
    if not parts:
        raise ResultsError("no results to combine")
    combined: dict[str, Any] = {k: v for k, v in parts[-1].items() if k not in PER_TASK_KEYS}
    for key in PER_TASK_KEYS:
        merged: dict[str, Any] = {}
        for part in parts:
            value = part.get(key)
            if isinstance(value, dict):
                merged.update(value)
        combined[key] = merged
    seconds = [p.get("total_evaluation_time_seconds") for p in parts]
    numbers = [
        float(x)
        for x in seconds
        if isinstance(x, int | float | str) and str(x).replace(".", "", 1).isdigit()
    ]
    if numbers:
        combined["total_evaluation_time_seconds"] = sum(numbers)
    return combined
