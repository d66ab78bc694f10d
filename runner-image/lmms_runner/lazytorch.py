"""torch (and accelerate) imported on first use, for a model backend that holds no model.

lmms-eval imports torch in nearly every module and accelerate in four, but a backend
that sends every request to a server (``patches.backend.API_BACKENDS``) never computes
with them, and importing them is much of a start (``docs/benchmarks.md``). Here ``import
torch`` (and ``import torch.nn``, ``from torch.utils.collect_env import ...``, ``import
accelerate``) binds a stand-in module (``Stub``). The first use of anything in one imports
the real torch, and from then on every stand-in hands out the real module's attributes.

Until then a few questions have an answer that is exact in a process that has not
imported torch, and the stand-ins give it (``ANSWERS``), so lmms-eval's start does not
import torch just to ask them:

- ``torch.distributed.is_initialized()`` is False: no process group exists without torch;
- ``torch.distributed.is_available()`` is True: the Linux builds of torch have it (a
  test checks the pinned one), and the stand-ins are used on Linux only; lmms-eval asks
  it only as ``is_available() and is_initialized()``;
- ``torch.manual_seed(seed)`` is kept and applied as torch is imported, before anything
  can draw from its generator (it returns None instead of the default generator);
- a value assigned to a stand-in (lmms-eval's evaluator sets
  ``torch.distributed.distributed_c10d.default_pg_timeout`` at import) is assigned to
  the real module as torch is imported, and read back from the stand-in until then;
- ``torch.Tensor`` has no instance and no subclass yet, and says so to ``isinstance``
  and ``issubclass`` (lmms-eval asks it of every value of a logged sample); a class
  derived from it, a call or an attribute of it imports torch;
- functions and classes that lmms-eval takes by name at import and calls later
  (``get_pretty_env_info``, accelerate's ``Accelerator``, ``DistributedType`` and
  ``InitProcessGroupKwargs``) are stand-ins that import the real one on first use.

The libraries that look for torch in ``sys.modules`` to find tensors among their
objects ask ``imported("torch")`` instead (datasets, through ``install``), since no
object can be a tensor before torch is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

from .deferred import ModuleFromSpec

#: The packages whose modules are stand-ins until torch is imported.
PACKAGES = ("torch", "accelerate")

_lock = threading.RLock()
_stubs: dict[str, Stub] = {}
_assigned: dict[tuple[str, str], Any] = {}
_seeds: list[Any] = []
_on_load: list[Callable[[], None]] = []
_loaded = threading.Event()


def loaded() -> bool:
    """Whether the real torch has been imported (always, where nothing is stood in)."""
    return _loaded.is_set() or not _stubs


def imported(name: str) -> bool:
    """``name in sys.modules``, but False for a stand-in: what a library means when it
    looks there for torch before it asks whether an object is one of torch's."""
    module = sys.modules.get(name)
    return module is not None and not isinstance(module, Stub)


def _real(name: str) -> types.ModuleType:
    load()
    return importlib.import_module(name)


def attribute(module: str, name: str) -> Any:
    """``module.name`` of the real module, imported now (with torch) if need be."""
    return getattr(_real(module), name)


def on_load(hook: Callable[[], None]) -> None:
    """Calls ``hook`` as torch is imported (now, if it is)."""
    with _lock:
        if not loaded():
            _on_load.append(hook)
            return
    hook()


class LazyValue:
    """A value made on first use by ``make`` (which may import torch)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._value: list[Any] = []

    def _get(self) -> Any:
        if not self._value:
            self._value.append(self._make())
        return self._value[0]

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self._get(), attr)

    def __str__(self) -> str:
        return str(self._get())

    def __repr__(self) -> str:
        return repr(self._get())

    def __eq__(self, other: object) -> bool:
        return bool(self._get() == other)

    def __hash__(self) -> int:
        return hash(self._get())


class _LazyName:
    """A function or class of a stood-in module, taken by name at import: the real one is
    imported when it is first called or asked for an attribute."""

    def __init__(self, module: str, name: str) -> None:
        self._where = (module, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return attribute(*self._where)(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(attribute(*self._where), attr)

    def __repr__(self) -> str:
        return f"<{'.'.join(self._where)}, imported on first use>"


class _LazyType(_LazyName):
    """A type of torch's taken before torch is imported (``torch.Tensor``): no object is
    an instance or subclass of it before torch is imported, and after, what is one of
    the real type is. A class statement that derives from it imports torch and derives
    from the real type; a call or an attribute is the real type's."""

    def __instancecheck__(self, instance: Any) -> bool:
        return loaded() and isinstance(instance, attribute(*self._where))

    def __subclasscheck__(self, subclass: type) -> bool:
        return loaded() and issubclass(subclass, attribute(*self._where))

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return (attribute(*self._where),)


