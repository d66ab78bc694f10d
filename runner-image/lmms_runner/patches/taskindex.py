"""lmms-eval's index of its built-in tasks from a file, instead of built at every start.

At every start lmms-eval's ``TaskManager`` reads every YAML under ``lmms_eval/tasks/`` (some
2,000 files) to learn which task, group or tag each name is and where its YAML lives. The
index depends on those files only, so ``install`` makes ``TaskManager`` take it from a JSON
file: the runner image writes it when it is built (``python -m
lmms_runner.patches.taskindex``, into ``LMMS_TASK_INDEX``); elsewhere the first run writes
it under ``~/.cache/lmms-runner/``. It is used only while its fingerprint (lmms-eval's
version and the path, size and modification time of every YAML) matches the files;
otherwise lmms-eval indexes them as always. Custom task directories (``--include_path``)
are indexed live, as before. The index is the very dictionary lmms-eval would build.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from .. import cachefiles

#: The lmms-eval versions whose ``TaskManager._get_task_and_group`` this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})

ENV = "LMMS_TASK_INDEX"
VERSION = 1


def default_path() -> Path:
    return cachefiles.default_path(ENV, "task-index.json")


def fingerprint(tasks_dir: str, lmms_eval_version: str) -> str:
    """lmms-eval's version and every YAML's relative path, size and mtime."""
    digest = hashlib.sha256(f"{VERSION}\0{lmms_eval_version}\0{tasks_dir}".encode())
    for _, files in cachefiles.walk_sorted(tasks_dir):
        for rel, entry in files:
            if rel.endswith(".yaml"):
                st = entry.stat()
                digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load(path: Path, expected: str) -> dict[str, Any] | None:
    index = cachefiles.read(path, expected).get("index")
    return index if isinstance(index, dict) else None


def save(path: Path, fp: str, index: dict[str, Any]) -> None:
    cachefiles.write(path, {"fingerprint": fp, "index": index})


def install(path: Path | None = None) -> None:
    """Makes lmms-eval's TaskManager take its built-in index from the file (and write
    the file when it is missing or stale)."""
    from lmms_eval import tasks as lmms_tasks

    target = path or default_path()
    defaults, version = _defaults(), _version()
    original = lmms_tasks.TaskManager._get_task_and_group

    def get_task_and_group(self: Any, task_dir: str) -> Any:
        if os.path.abspath(task_dir) != defaults:
            return original(self, task_dir)
        fp = fingerprint(defaults, version)
        index = load(target, fp)
        if index is None:
            index = dict(original(self, task_dir))
            save(target, fp, index)
        return index

    lmms_tasks.TaskManager._get_task_and_group = get_task_and_group


def build(path: Path) -> int:
    """Writes the index file (the runner image does this when it is built)."""
    install(path)
    from lmms_eval.tasks import TaskManager

    manager = TaskManager("ERROR")
    if load(path, fingerprint(_defaults(), _version())) is None:
        print(f"lmms-runner: could not write the task index to {path}", file=sys.stderr)
        return 1
    print(f"lmms-runner: indexed {len(manager.all_tasks)} tasks, groups and tags into {path}")
    return 0


def _defaults() -> str:
    from lmms_eval import tasks as lmms_tasks

    return str(os.path.abspath(os.path.dirname(os.path.abspath(lmms_tasks.__file__))))


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version("lmms-eval")


if __name__ == "__main__":
    sys.exit(build(Path(sys.argv[1]) if len(sys.argv) > 1 else default_path()))
