"""Conditions (KEP-1623), built here and nowhere else: ``type``, ``status``, a CamelCase
``reason``, ``message``, ``lastTransitionTime`` (moved only when the status changes) and
``observedGeneration``. Pure."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from .times import fmt_time

Status = Literal["True", "False", "Unknown"]
#: The API schema's bound on a condition's message.
MAX_MESSAGE = 32768


def condition(
    previous: Mapping[str, Any] | None,
    type_: str,
    status: Status,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int | None = None,
    *,
    max_message: int = MAX_MESSAGE,
) -> dict[str, Any]:
    """A condition as the API server stores it; ``previous`` (the condition of that type
    now, if any) keeps its lastTransitionTime when the status did not change."""
    same = previous is not None and previous.get("status") == status
    out: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:max_message],
        "lastTransitionTime": (previous or {}).get("lastTransitionTime") or fmt_time(now)
        if same
        else fmt_time(now),
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The condition of that type, or None."""
    return next((dict(c) for c in conditions or [] if c.get("type") == type_), None)


def put(
    conditions: Iterable[Mapping[str, Any]] | None, new: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The conditions with ``new`` in place of the one of its type (appended if none)."""
    others = [dict(c) for c in conditions or [] if c.get("type") != new["type"]]
    return [*others, dict(new)]


def same(old: Iterable[Mapping[str, Any]] | None, new: Iterable[Mapping[str, Any]]) -> bool:
    """Equal but for lastTransitionTime."""

    def key(c: Mapping[str, Any]) -> tuple[Any, ...]:
        return (
            c.get("type"),
            c.get("status"),
            c.get("reason"),
            c.get("message"),
            c.get("observedGeneration"),
        )

    return sorted(map(key, old or [])) == sorted(map(key, new))
