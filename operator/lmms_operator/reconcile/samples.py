"""A run's logged samples (``spec.evaluation.logSamples``) -> ConfigMaps owned by the run,
and ``status.samples``, the pointer to them. Pure.

The runner serves its samples compact (``lmms_runner.samples``: doc id, target, filtered
response, per-sample metric values); what it serves is the tenant's code speaking, so
it is bounded again here: names and text escaped and cut, at most
``MAX_CONFIG_MAPS`` ConfigMaps of ``CONFIG_MAP_BUDGET`` bytes each; a record that does
not fit is left out and its task says so (``truncated``).

One ConfigMap holds the records of one or more tasks: a key ``<i>.jsonl`` per task (``i``
its place in ``status.samples.tasks``; one JSON object a line: ``id``, ``target``,
``response``, ``scores``, ``cut``) and ``index.json``, which names the task of each key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ..api.runner import SAMPLE_SCORES_LIMIT, SAMPLE_TEXT_LIMIT, SampleRecord, SamplesReport
from . import job as jobs
from .grammar import escape_hidden
from .results import CONFIG_MAP_BUDGET, MAX_NAME, MAX_TASKS

#: The most ConfigMaps one run's samples take.
MAX_CONFIG_MAPS = 8
#: Labels the samples' ConfigMaps carry (with the managed-by label).
SAMPLES_OF = f"{jobs.LABEL_PREFIX}/samples-of"
INDEX_KEY = "index.json"
#: A text field after escaping: escapes may lengthen it, never past this.
MAX_TEXT = 4 * SAMPLE_TEXT_LIMIT


def _name(text: str) -> str:
    return escape_hidden(text)[:MAX_NAME]


def _line(record: SampleRecord) -> str:
    """One record as a line of its ConfigMap: tenant text escaped and bounded."""
    doc: dict[str, Any] = {"id": record.id if isinstance(record.id, int) else _name(record.id)}
    if record.target is not None:
        doc["target"] = escape_hidden(record.target)[:MAX_TEXT]
    if record.response is not None:
        doc["response"] = escape_hidden(record.response)[:MAX_TEXT]
    scores = {
        _name(k): v
        for k, v in list(record.scores.items())[:SAMPLE_SCORES_LIMIT]
        if math.isfinite(v)
    }
    if scores:
        doc["scores"] = scores
    if record.cut:
        doc["cut"] = True
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def labels(run: Mapping[str, Any]) -> dict[str, str]:
    """The labels of a run's samples' ConfigMaps (with the managed-by label)."""
    meta = run["metadata"]
    return {SAMPLES_OF: meta["uid"], jobs.LABEL_RUN: meta["name"][:63].rstrip("-._")}


def keep(
    job_name: str,
    report: SamplesReport,
    location: str | None = None,
    volume_claim: str | None = None,
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """The data of the samples' ConfigMaps by name (none: nothing to keep in them) and
    ``status.samples``. ``location``: where the runner uploaded its full output (the
    samples files are in it); ``volume_claim``: the cache volume the runner copied them
    to (``report.path``)."""
    # Lines by key in each map (joined at the end: one string grown line by line is
    # copied whole at each line), and each map's bytes: its lines and its index entries.
    maps: list[dict[str, list[str]]] = [{}]
    sizes = [2]  # "{}"
    tasks: list[dict[str, Any]] = []
    for i, task in enumerate(report.tasks[:MAX_TASKS]):
        key = f"{i}.jsonl"
        entry: dict[str, Any] = {
            "task": _name(task.task),
            "count": max(0, min(task.count, 2**31)),
            "kept": 0,
            "truncated": task.truncated,
            "configMaps": [],
        }
        if task.note:
            entry["note"] = escape_hidden(task.note)[:1024]
        # What the key costs a map it is new to: its name, and its entry in index.json.
        indexed = len(key) + 2 + len(json.dumps({key: entry["task"]}).encode())
        for record in task.records:
            line = _line(record) + "\n"
            size = len(line.encode())
            new = 0 if key in maps[-1] else indexed
            if sizes[-1] + size + new > CONFIG_MAP_BUDGET - len(INDEX_KEY):
                if len(maps) >= MAX_CONFIG_MAPS or size + indexed > CONFIG_MAP_BUDGET // 2:
                    entry["truncated"] = True
                    continue
                maps.append({})
                sizes.append(2)
                new = indexed
            n = len(maps) - 1
            maps[n].setdefault(key, []).append(line)
            sizes[n] += size + new
            entry["kept"] += 1
            name = f"{job_name}-samples-{n}"
            if name not in entry["configMaps"]:
                entry["configMaps"].append(name)
        if entry["kept"] < len(task.records) and "note" not in entry:
            entry["note"] = "records left out: over the ConfigMaps' size limit"
        tasks.append(entry)
    status: dict[str, Any] = {"tasks": tasks}
    if location:
        status["location"] = location
    if report.path and volume_claim:
        status["persistentVolumeClaim"] = volume_claim
        status["path"] = escape_hidden(report.path)[:1024]
    if not any(t["kept"] for t in tasks):
        return {}, status
    config_maps = {}
    for n, lines in enumerate(maps):
        data = {key: "".join(part) for key, part in lines.items()}
        index = {f"{i}.jsonl": t["task"] for i, t in enumerate(tasks) if f"{i}.jsonl" in data}
        config_maps[f"{job_name}-samples-{n}"] = {INDEX_KEY: json.dumps(index), **data}
    return config_maps, status
