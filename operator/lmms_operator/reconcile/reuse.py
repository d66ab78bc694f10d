"""Reuse: never evaluate the same thing twice. What an evaluation *is* (its identity),
and the index entries that map an identity to its results. Pure functions.

**Evaluation identity** of one entry of a run's task list (a task, group or tag):

- **the model**, only when it is *pinned*: ``spec.model.revision`` is a full commit id
  (40 hex digits), or ``spec.model.version`` declares a version (an API model's dated
  release, a checkpoint baked into an image). A branch or tag can move, so a run whose
  model is not pinned is neither served from the index nor added to it. With it: the
  backend (``model.type``), the checkpoint (``pretrained``, presets resolved) and every
  ``model.args`` entry (an endpoint included), the engine that serves it
  (``spec.model.engine``), and the runner image when ``spec.image`` names one;
- **the task** and a hash of its definition: a built-in task is fixed by the lmms-eval
  version (the YAML in that release); with ``spec.customTasks`` every entry's definition
  includes the content of the run's custom-task ConfigMaps (a custom task may override a
  built-in name, and a change to any file of them is a new definition);
- **the settings that change scores**: ``limit``, ``numFewshot``, ``batchSize``,
  ``seed`` and the generation settings (the chat template is part of the model args);
- **the lmms-eval version** the runner reported;
- **the endpoint and the judge**, where the run names them (``modelendpoint.identity``):
  a model served by reference counts as pinned only when its args name the served id
  (``model_version``) and ``spec.model.version`` declares its version.

``reuse_key`` is everything but the task; an index entry is a ConfigMap in the run's
namespace, labelled with the hash of the ``reuse_key`` (one list finds a run's
candidates) and named after the hash of the whole identity.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field, ValidationError

from .. import presets
from ..api import EvalRunSpec, ReusedResult
from ..api.base import ApiModel
from ..api.runner import ResultsSummary, TaskResult, results_prefix
from . import modelendpoint
from .identity import API_MODEL_KEYS, model_identity
from .job import (
    LABEL_MANAGED_BY,
    LABEL_PREFIX,
    LABEL_RUN_UID,
    LABEL_SPEC_HASH,
    MANAGED_BY,
    RunRef,
)

#: A full git commit id: the only revision that cannot move.
COMMIT = re.compile(r"^[0-9a-f]{40}$")
#: Labels of an index entry (a ConfigMap in the run's namespace, owned by no run).
LABEL_INDEX = f"{LABEL_PREFIX}/evaluation-index"
LABEL_KEY = f"{LABEL_PREFIX}/evaluation-key"
ENTRY_PREFIX = "lmms-evaluation-"
#: An index entry's results are the tenant's data: bounded before use.
MAX_ENTRY_BYTES = 512 * 1024
MAX_ENTRY_TASKS = 256


def not_pinned(spec: EvalRunSpec) -> str | None:
    """Why the run's model cannot be reused (None when it is pinned)."""
    if spec.model.endpoint is not None and not any(spec.model.args.get(k) for k in API_MODEL_KEYS):
        return (
            "the served model's id is not named (spec.model.args.model_version): the "
            "operator never asks the endpoint what it serves, so it cannot know it is the "
            "same model"
        )
    if spec.model.version:
        return None
    if spec.model.revision and COMMIT.match(spec.model.revision):
        return None
    return (
        "the model is not pinned: spec.model.revision is not a commit id (40 hex digits) "
        "and spec.model.version is not set"
    )


def definitions_hash(custom_data: Iterable[Mapping[str, Any]]) -> str:
    """A hash of the custom-task ConfigMaps' content (``data`` and ``binaryData``)."""
    digest = hashlib.sha256()
    for cm in custom_data:
        for field in ("data", "binaryData"):
            for key, value in sorted((cm.get(field) or {}).items()):
                digest.update(f"{field}\0{key}\0{value}\0".encode())
        digest.update(b"\1")
    return digest.hexdigest()


def reuse_key(spec: EvalRunSpec, lmms_eval_version: str, definitions: str | None) -> dict[str, Any]:
    """Everything of a run's evaluation identity but the task (see the module's doc)."""
    pretrained, args = presets.resolve(spec.model.type, spec.model.pretrained, spec.model.args)
    wire = spec.to_wire()
    ev = spec.evaluation
    return {
        "model": model_identity(wire),
        "modelType": spec.model.type,
        "pretrained": pretrained,
        "revision": spec.model.revision,
        "modelVersion": spec.model.version,
        "modelArgs": dict(sorted(args.items())),
        "image": spec.image or "",
        "limit": ev.limit,
        "numFewshot": ev.num_fewshot,
        "batchSize": ev.batch_size,
        "seed": ev.seed,
        "generation": ev.generation.to_wire() if ev.generation else {},
        "lmmsEval": lmms_eval_version,
        "customTaskDefinitions": definitions,
        # (Only where set: the keys of runs without an engine stay what they were.)
        **({"engine": spec.model.engine} if spec.model.engine else {}),
        **_served_key(wire),
    }


def _served_key(wire: Mapping[str, Any]) -> dict[str, Any]:
    """The endpoint and the judge (only where the run names them: the keys of earlier
    entries stay as they were)."""
    key: dict[str, Any] = {}
    endpoint = (wire.get("model") or {}).get("endpoint")
    if endpoint:
        key["endpoint"] = modelendpoint.identity(endpoint)
    judge = modelendpoint.judge_identity(wire)
    if judge:
        key["judge"] = judge
    return key


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def key_label(key: Mapping[str, Any]) -> str:
    """The label value that finds every index entry of one ``reuse_key``."""
    return _digest(key)[:40]


