"""Which lmms-eval tasks, groups and tags can run code the operator's image does not fix.

A task's scoring code is the Python of its YAML's directory tree (the directory and its
subdirectories), the modules its ``!function`` references name (followed through
``include``), and the ``lmms_eval.tasks`` modules those import, transitively. Some of it
``eval``s or ``exec``s what the model answered (a tenant's own model server or
fine-tuned checkpoint answers whatever it likes), so such a task is remote code however
ordinary its model is. A group or tag is flagged when its own YAML's code is, or any
task, group or tag it contains is (lmms-eval's ``TaskManager`` index says which).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from .source import Source, absolute

#: Only these modules' imports are followed: the harness itself (``lmms_eval.api``,
#: ``lmms_eval.utils``) runs for every task, so it says nothing about one.
_FOLLOWED = "lmms_eval.tasks"
#: ``include`` chains longer than this are not followed (lmms-eval's are 1 or 2).
_MAX_INCLUDES = 8


class _Ref(str):
    """The target of a ``!function`` tag."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Reads task YAMLs without importing anything: ``!function`` becomes a _Ref and
    any other tag nothing."""


_Loader.add_constructor("!function", lambda loader, node: _Ref(loader.construct_scalar(node)))
_Loader.add_multi_constructor("", lambda loader, suffix, node: None)


def _load(path: Path) -> Any:
    try:
        return yaml.load(path.read_bytes(), Loader=_Loader)  # a SafeLoader
    except (OSError, yaml.YAMLError):
        return None


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, _Ref):
        yield str(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _refs(v)


class TaskScan:
    """Flags tasks, groups and tags of one TaskManager index (name -> its entry:
    ``type``, ``yaml_path`` or -1, and for tags the ``task`` list)."""

    def __init__(self, source: Source, index: Mapping[str, Mapping[str, Any]]) -> None:
        self.source = source
        self.index = index
        self._dirs: dict[Path, bool] = {}
        self._modules: dict[Path, bool] = {}
        self._yamls: dict[Path, bool] = {}
        self._names: dict[str, bool] = {}

    def flagged(self) -> set[str]:
        return {name for name in self.index if self.name_runs_code(name)}

    def name_runs_code(self, name: str) -> bool:
        if name not in self._names:
            self._names[name] = False  # a cycle of groups adds nothing
            entry = self.index[name]
            path = entry.get("yaml_path")
            own = isinstance(path, str) and self.yaml_runs_code(Path(path))
            self._names[name] = own or any(
                self.name_runs_code(m) for m in self.members(name) if m in self.index
            )
        return self._names[name]

    def members(self, name: str) -> list[str]:
        """The names a group or tag contains (a task: none)."""
        entry = self.index[name]
        if entry.get("type") == "tag":
            return [t for t in entry.get("task") or () if isinstance(t, str)]
        if entry.get("type") != "group" or not isinstance(entry.get("yaml_path"), str):
            return []
        return list(_listed(self._config(Path(entry["yaml_path"])).get("task")))

    def _config(self, path: Path, depth: int = 0) -> dict[str, Any]:
        """The YAML with its includes merged (lmms-eval's order: the file wins)."""
        raw = _load(path)
        if not isinstance(raw, dict):
            return {}
        merged: dict[str, Any] = {}
        for include in self._includes(path, raw) if depth < _MAX_INCLUDES else ():
            merged.update(self._config(include, depth + 1))
        return merged | {k: v for k, v in raw.items() if k != "include"}

    @staticmethod
    def _includes(path: Path, raw: Mapping[str, Any]) -> list[Path]:
        names = raw.get("include") or []
        names = [names] if isinstance(names, str) else names if isinstance(names, list) else []
        return [
            Path(n) if Path(n).is_file() else Path(os.path.normpath(path.parent / n))
            for n in names
            if isinstance(n, str)
        ]

    def yaml_runs_code(self, path: Path, depth: int = 0) -> bool:
        """The YAML's directory tree, its ``!function`` modules and its includes'."""
        if path not in self._yamls:
            self._yamls[path] = False
            raw = _load(path)
            found = self.dir_runs_code(path.parent) or any(
                self.module_runs_code(m) for m in self._function_modules(path, raw)
            )
            if not found and isinstance(raw, dict) and depth < _MAX_INCLUDES:
                found = any(self.yaml_runs_code(p, depth + 1) for p in self._includes(path, raw))
            self._yamls[path] = found
        return self._yamls[path]

    def _function_modules(self, path: Path, raw: Any) -> Iterator[Path]:
        """Where lmms-eval's ``import_function`` finds each ``!function`` module: a
        file beside the YAML, else a module by its dotted name."""
        for ref in _refs(raw):
            module = ref.rpartition(".")[0]
            beside = Path(os.path.normpath(path.parent / f"{module}.py"))
            yield beside if beside.is_file() else self.source.path(module)

    def dir_runs_code(self, directory: Path) -> bool:
        if directory not in self._dirs:
            files = (p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)
            self._dirs[directory] = any(self.module_runs_code(p) for p in files)
        return self._dirs[directory]

    def module_runs_code(self, path: Path) -> bool:
        """The file, or an ``lmms_eval.tasks`` module it imports (transitively); a
        file that does not exist runs nothing (lmms-eval fails to load the task)."""
        if path not in self._modules:
            self._modules[path] = False
            if not path.is_file():
                return False
            tree = self.source.tree_at(path)
            self._modules[path] = self.source.file_runs_code(path) or any(
                self.module_runs_code(p) for p in self._imported(path, tree)
            )
        return self._modules[path]

    def _imported(self, path: Path, tree: ast.Module | None) -> Iterator[Path]:
        """The ``lmms_eval.tasks`` modules (and submodules named by ``from M import
        N``) a file imports, anywhere in it."""
        try:
            package = ".".join(path.parent.relative_to(self.source.root).parts)
        except ValueError:
            package = ""
        for node in ast.walk(tree) if tree is not None else ():
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = absolute(package, node)
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                if name == _FOLLOWED or name.startswith(_FOLLOWED + "."):
                    target = self.source.path(name)
                    if target.is_file():
                        yield target


def _listed(tasks: Any) -> Iterator[str]:
    """Names in a group's ``task`` list: strings, and ``task``/``group`` of dicts (an
    inline group's own list too)."""
    for item in tasks if isinstance(tasks, list) else [tasks]:
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for key in ("task", "group"):
                if isinstance(item.get(key), str):
                    yield item[key]
            if isinstance(item.get("task"), list):
                yield from _listed(item["task"])
