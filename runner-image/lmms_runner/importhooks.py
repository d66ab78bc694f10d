"""Two ways to change a third-party module as it is imported, each for one module, once:

- ``after_import(name, hook)`` calls ``hook(module)`` right after the module is
  executed, before the code that imported it sees it;
- ``patch_source(name, old, new)`` executes the module from its source with ``old``
  replaced by ``new``, where ``old`` occurs exactly once; anything else (another version
  of the module, a module not loaded from a source file) loads the module unchanged;
- ``postpone_annotations(name)`` compiles the module as if it started with ``from
  __future__ import annotations`` (PEP 563: its annotations stay text).

Each is a finder at the head of ``sys.meta_path`` that takes itself out at the module's
import and leaves the finding to the finders behind it.
"""

from __future__ import annotations
import __future__

import contextlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable, Sequence


class _OneShot(importlib.abc.MetaPathFinder):
    """Finds ``name`` once, through the finders behind it, and hands its spec to
    ``adapt``."""

    def __init__(self, name: str, adapt: Callable[[importlib.machinery.ModuleSpec], None]) -> None:
        self.name = name
        self.adapt = adapt

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec: importlib.machinery.ModuleSpec | None = None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is not None:
            self.adapt(spec)
        return spec


def after_import(name: str, hook: Callable[[types.ModuleType], None]) -> None:
    """Calls ``hook`` with module ``name`` as soon as it is executed (now, if it is). A
    hook that fails leaves the import as it is."""
    module = sys.modules.get(name)
    if module is not None:
        hook(module)
        return

    def adapt(spec: importlib.machinery.ModuleSpec) -> None:
        loader = spec.loader
        if not isinstance(loader, importlib.abc.Loader):
            return
        execute = loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            execute(module)
            with contextlib.suppress(Exception):  # the import stands; only the shortcut is lost
                hook(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]  # this spec's loader only

    sys.meta_path.insert(0, _OneShot(name, adapt))


class _PatchedSource(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname: str, path: str, old: str, new: str) -> None:
        super().__init__(fullname, path)
        self.old = old
        self.new = new

    def get_code(self, fullname: str) -> types.CodeType | None:
        source = self.get_source(fullname)
        if source is None or source.count(self.old) != 1:
            return super().get_code(fullname)
        return compile(source.replace(self.old, self.new), self.path, "exec", dont_inherit=True)


def patch_source(name: str, old: str, new: str) -> bool:
    """Makes the next import of module ``name`` execute its source with ``old`` (which
    must occur exactly once) replaced by ``new``, which keeps the lines where they were
    (tracebacks point at the file's own lines). False (and nothing changed) when the
    module is imported already."""
    if old.count("\n") != new.count("\n"):
        raise ValueError("a patch must keep the module's line numbers")
    if name in sys.modules:
        return False

    def adapt(spec: importlib.machinery.ModuleSpec) -> None:
        if type(spec.loader) is importlib.machinery.SourceFileLoader and spec.origin:
            spec.loader = _PatchedSource(name, spec.origin, old, new)

    sys.meta_path.insert(0, _OneShot(name, adapt))
    return True


def postpone_annotations(name: str) -> bool:
    """Makes the next import of module ``name`` compile its source with postponed
    annotations (``from __future__ import annotations``): they are kept as text in
    ``__annotations__`` instead of evaluated where each function or class is defined.
    False (and nothing changed) when the module is imported already."""
    if name in sys.modules:
        return False
    flags = __future__.annotations.compiler_flag

    def adapt(spec: importlib.machinery.ModuleSpec) -> None:
        if type(spec.loader) is importlib.machinery.SourceFileLoader and spec.origin:
            spec.loader = _Flagged(name, spec.origin, flags)

    sys.meta_path.insert(0, _OneShot(name, adapt))
    return True


class _Flagged(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname: str, path: str, flags: int) -> None:
        super().__init__(fullname, path)
        self.flags = flags

    def get_code(self, fullname: str) -> types.CodeType | None:
        source = self.get_source(fullname)
        if source is None:
            return super().get_code(fullname)
        code: types.CodeType = compile(
            source, self.path, "exec", flags=self.flags, dont_inherit=True
        )
        return code