def entry_name(key: Mapping[str, Any], task: str) -> str:
    """The index entry's ConfigMap name: the hash of the whole identity."""
    return ENTRY_PREFIX + _digest({"key": dict(key), "task": task})[:40]


class Source(ApiModel):
    """The run whose evaluation an index entry holds."""

    namespace: str
    run: str
    uid: str
    job: str | None = None
    completed_at: str | None = None
    image: str | None = None
    location: str | None = Field(default=None, description="Its output in the object store.")


class Entry(ApiModel):
    """One index entry: the results of one entry of a run's task list."""

    task: str
    key: dict[str, Any]
    results: list[TaskResult]
    provenance: dict[str, Any]
    source: Source


def entry_config_map(namespace: str, entry: Entry) -> dict[str, Any]:
    """The ConfigMap of an index entry: owned by no run, so that it outlives the run
    that produced it; in the run's namespace, so that only that namespace reads it."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": entry_name(entry.key, entry.task),
            "namespace": namespace,
            "labels": {
                LABEL_MANAGED_BY: MANAGED_BY,
                LABEL_INDEX: "true",
                LABEL_KEY: key_label(entry.key),
            },
        },
        "data": {"entry.json": entry.model_dump_json(by_alias=True, indent=1)},
    }


def read_entry(cm: Mapping[str, Any], key: Mapping[str, Any]) -> Entry | None:
    """An index entry from its ConfigMap, or None when it is not one of ``key``'s or is
    malformed (anyone who may edit ConfigMaps in the namespace may have edited it)."""
    text = (cm.get("data") or {}).get("entry.json")
    if not isinstance(text, str) or len(text) > MAX_ENTRY_BYTES:
        return None
    try:
        entry = Entry.model_validate_json(text)
    except (ValidationError, ValueError):
        return None
    if entry.key != dict(key) or not entry.results or len(entry.results) > MAX_ENTRY_TASKS:
        return None
    if (cm.get("metadata") or {}).get("name") != entry_name(key, entry.task):
        return None
    return entry


def attribute(
    units: list[str], summary: ResultsSummary, aggregates: frozenset[str]
) -> dict[str, list[TaskResult]]:
    """Which results belong to which entry of the task list. With one entry, all of
    them; otherwise an entry that is a single task owns the result of its name, and an
    entry that is a group or tag (``aggregates``) owns results that cannot be told
    apart from the others': it is not indexed."""
    if len(units) == 1:
        return {units[0]: list(summary.tasks)} if summary.tasks else {}
    out: dict[str, list[TaskResult]] = {}
    for unit in units:
        if unit in aggregates:
            continue
        own = [t for t in summary.tasks if t.task == unit and not t.group]
        if own:
            out[unit] = own
    return out


def reused_summary(entries: list[Entry]) -> ResultsSummary:
    """The results of index entries as one summary (the first entry's provenance)."""
    tasks: list[TaskResult] = []
    for entry in entries:
        tasks += entry.results
    provenance = dict(entries[0].provenance)
    return ResultsSummary.model_validate(
        {"tasks": [t.to_wire() for t in tasks], "provenance": provenance}
    )


def in_unit_order(summary: ResultsSummary, units: list[str]) -> ResultsSummary:
    """The summary's tasks in the order of the run's task list (others keep their place
    after the entries before them)."""
    rank = {u: i for i, u in enumerate(units)}
    indexed = []
    last = 0
    for pos, task in enumerate(summary.tasks):
        last = rank.get(task.task, last)
        indexed.append((last, pos, task))
    return summary.model_copy(update={"tasks": [t for _, _, t in sorted(indexed)]})


def reused_status(entries: list[Entry], namespace: str) -> list[dict[str, Any]]:
    """status.reused: which run evaluated each reused entry of the task list."""
    return [
        ReusedResult(
            task=e.task,
            run=f"{e.source.namespace}/{e.source.run}",
            run_uid=e.source.uid,
            completed_at=e.source.completed_at,
            index_entry=entry_name(e.key, e.task),
        ).to_wire()
        for e in entries
    ]


def kept_name(job_name: str) -> str:
    """The ConfigMap that keeps the index entries a run reuses, beside its Job."""
    return f"{job_name}-reused"


def kept_config_map(
    run: RunRef,
    job_name: str,
    hash_: str,
    key: Mapping[str, Any],
    entries: Mapping[str, Entry],
) -> dict[str, Any]:
    """The reused tasks' index entries, kept with the run (an entry deleted meanwhile
    loses nothing): merged with the Job's results when they are published."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": kept_name(job_name),
            "namespace": run.namespace,
            "labels": {
                LABEL_MANAGED_BY: MANAGED_BY,
                # Goes with the evaluation's other objects (a refused Job, a new spec).
                LABEL_RUN_UID: run.uid,
                LABEL_SPEC_HASH: hash_,
            },
            "ownerReferences": [run.owner_reference()],
        },
        "data": {
            "entries.json": json.dumps([e.to_wire() for e in entries.values()]),
            "key.json": json.dumps(dict(key), sort_keys=True),
        },
    }


def read_kept(cm: Mapping[str, Any] | None) -> list[Entry]:
    """The entries a kept ConfigMap holds (none when it is missing or malformed)."""
    if cm is None:
        return []
    try:
        raw = json.loads((cm.get("data") or {}).get("entries.json") or "[]")
        return [Entry.model_validate(e) for e in raw[:MAX_ENTRY_TASKS]]
    except (ValueError, TypeError):
        return []


def bucket_prefix(prefix: str, namespace: str, key: Mapping[str, Any]) -> str:
    """Where a run's index entries are copied in its bucket: beside the runs' outputs,
    ``<prefix>/<namespace>/_evaluation-index/<key hash>/`` (no run is named with "_")."""
    return results_prefix(prefix, namespace, "_evaluation-index") + key_label(key) + "/"
