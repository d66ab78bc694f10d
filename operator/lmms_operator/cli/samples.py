"""The logged samples of a run, as ``compare`` pairs them: per task, per doc id, the
per-document metric values, read from the ConfigMaps that ``status.samples`` names.

The ConfigMaps live in the tenant's namespace, where anyone who may edit them can write
anything: a line that is not a record, an id that is not an int or a string, a score
that is not a finite number are left out; a doc id that appears twice in one task is
left out too (which line would count is not knowable); only ConfigMaps owned by the run
are read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .. import errors, k8s
from ..reconcile.significance import Scores

#: The most ConfigMaps read for one run (the operator writes at most 8).
MAX_CONFIG_MAPS = 16
MAX_KEY = 253


def _doc_id(value: Any) -> int | str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) <= MAX_KEY:
        return value
    return None


def parse_lines(text: str) -> dict[int | str, dict[str, float]]:
    """One task's records (JSON lines: ``id``, ``scores``) -> doc id -> metric -> score;
    what is not a record is left out, and so is every doc id seen twice."""
    docs: dict[int | str, dict[str, float]] = {}
    twice: set[int | str] = set()
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        doc = _doc_id(record.get("id"))
        scores = record.get("scores")
        if doc is None or not isinstance(scores, dict):
            continue
        values = {
            k: float(v)
            for k, v in scores.items()
            if isinstance(k, str)
            and len(k) <= MAX_KEY
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
        }
        if doc in docs or doc in twice:
            twice.add(doc)
            docs.pop(doc, None)
            continue
        docs[doc] = values
    return docs


def _owned(config_map: Mapping[str, Any], uid: str) -> bool:
    refs = (config_map.get("metadata") or {}).get("ownerReferences") or []
    return any(isinstance(r, Mapping) and r.get("uid") == uid for r in refs)


def run_scores(api: k8s.Api, run: Mapping[str, Any]) -> Scores | None:
    """The run's per-document scores by task; None when it kept no samples."""
    meta, status = run.get("metadata") or {}, run.get("status") or {}
    pointer = status.get("samples")
    tasks = pointer.get("tasks") if isinstance(pointer, Mapping) else None
    if not isinstance(tasks, list):
        return None
    cache: dict[str, Mapping[str, Any] | None] = {}
    out: dict[str, dict[int | str, dict[str, float]]] = {}
    for i, entry in enumerate(tasks):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("task"), str):
            continue
        text = []
        for name in entry.get("configMaps") or []:
            if not isinstance(name, str):
                continue
            if name not in cache:
                if len(cache) >= MAX_CONFIG_MAPS:
                    break
                try:
                    found = api.read_config_map(str(meta.get("namespace")), name)
                except (errors.Forbidden, errors.NotFound):
                    found = None  # not readable by this user: no samples from it
                cache[name] = found if found and _owned(found, str(meta.get("uid"))) else None
            data = (cache[name] or {}).get("data") or {}
            text.append(str(data.get(f"{i}.jsonl") or ""))
        docs = parse_lines("\n".join(text))
        if docs:
            out[entry["task"]] = docs
    return out or None
