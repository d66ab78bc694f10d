"""The catalogue of lmms-eval model types and task names the operator validates against.

The data file ``data/catalogue.json`` is generated from lmms-eval's own registries and
source, and committed, so the operator needs neither lmms-eval nor torch at run time:

    python -m lmms_operator.catalogue --write     # regenerate from the installed lmms-eval

Besides the names it records, per backend, the keyword arguments its class hierarchy's
``__init__`` signatures accept (the model-args allow-list) and whether the code that
backend runs loads code from the model's repository, executes what the model says or
imports from a path or module name it is given (read with ``ast`` from the modules of
its whole class hierarchy, so a backend that inherits the loading code is found too);
and the tasks, groups and tags whose scoring code can do the same (``catalogue.tasks``).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import heapq
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .source import Source as _Source

__all__ = ["DATA_FILE", "MAX_SUGGESTIONS", "MAX_SUGGEST_LEN", "Catalogue", "closest", "load"]

DATA_FILE = Path(__file__).parents[1] / "data" / "catalogue.json"

#: "Did you mean" is offered for names up to this long, and only for the first few
#: unknown names of a spec: a hostile spec cannot make suggestions cost more than a few
#: short comparisons (difflib is quadratic in the names' length).
MAX_SUGGEST_LEN = 64
MAX_SUGGESTIONS = 3
_CUTOFF = 0.6
#: Options given difflib's linear bound, and of those compared in full (its ratio).
_CANDIDATES = 256
_FINALISTS = 32


@dataclass(frozen=True)
class Catalogue:
    lmms_eval_version: str
    models: frozenset[str]
    tasks: frozenset[str]
    groups: frozenset[str]
    tags: frozenset[str]
    #: Backends that load code from the model's repository whatever the spec says, or
    #: execute the model's output (found in the source of their whole class hierarchy).
    remote_code_models: frozenset[str] = frozenset()
    #: Per backend (aliases included), the keyword names its ``__init__`` signatures
    #: accept: the only keys ``--model_args`` may carry for it.
    model_args: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    #: Tasks, groups and tags (as ``--tasks`` names them) whose scoring code can run
    #: code the image does not fix: ``eval``/``exec`` of the model's answer, mostly.
    remote_code_tasks: frozenset[str] = frozenset()

    @functools.cached_property
    def task_names(self) -> frozenset[str]:
        """Everything ``--tasks`` accepts: tasks, groups and tags."""
        return self.tasks | self.groups | self.tags

    def suggest_model(self, name: str) -> str | None:
        return closest(name, self.models)

    def suggest_task(self, name: str) -> str | None:
        return closest(name, self.task_names)


def closest(name: str, options: Iterable[str]) -> str | None:
    """The option most like ``name`` (for "did you mean"), if any is close.

    Bounded by construction, whatever the options: names longer than MAX_SUGGEST_LEN get
    none; only options with the same first character and a length that could reach the
    cutoff (a ratio of 0.6 needs the longer string at most 7/3 of the shorter) are kept;
    of those, the _CANDIDATES with the longest common prefix get difflib's linear bound
    (quick_ratio), and its _FINALISTS the quadratic ratio."""
    n = len(name)
    if not n or n > MAX_SUGGEST_LEN:
        return None
    low, high = (3 * n) // 7, -(-7 * n // 3)
    kept = [o for o in options if o[:1] == name[:1] and low <= len(o) <= high]
    if len(kept) > _CANDIDATES:
        kept = heapq.nlargest(_CANDIDATES, kept, key=lambda o: (_common_prefix(name, o), o))
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(name)
    scored: list[tuple[float, str]] = []
    for option in kept:
        matcher.set_seq1(option)
        bound = matcher.quick_ratio()
        if bound >= _CUTOFF:
            scored.append((bound, option))
    best: tuple[float, str] | None = None
    for _, option in heapq.nlargest(_FINALISTS, scored):
        matcher.set_seq1(option)
        score = (matcher.ratio(), option)
        if score[0] >= _CUTOFF and (best is None or score > best):
            best = score
    return best[1] if best else None


def _common_prefix(a: str, b: str) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


@functools.cache
def load() -> Catalogue:
    raw = json.loads(DATA_FILE.read_text())
    return Catalogue(
        lmms_eval_version=raw["lmmsEvalVersion"],
        models=frozenset(raw["models"]),
        tasks=frozenset(raw["tasks"]),
        groups=frozenset(raw["groups"]),
        tags=frozenset(raw["tags"]),
        remote_code_models=frozenset(raw.get("remoteCodeModels") or ()),
        remote_code_tasks=frozenset(raw.get("remoteCodeTasks") or ()),
        model_args=MappingProxyType(
            {k: frozenset(v) for k, v in (raw.get("modelArgs") or {}).items()}
        ),
    )


def generate() -> dict[str, object]:
    """Reads lmms-eval's registries (imports lmms-eval; indexes ~900 task YAMLs) and
    parses the source of every backend's class hierarchy and every task's scoring code
    (never imports a backend or a task's utils)."""
    from importlib.metadata import version

    from lmms_eval import models
    from lmms_eval.tasks import TaskManager

    from .tasks import TaskScan

    source = _Source(Path(models.__file__).parents[2])
    backends = _backends(models)
    tm = TaskManager(verbosity="ERROR")
    return {
        "remoteCodeModels": sorted(n for n, paths in backends.items() if source.runs_code(paths)),
        "remoteCodeTasks": sorted(TaskScan(source, tm.task_index).flagged()),
        "modelArgs": {
            n: sorted(source.keywords(paths[0])) for n, paths in sorted(backends.items())
        },
        "lmmsEvalVersion": version("lmms-eval"),
        "models": sorted(backends),
        "tasks": sorted(tm.all_subtasks),
        "groups": sorted(tm.all_groups),
        "tags": sorted(tm.all_tags),
    }


def _backends(models: Any) -> dict[str, list[str]]:
    """Each backend name (aliases included) -> its class paths, the one lmms-eval
    instantiates first: the chat class where there is one (``get_model`` without
    ``force_simple``, as the runner calls it), then the simple class."""
    out: dict[str, list[str]] = {}
    kinds = (
        ("chat", models.AVAILABLE_CHAT_TEMPLATE_MODELS),
        ("simple", models.AVAILABLE_SIMPLE_MODELS),
    )
    for kind, registry in kinds:
        for name, cls in registry.items():
            path = cls if "." in cls else f"lmms_eval.models.{kind}.{name}.{cls}"
            out.setdefault(name, []).append(path)
    for name, aliases in models.MODEL_ALIASES.items():
        for alias in aliases:
            out.setdefault(alias, list(out.get(name, [])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmms_operator.catalogue")
    parser.add_argument("--write", action="store_true", help=f"write {DATA_FILE.name}")
    args = parser.parse_args(argv)
    data = generate()
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if args.write:
        DATA_FILE.write_text(text)
        counts = {k: len(v) for k, v in data.items() if isinstance(v, list | dict)}
        print(f"wrote {DATA_FILE}: {counts}")
    else:
        sys.stdout.write(text)
    return 0
