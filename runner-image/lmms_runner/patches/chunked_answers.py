"""lmms-eval's response cache answers in chunks, each stored before the next is asked.

lmms-eval's ``ResponseCache.execute`` (``--use_cache``) sends every uncached request of a
type to the model in one call and stores the answers only when that call returns: a pod
killed in the middle of a task loses every answer of it, whatever
``LMMS_CACHE_CHECKPOINT_INTERVAL`` says. ``install`` makes it send the uncached requests in
chunks of that many, each chunk stored (and committed) before the next, so a restart asks
again for at most one chunk. Answers are the same (one request, one answer; the cache
serves only deterministic requests). Before each chunk a line ``lmms-runner: answered
N/TOTAL`` tells the runner's progress tracker where the whole request type stands, since
each chunk has a progress bar of its own; from the second chunk on, what lmms-eval imports
after the last answer is imported meanwhile (``prefetch``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from . import prefetch

#: The lmms-eval versions whose ``ResponseCache.execute`` this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})


def chunked_execute(original: Any) -> Any:
    """``ResponseCache.execute`` that calls ``original`` once per chunk of requests."""

    def execute(self: Any, lm: Any, reqtype: str, requests: list[Any]) -> list[Any]:
        try:
            size = int(os.environ.get("LMMS_CACHE_CHECKPOINT_INTERVAL") or 0)
        except ValueError:
            size = 0
        if size <= 0 or len(requests) <= size:
            return list(original(self, lm, reqtype, requests))
        out: list[Any] = []
        for start in range(0, len(requests), size):
            print(f"lmms-runner: answered {start}/{len(requests)}", file=sys.stderr, flush=True)
            if start:
                prefetch.prefetch_after_answers()
            out += original(self, lm, reqtype, requests[start : start + size])
        print(f"lmms-runner: answered {len(requests)}/{len(requests)}", file=sys.stderr, flush=True)
        return out

    return execute


def install() -> None:
    """lmms-eval's response cache answers in chunks (see the module's docstring)."""
    from lmms_eval.caching import response_cache

    cache = response_cache.ResponseCache
    cache.execute = chunked_execute(cache.execute)
