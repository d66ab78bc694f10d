"""The runner's changes to lmms-eval and the libraries it brings: one module per change.

Each module changes one thing (what and why in its docstring; what each saves at a start is
in ``docs/benchmarks.md``) and names the lmms-eval versions it was written for
(``LMMS_EVAL_VERSIONS``): they were read against those versions' code, and another
version's code may differ where they reach into it. The patches apply together or not at
all: ``LMMS_EVAL_VERSIONS`` here is what every one of them was written for, which the
version guard (``lmms_runner.versionguard``) compares with the installed lmms-eval before
anything is changed, and ``lmms_runner.startup`` applies them in the order they need.
Importing these modules changes nothing.
"""

from __future__ import annotations

import types

from . import (
    answer_count,
    backend,
    chunked_answers,
    codecache,
    datasets_streaming,
    deferred_imports,
    gc_freeze,
    library_teardown,
    prefetch,
    punctuation,
    stderr_for_metric,
    taskindex,
    torch_on_first_use,
    torch_unused,
    torchrun_rank,
    transformersindex,
)

#: Every patch module.
PATCHES: tuple[types.ModuleType, ...] = (
    answer_count,
    backend,
    chunked_answers,
    codecache,
    datasets_streaming,
    deferred_imports,
    gc_freeze,
    library_teardown,
    prefetch,
    punctuation,
    stderr_for_metric,
    taskindex,
    torch_on_first_use,
    torch_unused,
    torchrun_rank,
    transformersindex,
)


def common_versions(modules: tuple[types.ModuleType, ...]) -> frozenset[str]:
    """The lmms-eval versions that every one of ``modules`` was written for."""
    common: frozenset[str] | None = None
    for module in modules:
        own: frozenset[str] = module.LMMS_EVAL_VERSIONS
        common = own if common is None else common & own
    return common or frozenset()


#: The lmms-eval versions the runner patches: those every patch was written for.
LMMS_EVAL_VERSIONS = common_versions(PATCHES)
