"""Runner results -> what the EvalRun's status and its results ConfigMap hold. Pure."""

from __future__ import annotations

import json
import math
from typing import Any

from ..api.runner import ResultsSummary
from .grammar import escape_hidden

#: ConfigMaps are limited to 1 MiB; leave room for metadata.
CONFIG_MAP_BUDGET = 900 * 1024
#: What a runner (the tenant's code) reports is bounded before it reaches the status,
#: ConfigMaps, Leaderboards and metrics: this many tasks, names this long.
MAX_TASKS = 256
MAX_NAME = 253


def _name(name: str) -> str:
    """A task or metric name as reported (the tenant's code): escaped, then bounded; it
    is shown in a kubectl column, Leaderboards and the command line."""
    return escape_hidden(name)[:MAX_NAME]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def primary_results(summary: ResultsSummary) -> list[dict[str, Any]]:
    """``status.results``: the primary metric of every task."""
    out: list[dict[str, Any]] = []
    for task in summary.tasks[:MAX_TASKS]:
        metric = next((m for m in task.metrics if m.name == task.primary), None)
        if metric is None:
            continue
        # NaN and infinities are not JSON: the API server would refuse the status.
        entry: dict[str, Any] = {
            "task": _name(task.task),
            "metric": _name(metric.name),
            "value": _finite(metric.value),
        }
        if _finite(metric.stderr) is not None:
            entry["stderr"] = metric.stderr
        if metric.higher_is_better is not None:
            entry["higherIsBetter"] = metric.higher_is_better
        out.append(entry)
    return out


def _termination_doc(message: str | None) -> dict[str, Any] | None:
    if not message:
        return None
    try:
        doc = json.loads(message)
    except (ValueError, RecursionError):  # nested deeper than the decoder recurses
        return None
    if not isinstance(doc, dict) or doc.get("ok") is not True:
        return None
    return doc


def from_termination_message(message: str | None) -> list[dict[str, Any]] | None:
    """The last fallback when neither the runner nor the object store answers: the
    termination message holds every task's primary metric first."""
    doc = _termination_doc(message)
    if doc is None:
        return None
    out = []
    tasks = doc.get("tasks")
    for task, metrics in list(tasks.items() if isinstance(tasks, dict) else ())[:MAX_TASKS]:
        if isinstance(metrics, dict) and metrics:
            name, value = next(iter(metrics.items()))
            number = (
                value if isinstance(value, int | float) and not isinstance(value, bool) else None
            )
            out.append(
                {
                    "task": _name(str(task)),
                    "metric": _name(str(name)),
                    "value": _finite(number),
                }
            )
    return out


def location_from_termination_message(message: str | None) -> str | None:
    """The ``s3://`` URL of the uploaded output, when the runner uploaded it."""
    doc = _termination_doc(message)
    location = doc.get("s3") if doc else None
    return location if isinstance(location, str) and location.startswith("s3://") else None


def config_map_data(
    summary_json: str | None, primaries: list[dict[str, Any]], source: str, location: str | None
) -> dict[str, str]:
    """The results ConfigMap's data: the full summary when it fits under the 1 MiB
    object limit; else the primaries and where the full results are (the object store
    when one is configured)."""
    data = {"source": source, "primary.json": json.dumps(primaries, indent=1)}
    if location:
        data["location"] = location
    # primaries are bounded (MAX_TASKS, MAX_NAME): they always fit.
    others = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
    if summary_json and others + len(summary_json.encode()) + 12 < CONFIG_MAP_BUDGET:
        # Every key counts toward the object's 1 MiB, not only the summary.
        data["results.json"] = summary_json
    elif summary_json and location:
        data["note"] = (
            "the full results exceed the ConfigMap size limit: they are in the object "
            f"store at {location}"
        )
    elif summary_json:
        data["note"] = (
            "the full results exceed the ConfigMap size limit and no object store is "
            "configured: configure spec.output.s3 to keep them"
        )
    return data
