"""torch without the parts a backend that holds no model never uses.

Where torch is imported in a run of a backend in ``API_BACKENDS`` (which send every request
to a server), ``import torch`` also loads what only models, compilers and CUDA code of one's
own use (``API_UNUSED``): its Python meta kernels (with the decompositions, references and
primitives they import), which compute the shapes of operators on meta tensors, and only
models (loaded onto the meta device first, or traced by ``torch.compile``) make those;
``torch.export`` with its FX passes; ``torch.distributions``; and NVIDIA's CUDA bindings,
which ``torch.cuda`` imports for NVRTC, green contexts and graph annotations.
``defer_torch_unused`` defers each of them to its first use, and imports all of them as
soon as one of ``META_USERS`` (what makes meta or fake tensors) is imported. A meta tensor
made without any of them meets an operator whose meta kernel is one of these with torch's
own error (``NotImplementedError: ... with Meta tensors``), never a wrong result.
"""

from __future__ import annotations

import sys

from .. import deferred, importhooks
from .backend import API_BACKENDS, model_name

#: The lmms-eval versions (and the torch they run with) this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})

#: The modules that use meta or fake tensors: torch's decompositions (which fake tensors,
#: ``torch.compile`` and ``torch.export`` go through) and the libraries that load a model
#: onto the meta device first. When one of them is imported, so is ``API_UNUSED``.
META_USERS = ("torch._decomp", "torch._dynamo", "transformers.modeling_utils", "diffusers")
META_REGISTRATIONS = "torch._meta_registrations"
#: What ``import torch`` loads and a backend in ``API_BACKENDS`` does not use: torch's
#: Python meta kernels, ``torch.export`` (with the FX passes it imports),
#: ``torch.distributions``, and NVIDIA's CUDA bindings, which ``torch.cuda._utils``
#: imports for NVRTC, green contexts and graph annotations.
API_UNUSED = (
    META_REGISTRATIONS,
    "torch.export",
    "torch.distributions",
    "cuda.bindings.driver",
    "cuda.bindings.runtime",
)


def defer_torch_unused(argv: list[str]) -> bool:
    """For a backend in ``API_BACKENDS``, ``import torch`` without ``API_UNUSED``: each
    module is imported when something first asks it for a name, and all of them as soon
    as one of ``META_USERS`` is imported. False (and nothing changed) for any other
    backend, or where torch is imported already."""
    if model_name(argv) not in API_BACKENDS or "torch" in sys.modules:
        return False
    for name in API_UNUSED:
        deferred.defer(name)
    for name in META_USERS:
        importhooks.after_import(name, lambda _module: load_torch_unused())
    return True


def load_torch_unused() -> None:
    """``API_UNUSED``, imported now where they were deferred."""
    for name in API_UNUSED:
        module = sys.modules.get(name)
        if isinstance(module, deferred.Deferred):
            deferred.import_now(module)
