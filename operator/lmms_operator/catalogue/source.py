"""lmms-eval's source read with ``ast`` (never imported): the keyword arguments a
backend's class hierarchy accepts, and whether a module can run code that neither the
operator's image nor lmms-eval's own source fixes (``trust_remote_code``, ``exec``/
``eval`` of values, imports from a path or module name computed at run time)."""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

#: lmms-eval's base model class: keyword names stop there (it takes none).
_BASE = ("lmms_eval.api.model", "lmms")

#: Functions that import or run code from a module name or file path they are given.
_IMPORTERS = frozenset(
    {
        "import_module",
        "__import__",
        "spec_from_file_location",
        "SourceFileLoader",
        "load_source",
        "addsitedir",
        "run_module",
        "run_path",
    }
)
#: Path-building functions and methods: their result is fixed when their inputs are.
_PATH_CALLS = frozenset(
    {"join", "dirname", "abspath", "realpath", "normpath", "Path", "str", "resolve", "joinpath"}
)
#: Modules whose path functions those are (``os.path.join``, ``pathlib.Path``).
_PATH_MODULES = frozenset({"os", "path", "pathlib", "posixpath"})


class Source:
    """lmms-eval's source, parsed with ``ast`` (each file once)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._trees: dict[Path, ast.Module | None] = {}
        self._runs: dict[Path, bool] = {}

    def path(self, module: str) -> Path:
        base = self.root.joinpath(*module.split("."))
        return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")

    def tree(self, module: str) -> ast.Module | None:
        return self.tree_at(self.path(module))

    def tree_at(self, path: Path) -> ast.Module | None:
        if path not in self._trees:
            try:
                with warnings.catch_warnings():  # lmms-eval's invalid escapes
                    warnings.simplefilter("ignore")
                    self._trees[path] = ast.parse(path.read_text())
            except (OSError, SyntaxError, ValueError):
                self._trees[path] = None
        return self._trees[path]

    def file_runs_code(self, path: Path) -> bool:
        """Whether this file can run code its text does not fix (unreadable: yes)."""
        if path not in self._runs:
            tree = self.tree_at(path)
            if tree is None:
                self._runs[path] = True
            else:
                fixed = fixed_names(tree)
                self._runs[path] = any(runs_code(node, fixed) for node in ast.walk(tree))
        return self._runs[path]

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
            for node in top_level(tree):
                if isinstance(node, ast.ClassDef) and node.name == name:
                    return module, node
            target = imports(module, tree, tree_is_package=self.is_package(module)).get(name)
            if target is None:
                return None
            module, name = target
        return None

    def is_package(self, module: str) -> bool:
        return self.root.joinpath(*module.split(".")).is_dir()

    def _resolve(self, module: str, base: ast.expr) -> tuple[str, str] | None:
        """The (module, class) a base-class expression names, when lmms-eval's own."""
        tree = self.tree(module)
        if tree is None:
            return None
        names = imports(module, tree, tree_is_package=self.is_package(module))
        if isinstance(base, ast.Name):
            if any(isinstance(n, ast.ClassDef) and n.name == base.id for n in top_level(tree)):
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
        module they import, can run code its text does not fix (see ``runs_code``)."""
        modules = {m for path in class_paths for m, _ in self.hierarchy(path)}
        for module in list(modules):
            tree = self.tree(module)
            if tree is not None:
                pkg = self.is_package(module)
                modules |= {
                    ".".join(t) if self.tree(".".join(t)) else t[0]
                    for t in imports(module, tree, tree_is_package=pkg).values()
                    if t[0].startswith("lmms_eval.models.")
                }
        return any(self.file_runs_code(self.path(m)) for m in modules)


def top_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """Module-level statements, looking into ``if``/``try`` blocks (optional imports)."""
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop(0)
        yield node
        if isinstance(node, ast.If | ast.Try):
            todo += node.body + node.orelse
            if isinstance(node, ast.Try):
                todo += node.finalbody + [s for h in node.handlers for s in h.body]


def imports(module: str, tree: ast.Module, tree_is_package: bool) -> dict[str, tuple[str, str]]:
    """Local name -> (module, attribute) for the lmms-eval names a module imports; a
    plain ``import lmms_eval.x as y`` maps y -> ("lmms_eval.x", "")."""
    out: dict[str, tuple[str, str]] = {}
    package = module if tree_is_package else module.rpartition(".")[0]
    for node in top_level(tree):
        if isinstance(node, ast.ImportFrom):
            base = absolute(package, node)
            if base.startswith("lmms_eval"):
                for alias in node.names:
                    out[alias.asname or alias.name] = (base, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lmms_eval") and alias.asname:
                    out[alias.asname] = (alias.name, "")
    return {k: (m, a) if a else _split(m) for k, (m, a) in out.items()}


def absolute(package: str, node: ast.ImportFrom) -> str:
    """The module an ``import from`` names, relative ones resolved in ``package``."""
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    return base


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


def fixed_names(tree: ast.Module) -> frozenset[str]:
    """Names whose every binding in the module is a plain assignment of a fixed value
    (``is_fixed``). Scopes are not told apart, so a name also bound any other way
    (parameter, loop target, import, ``with``, walrus) anywhere is never fixed."""
    assigned: dict[str, list[ast.expr]] = {}
    simple: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)
                    simple.add(id(target))
    unfixable: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            if id(node) not in simple:
                unfixable.add(node.id)
        elif isinstance(node, ast.arg):
            unfixable.add(node.arg)
        elif isinstance(node, ast.alias):
            unfixable.add((node.asname or node.name).partition(".")[0])
    fixed: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, values in assigned.items():
            known = frozenset(fixed)
            if name not in fixed | unfixable and all(is_fixed(v, known) for v in values):
                fixed.add(name)
                changed = True
    return frozenset(fixed)


def is_fixed(node: ast.expr, fixed: frozenset[str]) -> bool:
    """Built only from literals, ``__file__`` and fixed names by path functions and
    string operations: a value the module's own text decides, not a run's spec."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id == "__file__" or node.id in fixed
    if isinstance(node, ast.Attribute):
        return is_fixed(node.value, fixed)
    if isinstance(node, ast.BinOp):
        return is_fixed(node.left, fixed) and is_fixed(node.right, fixed)
    if isinstance(node, ast.JoinedStr):
        return all(is_fixed(v, fixed) for v in node.values)
    if isinstance(node, ast.FormattedValue):
        return is_fixed(node.value, fixed)
    if isinstance(node, ast.List | ast.Tuple):
        return all(is_fixed(e, fixed) for e in node.elts)
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name):
            known = func.id in _PATH_CALLS
        elif isinstance(func, ast.Attribute):
            known = func.attr in _PATH_CALLS and (
                _is_module(func.value) or is_fixed(func.value, fixed)
            )
        else:
            known = False
        return known and _args_fixed(node, fixed)
    return False


