"""Fan-out (``spec.parallelism``): which pod evaluates which tasks, and one result set
from all of them. Pure functions.

**Units.** A shard gets whole entries of the run's task list (``spec.tasks``, then the
tasks of ``spec.customTasks`` not already listed): a group or tag travels with all its
subtasks, so lmms-eval computes its aggregate exactly as in a single pod, and a shard's
results hold every score a single-pod run would report for those entries.

**Balance.** Each unit weighs its expected documents where they are known (a custom
task's data file in its ConfigMap, capped by ``spec.evaluation.limit``; ``limit`` alone
for a built-in task), otherwise the mean of the known ones, or 1 each when none is known
(balanced by count). Longest first, each to the lightest shard (LPT): within 4/3 of the
best possible split.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from ..api import EvalRunSpec
from ..api.runner import ResultsSummary, RunnerProgress, TaskState

#: Task YAML files larger than this, or more of them than this, are not read for
#: document counts (a ConfigMap is the tenant's input).
MAX_YAML_BYTES = 64 * 1024
MAX_YAML_FILES = 100
#: YAML read for document counts in one pass, over all of a run's ConfigMaps (libyaml
#: reads about 1 MB/s into Python objects: this keeps a pass well under a second).
MAX_YAML_TOTAL = 256 * 1024
#: A task YAML nested deeper, or with more aliases (anchors reused: "billion laughs"),
#: is not read. lmms-eval's task files are a few levels deep and use no aliases.
MAX_YAML_DEPTH = 32
MAX_YAML_ALIASES = 64


@dataclass(frozen=True)
class Shard:
    index: int
    tasks: tuple[str, ...]
    expected_documents: int | None  # None: some of its tasks' sizes are unknown

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "tasks": list(self.tasks)}
        if self.expected_documents is not None:
            out["expectedDocuments"] = self.expected_documents
        return out


def units(spec: EvalRunSpec) -> list[str]:
    """The run's task list in the order the runner evaluates it."""
    seen: list[str] = list(spec.tasks)
    for source in spec.custom_tasks:
        seen += [t for t in source.tasks if t not in seen]
    return seen


