"""A run's logged samples (``spec.evaluation.logSamples``) -> ConfigMaps owned by the run,
and ``status.samples``, the pointer to them. Pure.

The runner serves its samples compact (``lmms_runner.samples``: doc id, target, filtered
response, per-sample metric values); what it serves is the tenant's code speaking, so
it is bounded again here: names and text escaped and cut, at most
``MAX_CONFIG_MAPS`` ConfigMaps of ``CONFIG_MAP_BUDGET`` bytes each; a record that does
not fit is left out and its task says so (``truncated``).

The answer is JSON Lines (``SamplesReport.jsonl``), read a line at a time (``read``) into
the lines of the ConfigMaps, never into one object per record: at most
``SAMPLES_MAX_RESPONSE`` bytes, ``SAMPLES_MAX_RECORDS`` records and ``MAX_TASKS`` tasks, a
line over ``SAMPLES_MAX_LINE`` bytes unparsed; what the bounds leave out, each task's
note and the ``SamplesKept`` Event say. ``status.samples`` is bounded as a whole
(``MAX_POINTER`` bytes): notes cut to ``MAX_NOTE`` characters, the tasks past the bound
folded into one entry that says how many.

One ConfigMap holds the records of one or more tasks: a key ``<i>.jsonl`` per task (``i``
its place in ``status.samples.tasks``; one JSON object a line: ``id``, ``target``,
``response``, ``scores``, ``cut``) and ``index.json``, which names the task of each key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

from ..api.runner import (
    SAMPLE_SCORES_LIMIT,
    SAMPLE_TEXT_LIMIT,
    SAMPLES_MAX_LINE,
    SAMPLES_MAX_RECORDS,
    LoggedSamples,
    LoggedTask,
    SampleRecord,
    SamplesReport,
)
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
#: The most bytes of ``status.samples`` (UTF-8 JSON, as the API server stores it), and
#: the most characters of a task's note in it.
MAX_POINTER = 64 * 1024
MAX_NOTE = 200


def _cut(text: str, limit: int) -> str:
    """``text`` escaped and cut to ``limit`` characters: cut first (an escape is never
    shorter than its character), so that a long text costs no more than a short one."""
    return escape_hidden(text[:limit])[:limit]


def _name(text: str) -> str:
    return _cut(text, MAX_NAME)


def _line(record: SampleRecord) -> str:
    """One record as a line of its ConfigMap: tenant text escaped and bounded."""
    doc: dict[str, Any] = {"id": record.id if isinstance(record.id, int) else _name(record.id)}
    if record.target is not None:
        doc["target"] = _cut(record.target, MAX_TEXT)
    if record.response is not None:
        doc["response"] = _cut(record.response, MAX_TEXT)
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


class _Task:
    """A task being read: its header and the lines kept so far."""

    def __init__(self, header: Mapping[str, Any]) -> None:
        task, count = header.get("task"), header.get("count")
        self.task = _name(task if isinstance(task, str) else "")
        self.count = count if isinstance(count, int) and not isinstance(count, bool) else 0
        note = header.get("note")
        self.note = _cut(note, MAX_NOTE) if isinstance(note, str) else None
        self.truncated = header.get("truncated") is True
        self.lines: list[str] = []
        self.skipped = 0  # lines that are no record
        self.over = 0  # records past SAMPLES_MAX_RECORDS

    def done(self) -> LoggedTask:
        ours = []
        if self.over:
            ours.append(f"{self.over} record(s) over the operator's bound left out")
        if self.skipped:
            ours.append(f"{self.skipped} line(s) not records")
        note = "; ".join([*ours, *([self.note] if self.note else [])]) or None
        return LoggedTask(
            task=self.task,
            count=max(0, min(self.count, 2**31)),
            truncated=self.truncated or bool(ours),
            note=note,
            lines=tuple(self.lines),
        )


def _lines(body: bytes) -> Iterator[bytes]:
    """The lines of ``body``, one at a time (never all of them at once)."""
    start = 0
    while start < len(body):
        end = body.find(b"\n", start)
        end = len(body) if end < 0 else end
        yield body[start:end]
        start = end + 1


def _doc(line: bytes) -> dict[str, Any] | None:
    if len(line) > SAMPLES_MAX_LINE:
        return None
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def read(body: bytes) -> LoggedSamples:
    """A runner's ``GET /samples`` answer (JSON Lines, ``SamplesReport.jsonl``), a line at
    a time, within the bounds: at most SAMPLES_MAX_RECORDS records (the rest counted,
    not parsed), MAX_TASKS tasks, lines of SAMPLES_MAX_LINE bytes."""
    tasks: list[LoggedTask] = []
    current: _Task | None = None
    path: str | None = None
    kept = over = tasks_over = 0
    for line in _lines(body):
        if not line.strip():
            continue
        header = line.lstrip().startswith(b'{"task"')
        if not header and kept >= SAMPLES_MAX_RECORDS:
            over += 1  # not parsed: past the bound, a line costs no memory
            if current is not None:
                current.over += 1
            continue
        doc = _doc(line)
        if doc is not None and "task" in doc and "id" not in doc:
            if current is not None:
                tasks.append(current.done())
            current = _Task(doc) if len(tasks) < MAX_TASKS else None
            tasks_over += current is None
            continue
        if doc is not None and "path" in doc and "id" not in doc and path is None:
            path = doc["path"] if isinstance(doc["path"], str) else None
            continue
        if current is None:
            continue  # a record of no task, or of a task past MAX_TASKS
        try:
            record = SampleRecord.model_validate(doc)
        except ValueError:
            current.skipped += 1
            continue
        current.lines.append(_line(record) + "\n")
        kept += 1
    if current is not None:
        tasks.append(current.done())
    left = []
    if over:
        left.append(f"{over} record(s) over the operator's bound of {SAMPLES_MAX_RECORDS}")
    if tasks_over:
        left.append(f"{tasks_over} task(s) over the operator's bound of {MAX_TASKS}")
    return LoggedSamples(tuple(tasks), path, "; ".join(left) or None)


def from_report(report: SamplesReport) -> LoggedSamples:
    """A SamplesReport as the operator reads it from the runner (its JSON Lines)."""
    return read(report.jsonl().encode())


def _bounded(tasks: list[dict[str, Any]], rest: int) -> list[dict[str, Any]]:
    """The tasks' entries within MAX_POINTER bytes (``rest``: the pointer's other
    fields); those past the bound folded into one entry that says how many (their
    records stay in the ConfigMaps, under the keys each index.json names)."""
    size = rest + 1024  # 1024: room for the folded entry
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(tasks):
        size += len(json.dumps(entry, ensure_ascii=False).encode()) + 1
        if size > MAX_POINTER:
            left = tasks[i:]
            note = f"{len(left)} more task(s) left out of this list (status.samples' size bound)"
            if any(t["kept"] for t in left):
                note += "; each ConfigMap's index.json names their keys"
            folded = {
                "task": f"({len(left)} more tasks)",
                "count": sum(t["count"] for t in left),
                "kept": sum(t["kept"] for t in left),
                "truncated": True,
                "configMaps": [],  # none: this entry's <i>.jsonl is another task's
                "note": note,
            }
            return [*out, folded]
        out.append(entry)
    return out


def labels(run: Mapping[str, Any]) -> dict[str, str]:
    """The labels of a run's samples' ConfigMaps (with the managed-by label)."""
    meta = run["metadata"]
    return {SAMPLES_OF: meta["uid"], jobs.LABEL_RUN: meta["name"][:63].rstrip("-._")}


def keep(
    job_name: str,
    report: LoggedSamples | SamplesReport,
    location: str | None = None,
    volume_claim: str | None = None,
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """The data of the samples' ConfigMaps by name (none: nothing to keep in them) and
    ``status.samples``. ``location``: where the runner uploaded its full output (the
    samples files are in it); ``volume_claim``: the cache volume the runner copied them
    to (``report.path``)."""
    if isinstance(report, SamplesReport):
        report = from_report(report)
    # Lines by key in each map (joined at the end: one string grown line by line is
    # copied whole at each line), and each map's bytes: its lines and its index entries.
    maps: list[dict[str, list[str]]] = [{}]
    sizes = [2]  # "{}"
    tasks: list[dict[str, Any]] = []
    for i, task in enumerate(report.tasks[:MAX_TASKS]):
        key = f"{i}.jsonl"
        entry: dict[str, Any] = {
            "task": task.task,
            "count": task.count,
            "kept": 0,
            "truncated": task.truncated,
            "configMaps": [],
        }
        if task.note:
            entry["note"] = task.note[:MAX_NOTE]
        # What the key costs a map it is new to: its name, and its entry in index.json.
        indexed = len(key) + 2 + len(json.dumps({key: entry["task"]}).encode())
        for line in task.lines:
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
        if entry["kept"] < len(task.lines):
            why = "records left out: over the ConfigMaps' size limit"
            entry["note"] = f"{why}; {entry['note']}"[:MAX_NOTE] if "note" in entry else why
        tasks.append(entry)
    status: dict[str, Any] = {}
    if location:
        status["location"] = location
    if report.path and volume_claim:
        status["persistentVolumeClaim"] = volume_claim
        status["path"] = _cut(report.path, 1024)
    index = {f"{i}.jsonl": t["task"] for i, t in enumerate(tasks)}
    status = {"tasks": _bounded(tasks, len(json.dumps(status).encode())), **status}
    if not any(t["kept"] for t in tasks):
        return {}, status
    config_maps = {}
    for n, lines in enumerate(maps):
        data = {key: "".join(part) for key, part in lines.items()}
        named = {key: task for key, task in index.items() if key in data}
        config_maps[f"{job_name}-samples-{n}"] = {INDEX_KEY: json.dumps(named), **data}
    return config_maps, status
