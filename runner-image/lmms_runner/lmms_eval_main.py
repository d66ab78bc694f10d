"""``python -m lmms_runner.lmms_eval_main ARGS``: lmms-eval's own command line, with one
change to its response cache (``--use_cache``) so that a killed attempt keeps what the
model already answered.

lmms-eval 0.7.3's ``ResponseCache.execute`` sends every uncached request of a type to
the model in one call and stores the answers only when that call returns
(``caching/response_cache.py``: ``new_resps = getattr(lm, reqtype)(uncached)``, then the
store loop): a pod killed in the middle of a task loses every answer of it, whatever
``LMMS_CACHE_CHECKPOINT_INTERVAL`` says. Here the uncached requests go to the model in
chunks of that many, each chunk stored (and committed) before the next, so a restart
asks again for at most one chunk. Answers are the same (one request, one answer; the
cache serves only deterministic requests). Before each chunk a line
``lmms-runner: answered N/TOTAL`` tells the runner's progress tracker where the whole
request type stands, since each chunk has a progress bar of its own.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def _chunked_execute(original: Any) -> Any:
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
            out += original(self, lm, reqtype, requests[start : start + size])
        print(f"lmms-runner: answered {len(requests)}/{len(requests)}", file=sys.stderr, flush=True)
        return out

    return execute


def main() -> None:
    from lmms_eval.caching import response_cache

    cache = response_cache.ResponseCache
    cache.execute = _chunked_execute(cache.execute)
    from lmms_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
