"""The catalogue of lmms-eval model types and task names the operator validates against.

The data file ``data/catalogue.json`` is generated from lmms-eval's own registries and
source, and committed, so the operator needs neither lmms-eval nor torch at run time:

    python -m lmms_operator.catalogue --write     # regenerate from the installed lmms-eval

Besides the names it records, per backend, the keyword arguments its class hierarchy's
``__init__`` signatures accept (the model-args allow-list) and whether the code that
backend runs loads code from the model's repository or executes what the model says
(read with ``ast`` from the modules of its whole class hierarchy, so a backend that
inherits the loading code is found too).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import heapq
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

DATA_FILE = Path(__file__).parent / "data" / "catalogue.json"

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
        model_args=MappingProxyType(
            {k: frozenset(v) for k, v in (raw.get("modelArgs") or {}).items()}
        ),
    )


def generate() -> dict[str, object]:
    """Reads lmms-eval's registries (imports lmms-eval; indexes ~900 task YAMLs) and
    parses the source of every backend's class hierarchy (never imports a backend)."""
    from importlib.metadata import version

    from lmms_eval import models
    from lmms_eval.tasks import TaskManager

    source = _Source(Path(models.__file__).parents[2])
    backends = _backends(models)
    tm = TaskManager(verbosity="ERROR")
    return {
        "remoteCodeModels": sorted(n for n, paths in backends.items() if source.runs_code(paths)),
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


#: lmms-eval's base model class: keyword names stop there (it takes none).
_BASE = ("lmms_eval.api.model", "lmms")


class _Source:
    """lmms-eval's source, parsed with ``ast`` (each module once)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._trees: dict[str, ast.Module | None] = {}

    def tree(self, module: str) -> ast.Module | None:
        if module not in self._trees:
            parts = module.split(".")
            base = self.root.joinpath(*parts)
            path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
            try:
                self._trees[module] = ast.parse(path.read_text())
            except (OSError, SyntaxError, ValueError):
                self._trees[module] = None
        return self._trees[module]

    def hierarchy(self, class_path: str) -> list[tuple[str, ast.ClassDef]]:
        """The class and its lmms-eval ancestors (module, definition), up to ``lmms``."""
        module, _, name = class_path.rpartition(".")
        out: list[tuple[str, ast.ClassDef]] = []
        todo, seen = [(module, name)], set()
        while todo:
            key = todo.pop(0)
            if key in seen or key == _BASE:
                continue
            seen.add(key)
            found = self._class(*key)
            if found is None:
                continue
            out.append(found)
            todo += [b for b in (self._resolve(found[0], base) for base in found[1].bases) if b]
        return out

    def _class(self, module: str, name: str) -> tuple[str, ast.ClassDef] | None:
        """Where ``name`` is defined, following re-exports (``from .x import Name``)."""
        for _ in range(8):
            tree = self.tree(module)
            if tree is None:
                return None
            for node in _top_level(tree):
                if isinstance(node, ast.ClassDef) and node.name == name:
                    return module, node
            target = _imports(module, tree, tree_is_package=self._is_package(module)).get(name)
            if target is None:
                return None
            module, name = target
        return None

    def _is_package(self, module: str) -> bool:
        return self.root.joinpath(*module.split(".")).is_dir()

    def _resolve(self, module: str, base: ast.expr) -> tuple[str, str] | None:
        """The (module, class) a base-class expression names, when lmms-eval's own."""
        tree = self.tree(module)
        if tree is None:
            return None
        names = _imports(module, tree, tree_is_package=self._is_package(module))
        if isinstance(base, ast.Name):
            if any(isinstance(n, ast.ClassDef) and n.name == base.id for n in _top_level(tree)):
                return module, base.id
            return names.get(base.id)
        if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name):
            target = names.get(base.value.id)
            if target is not None:
                return ".".join(target), base.attr
        return None

    def keywords(self, class_path: str) -> set[str]:
        """Keyword names the hierarchy's ``__init__`` signatures accept."""
        out: set[str] = set()
        for _, cls in self.hierarchy(class_path):
            for node in cls.body:
                if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                    out |= _keyword_params(node.args)
        return out

    def runs_code(self, class_paths: Iterable[str]) -> bool:
        """Whether any module of these classes' hierarchies, or an lmms-eval model
        module they import, forces ``trust_remote_code`` or calls ``exec``/``eval``."""
        modules = {m for path in class_paths for m, _ in self.hierarchy(path)}
        for module in list(modules):
            tree = self.tree(module)
            if tree is not None:
                pkg = self._is_package(module)
                modules |= {
                    ".".join(t) if self.tree(".".join(t)) else t[0]
                    for t in _imports(module, tree, tree_is_package=pkg).values()
                    if t[0].startswith("lmms_eval.models.")
                }
        for module in modules:
            tree = self.tree(module)
            if tree is None or any(_runs_code(node) for node in ast.walk(tree)):
                return True
        return False


def _top_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """Module-level statements, looking into ``if``/``try`` blocks (optional imports)."""
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop(0)
        yield node
        if isinstance(node, ast.If | ast.Try):
            todo += node.body + node.orelse
            if isinstance(node, ast.Try):
                todo += node.finalbody + [s for h in node.handlers for s in h.body]


def _imports(module: str, tree: ast.Module, tree_is_package: bool) -> dict[str, tuple[str, str]]:
    """Local name -> (module, attribute) for the lmms-eval names a module imports; a
    plain ``import lmms_eval.x as y`` maps y -> ("lmms_eval.x", "")."""
    out: dict[str, tuple[str, str]] = {}
    package = module if tree_is_package else module.rpartition(".")[0]
    for node in _top_level(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("lmms_eval"):
                for alias in node.names:
                    out[alias.asname or alias.name] = (base, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lmms_eval") and alias.asname:
                    out[alias.asname] = (alias.name, "")
    return {k: (m, a) if a else _split(m) for k, (m, a) in out.items()}


def _split(module: str) -> tuple[str, str]:
    parent, _, name = module.rpartition(".")
    return parent, name


def _keyword_params(args: ast.arguments) -> set[str]:
    """Parameters a caller can pass by keyword, ``self`` and ``*``/``**`` excluded."""
    positional = [*args.posonlyargs, *args.args][1:]
    return {a.arg for a in positional if a not in args.posonlyargs} | {
        a.arg for a in args.kwonlyargs
    }


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _runs_code(node: ast.AST) -> bool:
    """``trust_remote_code=True`` passed, defaulted, stored in a dict or assigned by
    key; or a call of the builtins ``exec``/``eval`` on anything but a literal."""
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id in ("exec", "eval"):
            return not all(isinstance(a, ast.Constant) for a in node.args)
        return any(k.arg == "trust_remote_code" and _is_true(k.value) for k in node.keywords)
    if isinstance(node, ast.arguments):
        positional = [*node.posonlyargs, *node.args]
        pairs = list(
            zip(positional[len(positional) - len(node.defaults) :], node.defaults, strict=True)
        )
        pairs += [
            (a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d is not None
        ]
        return any(a.arg == "trust_remote_code" and _is_true(d) for a, d in pairs)
    if isinstance(node, ast.Dict):
        return any(
            isinstance(k, ast.Constant) and k.value == "trust_remote_code" and _is_true(v)
            for k, v in zip(node.keys, node.values, strict=True)
        )
    if isinstance(node, ast.Assign) and _is_true(node.value):
        return any(
            isinstance(t, ast.Subscript)
            and isinstance(t.slice, ast.Constant)
            and t.slice.value == "trust_remote_code"
            for t in node.targets
        )
    return False


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


if __name__ == "__main__":
    sys.exit(main())