def _is_module(node: ast.expr) -> bool:
    """``os``, ``os.path``, ``pathlib``: a path module named by its usual name."""
    if isinstance(node, ast.Name):
        return node.id in _PATH_MODULES
    return isinstance(node, ast.Attribute) and node.attr == "path" and _is_module(node.value)


def _args_fixed(call: ast.Call, fixed: frozenset[str]) -> bool:
    return all(
        is_fixed(a.value if isinstance(a, ast.Starred) else a, fixed) for a in call.args
    ) and all(is_fixed(k.value, fixed) for k in call.keywords)


def _is_sys_path(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


def runs_code(node: ast.AST, fixed: frozenset[str] = frozenset()) -> bool:
    """``trust_remote_code=True`` passed, defaulted, stored in a dict or assigned by
    key; a call of the builtins ``exec``/``eval`` on anything but a literal; or code
    imported from a module name or path the module's text does not fix (``fixed``:
    its ``fixed_names``): ``sys.path`` changed, ``importlib``, ``runpy``, ``site``."""
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if isinstance(func, ast.Name) and name in ("exec", "eval"):
            return not all(isinstance(a, ast.Constant) for a in node.args)
        if name in _IMPORTERS or (
            isinstance(func, ast.Attribute)
            and _is_sys_path(func.value)
            and name in ("insert", "append", "extend")
        ):
            return not _args_fixed(node, fixed)
        return any(k.arg == "trust_remote_code" and _is_true(k.value) for k in node.keywords)
    if isinstance(node, ast.Assign | ast.AugAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if any(
            _is_sys_path(t) or (isinstance(t, ast.Subscript) and _is_sys_path(t.value))
            for t in targets
        ):
            return not is_fixed(node.value, fixed)
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
