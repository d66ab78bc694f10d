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


def _api_backends_data_parallel() -> None:
    """lmms-eval 0.7.3's OpenAI-compatible backend (``models/simple/openai.py``), which the
    chat variant extends, is wrong for more than one process in two ways:

    - it asserts that accelerate reports FSDP, MULTI_GPU or DEEPSPEED, though it never
      touches the device, so it refuses CPU processes (MULTI_CPU, gloo);
    - it takes ``local_process_index`` as its rank, so on two nodes both processes are
      rank 0: both evaluate every document, and both write results.

    Under torchrun (``WORLD_SIZE`` > 1) it is built as if on GPUs, and its rank is the
    global process index."""
    if int(os.environ.get("WORLD_SIZE") or 1) <= 1:
        return
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from lmms_eval.models.simple import openai

    original = openai.OpenAICompatible.__init__
    reported = Accelerator.distributed_type

    def as_gpu(self: Any) -> Any:
        kind = reported.fget(self)
        return DistributedType.MULTI_GPU if kind == DistributedType.MULTI_CPU else kind

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        Accelerator.distributed_type = property(as_gpu)
        try:
            original(self, *args, **kwargs)
        finally:
            Accelerator.distributed_type = reported
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes

    openai.OpenAICompatible.__init__ = init


def main() -> None:
    from lmms_eval.caching import response_cache

    cache = response_cache.ResponseCache
    cache.execute = _chunked_execute(cache.execute)
    _api_backends_data_parallel()
    from lmms_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
