"""The garbage collector off while lmms-eval is imported, then the imports frozen.

Each full collection walks every object the collector tracks: importing lmms-eval, its
libraries (torch, transformers, datasets, the OpenAI client) and the run's model backend
triggers several of them, each later one in the run walked those hundreds of thousands of
objects again, and so did the interpreter's exit. ``imports_frozen`` turns the collector
off while the start imports, then freezes what it built (``gc.freeze``): the garbage of the
imports (a few hundred objects) is never freed, which Python's documentation of
``gc.freeze`` allows for, and the run's own objects are collected as before.
``after_run`` keeps them frozen through the exit too, except where an extension that
reports objects still alive at the exit as leaks is loaded (``LEAK_CHECKED``): there the
exit collects everything, as it would without ``gc.freeze``.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator

#: The lmms-eval versions (and the libraries they import) this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})

#: Extensions that report, at the interpreter's exit, their objects still alive as leaks
#: (nanobind's check, which prints hundreds of lines): triton's, which torch's compiler
#: and some local backends import.
LEAK_CHECKED = ("triton._C.libtriton", "triton._C.libproton")


@contextlib.contextmanager
def imports_frozen() -> Iterator[None]:
    """The collector off for the block, and what the block built frozen after it."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def after_run() -> None:
    """Before the interpreter's exit: the run's objects frozen too (the exit need not walk
    them), or everything unfrozen where ``LEAK_CHECKED`` is loaded (collected at the exit
    as usual, reported by nobody)."""
    if any(m in sys.modules for m in LEAK_CHECKED):
        gc.unfreeze()
    else:
        gc.freeze()
