"""Modules and functions imported on their first use instead of at import.

``defer(name)`` binds a stand-in (``Deferred``) for module ``name`` in ``sys.modules``: the
code that imports it gets the stand-in, and the first attribute asked of it imports the
real module, whose attributes it hands out from then on. ``lazy_function(module, name)``
is a function that imports its module on its first call. The patches use both for what
lmms-eval and its libraries import at the top and use only in some runs.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

from . import importhooks


class ModuleFromSpec(types.ModuleType):
    """A module that stands for the one ``spec`` finds, without running it. Its
    ``__file__``, ``__spec__`` and ``__path__`` are there from the start:
    ``inspect.getmodule`` (which torch calls while it registers operators) asks every
    module in ``sys.modules`` for its ``__file__``, and must not import it by asking."""

    def __init__(self, spec: importlib.machinery.ModuleSpec) -> None:
        super().__init__(spec.name)
        self.__spec__ = spec
        self.__file__ = spec.origin
        self.__loader__ = spec.loader
        if spec.submodule_search_locations is not None:
            self.__path__ = list(spec.submodule_search_locations)


class Deferred(ModuleFromSpec):
    """A module that is imported on its first use."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(import_now(self), attr)


def import_now(deferred: Deferred) -> types.ModuleType:
    """The module that ``deferred`` stands for, imported now. (A function, not a method:
    every name on ``Deferred`` hides the module's attribute of that name.)"""
    name = deferred.__name__
    if sys.modules.get(name) is deferred:
        del sys.modules[name]
    module = importlib.import_module(name)
    # Submodules imported meanwhile (``import package.sub`` finds them through
    # ``__path__`` without running the package) stay reachable as attributes.
    for key, value in list(vars(deferred).items()):
        if isinstance(value, types.ModuleType) and not hasattr(module, key):
            setattr(module, key, value)
    return module


def defer(name: str) -> None:
    """Imports ``name`` only when one of its attributes is first used. A submodule is also
    its package's attribute, as after an import: now, if the package is imported, else
    as soon as it is (the package is not imported to find the submodule)."""
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    spec = _find_unimported(name) if parent and parent not in sys.modules else None
    try:
        spec = spec or importlib.util.find_spec(name)  # which may import the packages
    except ImportError:  # a package of it is not installed
        return
    if spec is None or name in sys.modules:
        return
    deferred = Deferred(spec)
    sys.modules[name] = deferred
    if parent:
        importhooks.after_import(parent, lambda package: _set_if_missing(package, child, deferred))


def _set_if_missing(package: types.ModuleType, child: str, module: types.ModuleType) -> None:
    if child not in vars(package):
        setattr(package, child, module)


def _find_unimported(name: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of ``name`` found through its packages' paths, none of them imported."""
    parts = name.split(".")
    spec = importlib.util.find_spec(parts[0])
    for depth in range(2, len(parts) + 1):
        if spec is None or spec.submodule_search_locations is None:
            return None
        path = list(spec.submodule_search_locations)
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth]), path)
    return spec


def lazy_function(module: str, name: str) -> Any:
    """``module.name``, a function, imported on its first call."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call
