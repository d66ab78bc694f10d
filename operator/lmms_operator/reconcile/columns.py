"""What ``kubectl get evalruns`` shows beside the phase: the model's identity, the tasks
as a list and the headline score (status fields, since a printer column reads one
field; the duration is ``times.duration``). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..api.status import COLUMN
from . import identity
from .plan import StatusPatch

#: The widest the Tasks column gets (a name longer than this is cut).
TASKS_WIDTH = 60


def tasks_label(names: Sequence[str], width: int = TASKS_WIDTH) -> str:
    """``a, b, c``, or as many names as fit in ``width`` and how many more:
    ``a, b, … (+3)``."""
    unique = list(dict.fromkeys(names))
    full = ", ".join(unique)
    if len(full) <= width:
        return full
    shown: list[str] = []
    for i, name in enumerate(unique):
        rest = len(unique) - i - 1
        candidate = ", ".join([*shown, name]) + (f", … (+{rest})" if rest else "")
        if len(candidate) > width:
            break
        shown.append(name)
    if not shown:  # not even the first name fits
        first = unique[0][: max(1, width - 10)] + "…"
        return first + (f" (+{len(unique) - 1})" if len(unique) > 1 else "")
    return ", ".join(shown) + f", … (+{len(unique) - len(shown)})"


def _value(result: Mapping[str, Any]) -> float | None:
    value = result.get("value")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def headline_score(results: Iterable[Mapping[str, Any]], tasks: Sequence[str] = ()) -> str | None:
    """The run's headline score: the primary metric of its first task (in ``tasks``
    order; else the first result with a value) as ``task=value``, with ``(+N)`` when N
    more results hold a value. None when no result holds one."""
    scored = [r for r in results if _value(r) is not None]
    if not scored:
        return None
    order = {name: i for i, name in enumerate(tasks)}
    first = min(scored, key=lambda r: order.get(str(r.get("task")), len(order)))
    more = f" (+{len(scored) - 1})" if len(scored) > 1 else ""
    value = f"={_value(first):.4g}{more}"
    return str(first.get("task"))[: COLUMN - len(value)] + value  # within the schema's bound


def model(spec: Mapping[str, Any], commit: str | None = None, served: str | None = None) -> str:
    """``status.model``: the identity Leaderboards name the model by (``commit``: the
    one the runner resolved; ``served``: the id a served model answered), within the
    schema's bound."""
    return identity.model_identity(spec, commit, served)[:COLUMN]


def missing_columns(
    status: Mapping[str, Any], spec: Mapping[str, Any], units: Sequence[str], *, new: bool
) -> StatusPatch:
    """The spec's columns that a status write should add: all that differ for a new
    evaluation (``new``), else only those the status lacks (a run from before they
    existed), so that a model publishing named with its resolved commit stays."""
    named, tasks = model(spec), tasks_label(units)
    out = StatusPatch()
    if status.get("model") != named if new else not status.get("model"):
        out["model"] = named
    if status.get("tasks") != tasks if new else not status.get("tasks"):
        out["tasks"] = tasks
    return out
