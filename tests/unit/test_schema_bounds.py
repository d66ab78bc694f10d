"""Bounded by construction: in the EvalRun and Leaderboard CRDs, spec and status, every
list has maxItems, every string maxLength (or an enum), every map maxProperties, every
integer a maximum, and nothing is schemaless (x-kubernetes-preserve-unknown-fields), so
the API server bounds the size and depth of all a tenant writes (issue 30)."""

from __future__ import annotations

from typing import Any

import pytest

from lmms_operator.api import crdgen

#: Fields allowed to go without a bound (none now).
KNOWN_GAPS: frozenset[str] = frozenset()


def _walk(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _walk(schema["additionalProperties"], f"{path}{{}}")
    return out


def unbounded(schema: dict[str, Any], path: str) -> list[str]:
    found = []
    for where, node in _walk(schema, path):
        kind = node.get("type")
        if node.get("x-kubernetes-preserve-unknown-fields"):
            found.append(f"{where}: schemaless")
        elif kind == "array" and "maxItems" not in node:
            found.append(f"{where}: no maxItems")
        elif kind == "string" and "maxLength" not in node and "enum" not in node:
            found.append(f"{where}: no maxLength")
        elif kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            found.append(f"{where}: no maxProperties")
        elif kind in ("integer", "number") and "maximum" not in node:
            found.append(f"{where}: no maximum")
    return found


@pytest.mark.parametrize("name", sorted(crdgen.all_crds()))
@pytest.mark.parametrize("part", ["spec", "status"])
def test_every_size_count_and_depth_is_bounded_in_the_schema(name: str, part: str) -> None:
    root = crdgen.all_crds()[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    found = [g for g in unbounded(root["properties"][part], part) if g not in KNOWN_GAPS]
    assert not found, "\n".join(found)


def test_the_check_finds_what_it_looks_for() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "array", "items": {"type": "string", "maxLength": 1}},
            "b": {"type": "string"},
            "c": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "d": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 1}},
            "e": {"type": "integer", "minimum": 0},
        },
    }
    assert unbounded(schema, "spec") == [
        "spec.a: no maxItems",
        "spec.b: no maxLength",
        "spec.c: schemaless",
        "spec.d: no maxProperties",
        "spec.e: no maximum",
    ]
