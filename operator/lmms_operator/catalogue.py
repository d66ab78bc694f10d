"""The catalogue of lmms-eval model types and task names the operator validates against.

The data file ``data/catalogue.json`` is generated from lmms-eval's own registries and
committed, so the operator needs neither lmms-eval nor torch at run time:

    python -m lmms_operator.catalogue --write     # regenerate from the installed lmms-eval
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_FILE = Path(__file__).parent / "data" / "catalogue.json"


@dataclass(frozen=True)
class Catalogue:
    lmms_eval_version: str
    models: frozenset[str]
    tasks: frozenset[str]
    groups: frozenset[str]
    tags: frozenset[str]
    #: Backends that load code from the model's repository whatever the spec says
    #: (``trust_remote_code=True`` written into lmms-eval's source, or its default).
    remote_code_models: frozenset[str] = frozenset()

    @property
    def task_names(self) -> frozenset[str]:
        """Everything ``--tasks`` accepts: tasks, groups and tags."""
        return self.tasks | self.groups | self.tags

    def suggest_model(self, name: str) -> str | None:
        return closest(name, self.models)

    def suggest_task(self, name: str) -> str | None:
        return closest(name, self.task_names)


def closest(name: str, options: frozenset[str] | set[str]) -> str | None:
    """The option most like ``name`` (for \"did you mean\"), if any is close."""
    matches = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.6)
    return matches[0] if matches else None


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
    )


def generate() -> dict[str, object]:
    """Reads lmms-eval's registries (imports lmms-eval; indexes ~900 task YAMLs)."""
    from importlib.metadata import version

    from lmms_eval import models
    from lmms_eval.tasks import TaskManager

    names = set(models.AVAILABLE_SIMPLE_MODELS) | set(models.AVAILABLE_CHAT_TEMPLATE_MODELS)
    for aliases in models.MODEL_ALIASES.values():
        names.update(aliases)
    tm = TaskManager(verbosity="ERROR")
    return {
        "remoteCodeModels": sorted(_remote_code_models(models)),
        "lmmsEvalVersion": version("lmms-eval"),
        "models": sorted(names),
        "tasks": sorted(tm.all_subtasks),
        "groups": sorted(tm.all_groups),
        "tags": sorted(tm.all_tags),
    }


#: ``trust_remote_code=True`` as an argument or as a parameter's default.
_FORCES_REMOTE_CODE = re.compile(r"trust_remote_code\s*(:\s*[\w\[\]. ]+)?=\s*True")


def _remote_code_models(models: Any) -> set[str]:
    """Backends whose source passes or defaults ``trust_remote_code=True``, aliases
    included: they run code from the model repository whatever the spec says."""
    root = Path(models.__file__).parent
    found: set[str] = set()
    kinds = (
        ("simple", models.AVAILABLE_SIMPLE_MODELS),
        ("chat", models.AVAILABLE_CHAT_TEMPLATE_MODELS),
    )
    for kind, registry in kinds:
        for name in registry:
            source = root / kind / f"{name}.py"
            if source.is_file() and _FORCES_REMOTE_CODE.search(source.read_text()):
                found.add(name)
    for name, aliases in models.MODEL_ALIASES.items():
        if name in found:
            found.update(aliases)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmms_operator.catalogue")
    parser.add_argument("--write", action="store_true", help=f"write {DATA_FILE.name}")
    args = parser.parse_args(argv)
    data = generate()
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if args.write:
        DATA_FILE.write_text(text)
        counts = {k: len(v) for k, v in data.items() if isinstance(v, list)}
        print(f"wrote {DATA_FILE}: {counts}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
