"""lmms-eval's OpenAI-compatible backend under torchrun: CPU processes, the global rank.

lmms-eval's OpenAI-compatible backend (``models/simple/openai.py``), which the chat variant
extends, is wrong for more than one process in two ways: it asserts that accelerate
reports FSDP, MULTI_GPU or DEEPSPEED, though it never touches the device, so it refuses CPU
processes (MULTI_CPU, gloo); and it takes ``local_process_index`` as its rank, so on two
nodes both processes are rank 0: both evaluate every document, and both write results.
Under torchrun (``WORLD_SIZE`` > 1) ``install`` has it built as if on GPUs, with the global
process index as its rank and the number of processes as its world size.
"""

from __future__ import annotations

import os
from typing import Any

#: The lmms-eval versions whose ``OpenAICompatible.__init__`` this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})


def install() -> None:
    """The OpenAI-compatible backend's rank fix, under torchrun only."""
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
