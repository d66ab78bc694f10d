"""What lmms-eval imports once every answer is in, imported while the model answers.

lmms-eval imports pytablewriter (some 250 modules, with chardet and typepy) for its results
table only after the last answer, when nothing else is left to do but that and the exit.
``prefetch_after_answers`` imports it in a thread of its own once the model has answered a
first chunk of requests (``chunked_answers``): the start is over by then and the process
mostly waits for the model, so what would run after the last answer runs meanwhile.
"""

from __future__ import annotations

import contextlib
import importlib
import threading

#: The lmms-eval versions whose results table this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})

#: What lmms-eval imports only once every answer is in: pytablewriter, for its results
#: table.
AFTER_ANSWERS = ("pytablewriter",)
_prefetching: list[threading.Thread] = []


def prefetch(modules: tuple[str, ...]) -> None:
    """Imports ``modules`` in a thread of their own, once. A module that fails to import is
    left to fail where lmms-eval imports it."""
    if _prefetching:
        return

    def run() -> None:
        for name in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=run, name="lmms-runner-prefetch", daemon=True)
    _prefetching.append(thread)
    thread.start()


def prefetch_after_answers() -> None:
    """``AFTER_ANSWERS``, imported in the background (once)."""
    prefetch(AFTER_ANSWERS)
