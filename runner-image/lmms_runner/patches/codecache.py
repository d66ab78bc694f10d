"""The methods ``dataclasses`` writes as source text at every start, compiled once.

``dataclasses`` makes each class's ``__init__``, ``__repr__``, ``__eq__`` (and for frozen
classes ``__setattr__`` and ``__delattr__``) by writing their source text and compiling it
with ``exec``; a start makes hundreds of such classes (torch, accelerate, transformers,
datasets, the OpenAI client, lmms-eval). A text holds everything its function depends on at
compile time (names and defaults are passed in as arguments), so the same text always
compiles to the same code. ``install`` gives ``dataclasses`` an ``exec`` that takes that code
from a file keyed by the text (``marshal``, the format of ``.pyc`` files): the runner image
writes it when it is built (``python -m lmms_runner.startup``, into ``LMMS_CODE_CACHE``);
elsewhere the first run writes it under ``~/.cache/lmms-runner/``. It is used only by the
Python that wrote it (the same bytecode magic number and compiler flags); a text the file
lacks is compiled as always, so every function made is the one ``exec`` of the text would
make. The file holds code that is executed, as ``.pyc`` files do, and is trusted as they
are: in the image it is root's, on a read-only root, beside the image's bytecode.
"""

from __future__ import annotations
import __future__

import builtins
import dataclasses
import importlib.util
import marshal
import sys
import types
from pathlib import Path
from typing import Any

from .. import cachefiles

#: The lmms-eval versions (and the libraries they pin) whose start this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})

ENV = "LMMS_CODE_CACHE"
VERSION = 1
FILENAME = "<string>"  # what ``exec`` of a text names its code


def default_path() -> Path:
    return cachefiles.default_path(ENV, "code-cache.marshal")


def future_flags(module: types.ModuleType) -> int:
    """The compiler flags ``exec`` gives text run from ``module``: its ``__future__``
    imports (none in CPython's ``dataclasses``)."""
    flags = 0
    namespace = vars(module)
    for name in __future__.all_feature_names:
        feature: __future__._Feature = getattr(__future__, name)
        if namespace.get(name) is feature:
            flags |= feature.compiler_flag
    return flags


def key(flags: int) -> str:
    return (
        f"{VERSION}\0{importlib.util.MAGIC_NUMBER.hex()}\0{sys.implementation.cache_tag}\0{flags}"
    )


def load(path: Path, expected: str) -> dict[str, types.CodeType] | None:
    """The file's code by text, or None when it is missing, unreadable or another
    Python's."""
    try:
        doc = marshal.loads(path.read_bytes())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != expected:
        return None
    code = doc.get("code")
    if not isinstance(code, dict) or not all(
        type(k) is str and type(v) is types.CodeType for k, v in code.items()
    ):
        return None
    return code


def save(path: Path, expected: str, code: dict[str, types.CodeType]) -> None:
    """Writes the file atomically; a read-only place is left alone, and so is code that
    marshal cannot write (the run goes on without the file, as before)."""
    try:
        data = marshal.dumps({"key": expected, "code": code})
    except ValueError:
        return
    cachefiles.write_atomically(path, data)


class Cache:
    """``exec`` for ``dataclasses``: a text found in ``code`` runs from its compiled code,
    any other is compiled as ``exec`` would compile it (and kept, when the file is to be
    written)."""

    def __init__(self, path: Path, expected: str, flags: int) -> None:
        self.path = path
        self.expected = expected
        self.flags = flags
        loaded = load(path, expected)
        self.code: dict[str, types.CodeType] = loaded or {}
        self.new: dict[str, types.CodeType] | None = {} if loaded is None else None

    def exec(self, source: Any, globals: Any = None, locals: Any = None, /) -> None:
        if globals is None:  # as exec does: the caller's namespaces
            frame = sys._getframe(1)
            globals = frame.f_globals
            if locals is None:
                locals = frame.f_locals
        if type(source) is str:
            code = self.code.get(source)
            if code is None:
                code = compile(source, FILENAME, "exec", self.flags, dont_inherit=True)
                if self.new is not None:
                    self.new[source] = code
            source = code
        builtins.exec(source, globals, locals)

    def save_new(self) -> None:
        """Writes the file with what was compiled so far added, when recording (the file
        was missing or another Python's, or a build)."""
        if self.new:
            self.code = {**self.code, **self.new}
            save(self.path, self.expected, self.code)
            self.new = None


def install(path: Path | None = None) -> Cache:
    """Makes ``dataclasses`` take the code of the texts it compiles from the file."""
    flags = future_flags(dataclasses)
    cache = Cache(path or default_path(), key(flags), flags)
    dataclasses.exec = cache.exec  # type: ignore[attr-defined]  # found before the builtin
    return cache
