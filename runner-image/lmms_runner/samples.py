"""lmms-eval's logged samples (``--log_samples``: ``<date>_samples_<task>.jsonl``) ->
compact records the runner serves (``GET /samples``) and the operator keeps in
ConfigMaps, so that samples outlive the pod without an object store.

A record keeps what a comparison and a reader need: the doc id, the target, the filtered
response, and the per-sample metric values lmms-eval wrote beside them (numbers; a dict
with a numeric ``score`` counts as that score, as lmms-eval's own baseline comparison
reads it). Everything is bounded: text fields are cut to ``SAMPLE_TEXT_LIMIT``
characters, and when the records of the run exceed ``SAMPLES_BYTES_LIMIT``, the text is
dropped (the scores kept), then records are dropped (also past ``SAMPLES_MAX_RECORDS``
in all, the most the operator reads); each task says what was left out. Served as JSON
Lines (``SamplesReport.jsonl``).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from lmms_operator.api.runner import (
    SAMPLE_SCORES_LIMIT,
    SAMPLE_TEXT_LIMIT,
    SAMPLES_BYTES_LIMIT,
    SAMPLES_MAX_RECORDS,
    SampleRecord,
    SamplesReport,
    TaskSamples,
)

from .results import finite_number

#: lmms-eval's file name: ``<%Y%m%d_%H%M%S>_samples_<task>.jsonl``.
FILE_NAME = re.compile(r"^(?:\d{8}_\d{6}_)?samples_(.+)\.jsonl$")
#: The keys of a logged sample that are not metric values.
NOT_SCORES = frozenset(
    {
        "doc_id",
        "doc",
        "target",
        "arguments",
        "input",
        "resps",
        "filtered_resps",
        "token_counts",
        "doc_hash",
        "prompt_hash",
        "target_hash",
        "input_media",
        "filter",
        "metrics",
    }
)
#: The most records read from one task's file (a run's tasks are far smaller).
MAX_RECORDS = 200_000
MAX_KEY = 100


def sample_files(output: Path) -> dict[str, Path]:
    """The newest samples file of each task under the output directory."""
    found: dict[str, Path] = {}
    for path in sorted(output.rglob("*samples_*.jsonl"), key=lambda p: p.stat().st_mtime):
        match = FILE_NAME.match(path.name)
        if match and path.is_file():
            found[match.group(1)] = path  # the newest wins (sorted by mtime)
    return found


def score(value: Any) -> float | None:
    """A per-sample metric value as a number: the number itself, or a dict's numeric
    ``score`` (lmms-eval's MME-style records), else None."""
    number = finite_number(value)
    if number is None and isinstance(value, Mapping):
        number = finite_number(value.get("score"))
    return number


def _text(value: Any, redact: Callable[[str], str]) -> tuple[str | None, bool]:
    """A field as text, redacted, then cut to SAMPLE_TEXT_LIMIT characters (redacted
    first: a secret the cut splits would no longer be found); whether it was cut."""
    if value is None:
        return None, False
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = redact(text)
    if len(text) > SAMPLE_TEXT_LIMIT:
        return text[:SAMPLE_TEXT_LIMIT], True
    return text, False


def record(
    sample: Mapping[str, Any], redact: Callable[[str], str] = lambda s: s
) -> SampleRecord | None:
    """One logged sample, compact (secrets the run knows redacted from its text); None
    when it has no usable doc id."""
    doc_id = sample.get("doc_id")
    if isinstance(doc_id, bool) or not isinstance(doc_id, int | str):
        return None
    if isinstance(doc_id, str):
        doc_id = doc_id[:MAX_KEY]
    target, cut_target = _text(sample.get("target"), redact)
    response, cut_response = _text(sample.get("filtered_resps"), redact)
    scores: dict[str, float] = {}
    for key, value in sample.items():
        if key in NOT_SCORES or not isinstance(key, str) or len(scores) >= SAMPLE_SCORES_LIMIT:
            continue
        number = score(value)
        if number is not None:
            scores[key[:MAX_KEY]] = number
    return SampleRecord(
        id=doc_id,
        target=target,
        response=response,
        scores=scores,
        cut=cut_target or cut_response,
    )


def read_task(
    path: Path, redact: Callable[[str], str] = lambda s: s
) -> tuple[list[SampleRecord], int]:
    """A task's records (at most MAX_RECORDS) and how many lines were not records."""
    records: list[SampleRecord] = []
    skipped = 0
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            if len(records) >= MAX_RECORDS:
                skipped += 1
                continue
            try:
                sample = json.loads(line)
            except ValueError:
                skipped += 1
                continue
            rec = record(sample, redact) if isinstance(sample, dict) else None
            if rec is None:
                skipped += 1
            else:
                records.append(rec)
    return records, skipped


def _size(rec: SampleRecord) -> int:
    return len(rec.model_dump_json(by_alias=True, exclude_defaults=True).encode()) + 1


def compact(
    tasks: Iterable[tuple[str, list[SampleRecord], int]], limit: int = SAMPLES_BYTES_LIMIT
) -> list[TaskSamples]:
    """The tasks' records within ``limit`` bytes: whole; else without their text; else
    the first records of each task that fit (each task gets an equal share first)."""
    parts = [(task, records, skipped) for task, records, skipped in tasks]
    notes: dict[str, list[str]] = {task: [] for task, _, _ in parts}
    for task, records, skipped in parts:
        if skipped:
            notes[task].append(f"{skipped} line(s) not read")
        if any(r.cut for r in records):
            notes[task].append(f"text cut to {SAMPLE_TEXT_LIMIT} characters")
    sizes = {task: [_size(r) for r in records] for task, records, _ in parts}
    if sum(sum(s) for s in sizes.values()) > limit:
        parts = [
            (task, [r.model_copy(update={"target": None, "response": None}) for r in records], n)
            for task, records, n in parts
        ]
        for task, _, _ in parts:
            notes[task].append("text dropped to fit (scores kept)")
        sizes = {task: [_size(r) for r in records] for task, records, _ in parts}
    out: list[TaskSamples] = []
    left, left_records = limit, SAMPLES_MAX_RECORDS
    for i, (task, records, _) in enumerate(parts):
        # An equal share of what is left (bytes and records) for each task still to
        # come; unused share passes on to the next.
        share = left // (len(parts) - i)
        count_share = left_records // (len(parts) - i)
        kept, used = 0, 0
        for size in sizes[task]:
            if used + size > share or kept >= count_share:
                break
            kept, used = kept + 1, used + size
        left, left_records = left - used, left_records - kept
        if kept < len(records):
            notes[task].append(f"{len(records) - kept} record(s) dropped to fit")
        out.append(
            TaskSamples(
                task=task,
                count=len(records),
                truncated=bool(notes[task]),
                note="; ".join(notes[task]) or None,
                records=records[:kept],
            )
        )
    return out


def report(
    output: Path,
    keep: Path | None = None,
    volume_root: str | None = None,
    redact: Callable[[str], str] = lambda s: s,
) -> SamplesReport:
    """The run's logged samples; with ``keep`` (a directory on the cache volume), the full
    files are copied there too, and the report says where (relative to the volume)."""
    files = sample_files(output)
    path: str | None = None
    if keep is not None and files:
        keep.mkdir(parents=True, exist_ok=True)
        for task, source in files.items():
            shutil.copyfile(source, keep / f"samples_{task}.jsonl")
        path = str(keep)
        if volume_root and path.startswith(volume_root.rstrip("/") + "/"):
            path = path[len(volume_root.rstrip("/")) + 1 :]
    parts = []
    for task, source in files.items():
        records, skipped = read_task(source, redact)
        parts.append((task, records, skipped))
    return SamplesReport(tasks=compact(parts), path=path)