def expected_documents(
    spec: EvalRunSpec, custom_counts: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Known document counts per unit: custom tasks' data (``custom_counts``), capped
    by ``limit``; ``limit`` for any other unit."""
    limit = spec.evaluation.limit
    out: dict[str, int] = {}
    for name in units(spec):
        count = (custom_counts or {}).get(name)
        if count is not None:
            out[name] = min(count, limit) if limit else count
        elif limit:
            out[name] = limit
    return out


def assign(names: list[str], known: Mapping[str, int], parallelism: int) -> list[Shard]:
    """At most ``parallelism`` shards, none empty, balanced by expected documents (LPT);
    shard i's tasks keep the run's order."""
    count = max(1, min(parallelism, len(names)))
    sizes = [known[n] for n in names if n in known]
    fill = round(sum(sizes) / len(sizes)) if sizes else 1
    weight = {n: max(1, known.get(n, fill)) for n in names}
    order = sorted(range(len(names)), key=lambda i: (-weight[names[i]], i))
    loads = [0] * count
    members: list[list[int]] = [[] for _ in range(count)]
    for i in order:
        target = min(range(count), key=lambda s: (loads[s], s))
        loads[target] += weight[names[i]]
        members[target].append(i)
    shards = []
    for index, idx in enumerate(members):
        tasks = tuple(names[i] for i in sorted(idx))
        exact = all(t in known for t in tasks)
        shards.append(Shard(index, tasks, sum(known[t] for t in tasks) if exact else None))
    return shards


def plan(
    spec: EvalRunSpec,
    custom_counts: Mapping[str, int] | None = None,
    names: list[str] | None = None,
) -> list[Shard]:
    """The shards of a run (one for parallelism 1); ``names``: the entries left to
    evaluate when others' results were reused (default: all)."""
    todo = units(spec) if names is None else names
    return assign(todo, expected_documents(spec, custom_counts), spec.parallelism)


# -- document counts of custom tasks ---------------------------------------------------------
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _TolerantLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader (libyaml's where there is one) that reads lmms-eval's ``!function``
    (and any other tag) as null."""


def _ignore_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> None:
    return None


_TolerantLoader.add_multi_constructor("!", _ignore_tag)
_TolerantLoader.add_multi_constructor("tag:", _ignore_tag)


class Budget:
    """Bytes of YAML a pass may still read (``MAX_YAML_TOTAL``)."""

    def __init__(self, size: int = MAX_YAML_TOTAL) -> None:
        self.left = size

    def take(self, size: int) -> bool:
        if size > self.left:
            return False
        self.left -= size
        return True


def _bounded(text: str) -> bool:
    """Whether a YAML text nests at most ``MAX_YAML_DEPTH`` deep and reuses at most
    ``MAX_YAML_ALIASES`` anchors: read as a stream of events (the parser is iterative),
    before anything builds objects from it (recursively)."""
    depth = aliases = 0
    for event in yaml.parse(text, Loader=_SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                return False
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                return False
    return True


def _load(text: str) -> Any:
    """A task YAML, or None when it cannot be read within the bounds."""
    try:
        if not _bounded(text):
            return None
        return yaml.load(text, Loader=_TolerantLoader)  # a SafeLoader
    except (yaml.YAMLError, RecursionError, ValueError):
        return None


def _data_file(doc: Mapping[str, Any]) -> str | None:
    kwargs = doc.get("dataset_kwargs")
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    split = doc.get("test_split") or "test"
    if isinstance(files, dict):
        files = files.get(split)
    if isinstance(files, list) and len(files) == 1:
        files = files[0]
    return files if isinstance(files, str) else None


def _documents(text: str, name: str) -> int | None:
    if name.endswith((".jsonl", ".ndjson")):
        return sum(1 for line in text.splitlines() if line.strip())
    if name.endswith(".json"):
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):  # nested deeper than the decoder recurses
            return None
        return len(doc) if isinstance(doc, list) else None
    return None


def custom_task_documents(data: Mapping[str, str], budget: Budget | None = None) -> dict[str, int]:
    """Documents per task of a custom-task ConfigMap, where a task's YAML names a local
    JSON or JSON Lines data file that the ConfigMap holds (``dataset_path: json``).
    Anything else (a hub dataset, a file elsewhere, unreadable YAML, YAML beyond the
    bounds or the pass's ``budget``) is unknown: its task is weighed as the others."""
    budget = budget or Budget()
    out: dict[str, int] = {}
    yamls = [k for k in sorted(data) if k.endswith((".yaml", ".yml"))][:MAX_YAML_FILES]
    for key in yamls:
        text = data[key]
        if not isinstance(text, str) or len(text) > MAX_YAML_BYTES or not budget.take(len(text)):
            continue
        doc = _load(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("task"), str):
            continue
        path = _data_file(doc)
        base = posixpath.basename(path) if path else None
        if base and isinstance(data.get(base), str):
            count = _documents(data[base], base)
            if count is not None:
                out[doc["task"]] = count
    return out


# -- merging what the shards report -------------------------------------------------------
def merge(parts: list[ResultsSummary]) -> ResultsSummary:
    """One result set from the shards' (in shard order): every task once, the
    provenance of shard 0 (the same image, config and model in every shard), the
    longest evaluation time, and a common output location where every shard uploaded."""
    if not parts:
        raise ValueError("no shard results to merge")
    seen: set[str] = set()
    tasks = []
    for part in parts:
        for task in part.tasks:
            if task.task not in seen:
                seen.add(task.task)
                tasks.append(task)
    seconds = [p.evaluation_seconds for p in parts if p.evaluation_seconds is not None]
    locations = [p.s3_location for p in parts]
    location = None
    if all(locations):
        common = posixpath.commonprefix([str(loc) for loc in locations])
        location = common[: common.rfind("/") + 1] or None
    return ResultsSummary(
        tasks=tasks,
        provenance=parts[0].provenance,
        evaluation_seconds=max(seconds) if seconds else None,
        s3_location=location,
        truncated=any(p.truncated for p in parts),
    )


_PHASES = ("failed", "starting", "loading", "evaluating", "postprocessing", "uploading", "done")


def aggregate(parts: Mapping[int, RunnerProgress], shard_count: int) -> RunnerProgress:
    """The run's progress from the shards that answered: documents summed, the least
    advanced phase, the longest ETA. A shard that has not answered yet counts as 0%."""
    done = sum(p.done for p in parts.values())
    total = sum(p.total for p in parts.values())
    percents = [parts[i].percent if i in parts else 0.0 for i in range(shard_count)]
    if total and len(parts) == shard_count:
        percent = 100.0 * done / total
    else:
        percent = sum(percents) / max(1, shard_count)
    phases = [p.phase for p in parts.values()]
    if len(parts) < shard_count:
        phases.append("starting")
    phase = min(phases, key=_PHASES.index) if phases else "starting"
    rates = [p.samples_per_second for p in parts.values() if p.samples_per_second is not None]
    etas = [p.eta_seconds for p in parts.values() if p.eta_seconds is not None]
    tasks: list[TaskState] = [t for i in sorted(parts) for t in parts[i].tasks]
    return RunnerProgress(
        phase=phase,
        percent=min(100.0, percent),
        done=done,
        total=total,
        tasks=tasks,
        samples_per_second=sum(rates) if rates else None,
        eta_seconds=max(etas) if etas else None,
    )
