"""Timestamps as the API server writes them (RFC 3339, UTC, seconds), and durations as
kubectl writes them. Pure: the time itself comes from the operator's one clock
(``lmms_operator.clock``), passed in."""

from __future__ import annotations

import datetime as dt


def fmt_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def human_duration(seconds: float) -> str:
    """A duration as kubectl writes ages (``HumanDuration`` of k8s.io/apimachinery):
    about two significant figures, ``45s``, ``3m12s``, ``47m``, ``5h3m``, ``3d4h``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" + (f"{s % 60}s" if s % 60 else "")
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" + (f"{minutes % 60}m" if minutes % 60 else "")
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" + (f"{hours % 24}h" if hours % 24 else "")
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" + (f"{days}d" if days else "")
    return f"{hours // 24 // 365}y"


def seconds_between(start: str | None, end: str | dt.datetime | None) -> float | None:
    """Seconds from one API timestamp to another (or to a time); None if either is
    missing or unreadable."""
    try:
        begin = parse_time(start)
        finish = end if isinstance(end, dt.datetime) else parse_time(end)
    except ValueError:
        return None
    if begin is None or finish is None:
        return None
    return (finish - begin).total_seconds()


def duration(start: str | None, end: str | None) -> str | None:
    """``status.duration``: from the start to the completion (None until both are
    known), as kubectl writes it."""
    seconds = seconds_between(start, end)
    return None if seconds is None else human_duration(seconds)
