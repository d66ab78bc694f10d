"""lmms-eval's command line with every patch of ``lmms_runner.patches`` applied.

``prepare`` applies the patches in the order they need (each before anything imports what
it changes), then imports lmms-eval and the run's model backend; ``run`` does that with the
collector off and the code cache installed, then runs lmms-eval's command line. Only
``lmms_runner.lmms_eval_main`` calls ``run``, once the version guard has said the patches
apply. ``python -m lmms_runner.startup PATH`` writes the code cache from such a start (the
runner image does this when it is built).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from . import lazytorch
from .patches import (
    answer_count,
    backend,
    chunked_answers,
    codecache,
    datasets_streaming,
    deferred_imports,
    gc_freeze,
    library_teardown,
    punctuation,
    stderr_for_metric,
    taskindex,
    torch_on_first_use,
    torch_unused,
    torchrun_rank,
    transformersindex,
)


def prepare(argv: list[str]) -> None:
    """Every patch, then lmms-eval and the model backend that ``argv`` names imported (the
    code cache builds from this)."""
    torch_unused.defer_torch_unused(argv)  # before anything imports torch
    torch_on_first_use.torch_on_first_use(argv)  # after it: its deferred modules are found
    datasets_streaming.install()  # before anything imports datasets
    transformersindex.install()  # before anything imports transformers
    punctuation.install()  # before anything imports lmms_eval.filters
    deferred_imports.install()  # imports lmms_eval (for its optional_import)
    taskindex.install()
    chunked_answers.install()
    answer_count.install()
    torchrun_rank.install()
    stderr_for_metric.install()
    import lmms_eval.__main__  # noqa: F401

    backend.preimport_model(argv)


def run(argv: list[str]) -> None:
    """lmms-eval's command line (``cli_evaluate``, which reads ``sys.argv``), patched."""
    with gc_freeze.imports_frozen():
        code = codecache.install()  # before the imports that make dataclasses
        prepare(argv)
        code.save_new()
    from lmms_eval.__main__ import cli_evaluate

    library_teardown.skip_library_teardown()
    try:
        cli_evaluate()
    finally:
        gc_freeze.after_run()


def build_code_cache(path: Path) -> int:
    """Writes the code cache from what a start compiles, with torch and accelerate (the
    runner image does this when it is built)."""
    cache = codecache.install(path)
    cache.new = {}
    prepare(["--model", "openai"])
    # The OpenAI-compatible backend's start imports neither torch nor accelerate (they
    # wait for their first use); every other backend's start imports both.
    lazytorch.load()
    importlib.import_module("accelerate")
    count = len(cache.new)
    cache.save_new()
    if not codecache.load(path, cache.expected):
        print(f"lmms-runner: could not write the code cache to {path}", file=sys.stderr)
        return 1
    print(f"lmms-runner: wrote the code of {count} dataclass methods to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(build_code_cache(Path(sys.argv[1]) if len(sys.argv) > 1 else codecache.default_path()))
