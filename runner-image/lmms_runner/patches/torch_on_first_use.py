"""torch and accelerate imported on first use, for a backend that holds no model.

lmms-eval imports torch in nearly every module and accelerate in four, but a backend in
``API_BACKENDS`` (which sends every request to a server) in a process of its own never
computes with them, and nothing in such a run uses them: lmms-eval imports them only to
ask what is known before torch exists. ``torch_on_first_use`` gives its modules stand-ins
that answer that (``lazytorch``: no process group, a seed kept for torch's import, values
assigned to torch's modules kept for them) and import the real torch on the first other
use; ``lmms_eval.utils`` and transformers' stopping criteria keep the annotations that name
torch's types as text (PEP 563); ``cli_evaluate``, the backend, the evaluator and the
tasks get ``SingleProcessAccelerator`` (one process, the main one); ``lmms.clean`` has no
torch modules or CUDA cache to clear; and datasets is told torch is not available until
it is imported. Under torchrun (``WORLD_SIZE`` > 1) accelerate and torch.distributed do
the work, and nothing changes.
"""

from __future__ import annotations

import gc
import importlib
import os
import types
from typing import Any

from .. import importhooks, lazytorch
from .backend import API_BACKENDS, model_name

#: The lmms-eval versions whose modules, ``Accelerator`` uses and ``lmms.clean`` this was
#: written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})

#: Modules that evaluate, at import, annotations that name torch's types (``List[
#: torch.Tensor]``): compiled with postponed annotations (PEP 563, as if they started with
#: ``from __future__ import annotations``), they keep them as text. Nothing reads these
#: modules' annotations at run time.
POSTPONED_ANNOTATIONS = (
    # pad_and_concat(tensors: List[torch.Tensor]), get_dtype(...) -> torch.dtype, and
    # MultiTokenEOSCriteria(transformers.StoppingCriteria), whose module follows.
    "lmms_eval.utils",
    "transformers.generation.stopping_criteria",
)
#: datasets' pickler registers torch's tensor and generator types once it finds torch in
#: ``sys.modules``; it asks ``lazytorch.imported`` instead.
DILL_MODULE = "datasets.utils._dill"
DILL_ORIGINAL = '            if "torch" in sys.modules:\n'
DILL_REPLACEMENT = (
    '            if __import__("lmms_runner.lazytorch").lazytorch.imported("torch"):\n'
)
#: The modules of lmms-eval 0.7.3 that build an ``Accelerator`` in a single process:
#: ``cli_evaluate`` (for ``is_main_process`` and ``wait_for_everyone``), the
#: OpenAI-compatible backend (for its rank and world size), the evaluator (for a model
#: without one) and tasks that download videos (for ``is_main_process``).
ACCELERATOR_USERS = (
    "lmms_eval.__main__",
    "lmms_eval.models.simple.openai",
    "lmms_eval.evaluator",
    "lmms_eval.api.task",
)


def torch_on_first_use(argv: list[str]) -> bool:
    """For a backend in ``API_BACKENDS`` in a process of its own, torch and accelerate
    are imported when first used (``lazytorch``); with the OpenAI-compatible backend
    nothing in a run uses them. False (and nothing changed) for any other backend, under
    torchrun (``WORLD_SIZE`` > 1: accelerate and torch.distributed do the work), or where
    torch is imported already."""
    if model_name(argv) not in API_BACKENDS or int(os.environ.get("WORLD_SIZE") or 1) > 1:
        return False
    if not lazytorch.install():
        return False
    for module in POSTPONED_ANNOTATIONS:
        importhooks.postpone_annotations(module)
    importhooks.patch_source(DILL_MODULE, DILL_ORIGINAL, DILL_REPLACEMENT)
    importhooks.after_import("datasets", _datasets_without_torch)
    for module in ACCELERATOR_USERS:
        importhooks.after_import(module, _single_process_accelerator)
    importhooks.after_import("lmms_eval.api.model", _clean_without_torch)
    return True


def _datasets_without_torch(_datasets: types.ModuleType) -> None:
    """datasets asks ``config.TORCH_AVAILABLE and "torch" in sys.modules`` before it looks
    for tensors among the objects it encodes: until torch is imported there are none, so
    it is told torch is not available (once its own import, which registers torch's
    formatter by it, is done), and told again that it is when torch is imported."""
    config = importlib.import_module("datasets.config")
    if not getattr(config, "TORCH_AVAILABLE", False) or lazytorch.loaded():
        return
    setattr(config, "TORCH_AVAILABLE", False)  # noqa: B010
    lazytorch.on_load(lambda: setattr(config, "TORCH_AVAILABLE", True))


class SingleProcessAccelerator:
    """What lmms-eval 0.7.3 reads from accelerate's ``Accelerator`` in a process of its
    own (``WORLD_SIZE`` unset or 1): one process, index 0, the main one, whose
    ``wait_for_everyone`` has nobody to wait for. The OpenAI-compatible backend keeps its
    device without using it; accelerate makes it on first use. (``cli_evaluate`` also
    hands accelerate a process group timeout, which one process has no group to use
    for.)"""

    num_processes = 1
    process_index = 0
    local_process_index = 0
    is_main_process = True
    is_local_main_process = True

    def wait_for_everyone(self) -> None:
        pass

    @property
    def device(self) -> Any:
        return lazytorch.LazyValue(
            lambda: lazytorch.attribute("accelerate", "PartialState")().device
        )

    @property
    def distributed_type(self) -> Any:
        return lazytorch.attribute("accelerate", "DistributedType").NO


class _Handler:
    """``InitProcessGroupKwargs(**kwargs)`` as ``cli_evaluate`` makes it, made for real
    only if it reaches accelerate's own ``Accelerator``."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def real(self) -> Any:
        return lazytorch.attribute("accelerate.utils", "InitProcessGroupKwargs")(**self.kwargs)


def _accelerator(*args: Any, **kwargs: Any) -> Any:
    """``Accelerator(...)`` as lmms-eval calls it: ``SingleProcessAccelerator`` while
    torch is not imported, accelerate's own after."""
    if not lazytorch.loaded():
        return SingleProcessAccelerator()
    handlers = kwargs.get("kwargs_handlers")
    if handlers:
        kwargs["kwargs_handlers"] = [h.real() if isinstance(h, _Handler) else h for h in handlers]
    return lazytorch.attribute("accelerate", "Accelerator")(*args, **kwargs)


def _single_process_accelerator(module: types.ModuleType) -> None:
    """lmms-eval's ``cli_evaluate`` and OpenAI-compatible backend, in a process of their
    own, build ``_accelerator`` (and ``_Handler``) instead of accelerate's classes."""
    setattr(module, "Accelerator", _accelerator)  # noqa: B010
    if hasattr(module, "InitProcessGroupKwargs"):
        setattr(module, "InitProcessGroupKwargs", _Handler)  # noqa: B010


def _clean_without_torch(module: types.ModuleType) -> None:
    """``lmms.clean()``, which the evaluator calls once every answer is in, while torch is
    not imported: accelerate's ``free_memory`` where the model's accelerator has it (as
    before), and the collection, but no search for torch modules among the model's
    attributes and no emptying of torch's CUDA cache: before torch is imported there is
    no such module and no such cache. After, the original runs."""
    base = module.lmms
    original = base.clean

    def clean(self: Any) -> None:
        if lazytorch.loaded():
            original(self)
            return
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and hasattr(accelerator, "free_memory"):
            accelerator.free_memory()
        gc.collect()

    base.clean = clean
