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

lmms-eval also appends each answer to an audit log and ``fsync``s it, one answer at a time,
after the whole chunk is answered: 64 answers cost 0.34 s on the disk the benchmark ran on,
while no request is in flight (``docs/benchmarks.md``, "Concurrent requests"). Its module's
``os`` is replaced by one whose ``fsync`` waits for the end of the chunk, and then syncs each
file once: the log is as durable as before at every chunk's end, which is where the
guarantee above stands.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from . import prefetch

#: The lmms-eval versions whose ``ResponseCache.execute`` this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})


class DeferredFsync:
    """``os`` as the response cache's module sees it, with ``fsync`` held while
    ``deferring`` and done once per file by ``sync``."""

    def __init__(self, real: Any = os) -> None:
        self._real = real
        self.deferring = False
        self.pending: dict[int, None] = {}  # file descriptors, in order

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def fsync(self, fd: int) -> None:
        if self.deferring:
            self.pending[fd] = None
        else:
            self._real.fsync(fd)

    def sync(self) -> None:
        pending, self.pending = self.pending, {}
        for fd in pending:
            self._real.fsync(fd)


def chunked_execute(original: Any, files: DeferredFsync | None = None) -> Any:
    """``ResponseCache.execute`` that calls ``original`` once per chunk of requests, the
    fsyncs of each chunk's answers (``files``) done once at its end."""

    def answer(self: Any, lm: Any, reqtype: str, requests: list[Any]) -> list[Any]:
        if files is None:
            return list(original(self, lm, reqtype, requests))
        files.deferring = True
        try:
            return list(original(self, lm, reqtype, requests))
        finally:
            files.deferring = False
            files.sync()

    def execute(self: Any, lm: Any, reqtype: str, requests: list[Any]) -> list[Any]:
        try:
            size = int(os.environ.get("LMMS_CACHE_CHECKPOINT_INTERVAL") or 0)
        except ValueError:
            size = 0
        if size <= 0 or len(requests) <= size:
            return answer(self, lm, reqtype, requests)
        out: list[Any] = []
        for start in range(0, len(requests), size):
            print(f"lmms-runner: answered {start}/{len(requests)}", file=sys.stderr, flush=True)
            if start:
                prefetch.prefetch_after_answers()
            out += answer(self, lm, reqtype, requests[start : start + size])
        print(f"lmms-runner: answered {len(requests)}/{len(requests)}", file=sys.stderr, flush=True)
        return out

    return execute


def install() -> None:
    """lmms-eval's response cache answers in chunks (see the module's docstring)."""
    from lmms_eval.caching import response_cache

    files = DeferredFsync(response_cache.os)
    response_cache.os = files
    cache = response_cache.ResponseCache
    cache.execute = chunked_execute(cache.execute, files)