def _manual_seed(seed: Any) -> None:
    with _lock:
        if loaded():
            attribute("torch", "manual_seed")(seed)
        else:
            _seeds.append(seed)


def _lazy(module: str, name: str) -> Callable[[], Any]:
    return lambda: _LazyName(module, name)


#: (module, attribute): what a stand-in answers while torch is not imported.
ANSWERS: dict[tuple[str, str], Callable[[], Any]] = {
    ("torch", "manual_seed"): lambda: _manual_seed,
    # lmms-eval's is_multimodal_content asks isinstance(value, (..., torch.Tensor)) of
    # every logged sample's values
    ("torch", "Tensor"): lambda: _LazyType("torch", "Tensor"),
    ("torch.distributed", "is_available"): lambda: lambda: True,
    ("torch.distributed", "is_initialized"): lambda: lambda: False,
    ("torch.utils.collect_env", "get_pretty_env_info"): _lazy(
        "torch.utils.collect_env", "get_pretty_env_info"
    ),
    ("accelerate", "Accelerator"): _lazy("accelerate", "Accelerator"),
    ("accelerate", "DistributedType"): _lazy("accelerate", "DistributedType"),
    ("accelerate.utils", "InitProcessGroupKwargs"): _lazy(
        "accelerate.utils", "InitProcessGroupKwargs"
    ),
}


class Stub(ModuleFromSpec):
    """A module of ``PACKAGES`` before torch is imported (see the module's docstring)."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        name = self.__name__
        with _lock:
            if not loaded():
                if (name, attr) in _assigned:
                    return _assigned[name, attr]
                answer = ANSWERS.get((name, attr))
                if answer is not None:
                    return answer()
                path = self.__dict__.get("__path__")
                sub = f"{name}.{attr}"
                if path is not None and importlib.machinery.PathFinder.find_spec(sub, path):
                    return importlib.import_module(sub)  # a stand-in too
        return getattr(_real(name), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr.startswith("__") or isinstance(value, Stub):  # the import system's own
            super().__setattr__(attr, value)
            return
        with _lock:
            if not loaded():
                _assigned[self.__name__, attr] = value
                return
        setattr(_real(self.__name__), attr, value)


class _StubLoader(importlib.abc.Loader):
    def __init__(self, real: importlib.machinery.ModuleSpec) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        stub = Stub(self.real)
        _stubs[spec.name] = stub
        return stub

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self.real  # what importlib.util.find_spec reports for it


class _Finder(importlib.abc.MetaPathFinder):
    """Stand-ins for the modules of ``PACKAGES`` imported before torch is."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in PACKAGES or loaded():
            return None
        real = importlib.machinery.PathFinder.find_spec(fullname, path)
        if real is None:
            return None
        return importlib.machinery.ModuleSpec(
            fullname,
            _StubLoader(real),
            origin=real.origin,
            is_package=real.submodule_search_locations is not None,
        )


_finder = _Finder()


def load() -> None:
    """Imports the real torch now (once), then what was kept for it."""
    with _lock:
        if loaded():
            return
        _loaded.set()
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        for name, stub in list(_stubs.items()):
            if sys.modules.get(name) is stub:
                del sys.modules[name]
        torch = importlib.import_module("torch")
        for (module, attr), value in _assigned.items():
            setattr(importlib.import_module(module), attr, value)
        for seed in _seeds:
            torch.manual_seed(seed)
        for hook in _on_load:
            hook()


def install() -> bool:
    """Stands in for ``PACKAGES`` until torch is first used. False (nothing changed) where
    any of them is imported already, where torch is not installed, or off Linux."""
    if any(p in sys.modules for p in PACKAGES) or sys.platform != "linux":
        return False
    specs = [importlib.util.find_spec(p) for p in PACKAGES]
    if specs[0] is None:
        return False
    for spec in specs:
        if spec is not None:
            stub = Stub(spec)
            _stubs[spec.name] = stub
            sys.modules[spec.name] = stub
    sys.meta_path.insert(0, _finder)
    return True
