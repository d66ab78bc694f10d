"""A spec as the API server stored it -> the typed spec, or problems naming each field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ..errors import InvalidSpec, Problem
from .evalrun import EvalRunSpec


def _path(loc: tuple[int | str, ...]) -> str:
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse_spec(raw: Mapping[str, Any] | None) -> EvalRunSpec:
    """Parses a spec as the API server stored it; raises InvalidSpec naming each field."""
    if not isinstance(raw, Mapping):
        raise InvalidSpec([Problem("spec", "required")])
    try:
        return EvalRunSpec.model_validate(dict(raw))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(
                p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function"))
            )
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown field"
            problems.append(Problem(_path(loc), message))
        raise InvalidSpec(problems) from None
