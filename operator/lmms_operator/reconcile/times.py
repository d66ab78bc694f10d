"""Timestamps as the API server writes them (RFC 3339, UTC, seconds). Pure: the time
itself comes from the operator's one clock (``lmms_operator.clock``), passed in."""

from __future__ import annotations

import datetime as dt


def fmt_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
