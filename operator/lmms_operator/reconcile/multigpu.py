"""How a Hugging Face backend uses a pod's GPUs (``spec.model.multiGPU``). Pure.

**DataParallel**: one process per GPU (``accelerate launch --multi_gpu``), each holding a
whole copy of the model and evaluating a share of the documents. **ModelParallel**: one
process that spreads one copy over the pod's GPUs (``device_map=auto``).

The default, with more than one GPU, follows the model's size: a preset's checkpoint needs
``WEIGHT_BYTES`` a parameter (bf16 weights) plus ``HEADROOM`` of that for activations,
the KV cache and the CUDA context; when that fits in the memory the admin declares for the
run's GPU resource (``LMMS_GPU_MEMORY``; Helm: ``settings.gpuMemory``) the run is data
parallel, when it does not, model parallel. A 7B preset (about 8 billion parameters)
needs 20 GB: data parallel on 24 or 80 GB GPUs, model parallel on 10 GB MIG slices.
Where the size is unknown (no preset, another checkpoint than the preset's, no declared
memory) the spec must choose. The operator writes the mode it decided into the run
configuration (``job.run_config``), so the runner reads one field, and ``lmms-runner
--config`` by hand does what the spec says (unset: data parallel).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .. import catalogue, presets
from ..api import EvalRunSpec
from ..api.resources import EXTENDED_RESOURCE
from ..errors import Problem

Mode = Literal["DataParallel", "ModelParallel"]
DATA_PARALLEL: Mode = "DataParallel"
MODEL_PARALLEL: Mode = "ModelParallel"
FIELD = "spec.model.multiGPU"
SETTING = "LMMS_GPU_MEMORY"

#: Bytes a parameter takes in bf16, and the share of the weights added for the rest.
WEIGHT_BYTES = 2
HEADROOM = 0.25

#: Backends whose lmms-eval 0.7.3 class takes ``device_map`` but loads the whole model
#: onto one device whatever it says (internvideo2 and videochat2 move it to one GPU;
#: video_llava never passes it on, so ``auto`` leaves the model on the CPU).
IGNORES_DEVICE_MAP = frozenset({"internvideo2", "videochat2", "video_llava"})
#: internvl2 splits the model itself, by a table of layer counts keyed by the checkpoint's
#: last path segment (lmms_eval/models/simple/internvl2.py ``split_model``), unless
#: ``num_layers`` is given.
INTERNVL2_SPLITS = frozenset(
    {
        "InternVL2_5-1B",
        "InternVL2_5-2B",
        "InternVL2_5-4B",
        "InternVL2_5-8B",
        "InternVL2_5-26B",
        "InternVL2_5-38B",
        "InternVL2_5-78B",
        "InternVL2-1B",
        "InternVL2-2B",
        "InternVL2-4B",
        "InternVL2-8B",
        "InternVL2-26B",
        "InternVL2-40B",
        "InternVL2-Llama3-76B",
    }
)


@dataclass(frozen=True)
class GpuMemory:
    """The memory of one GPU, in bytes, per extended resource name (the admin's word)."""

    per_resource: tuple[tuple[str, int], ...] = ()

    def of(self, resource: str) -> int | None:
        return dict(self.per_resource).get(resource)


#: No memory declared: every default needs the spec's word (``check``).
UNDECLARED = GpuMemory()


_QUANTITY = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")
_UNITS = {
    "": 1,
    **{u: 1024 ** (i + 1) for i, u in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{u: 1000 ** (i + 1) for i, u in enumerate(("k", "M", "G", "T", "P", "E"))},
}
_RESOURCE = re.compile(EXTENDED_RESOURCE.strip("^$"))


def parse_gpu_memory(raw: str) -> GpuMemory:
    """``nvidia.com/gpu=80Gi,nvidia.com/mig-1g.10gb=10Gi`` (quantities as Kubernetes
    writes them: a number with a binary or decimal suffix); ValueError naming the
    variable on anything else. Empty: nothing declared."""
    found: dict[str, int] = {}
    for item in (p.strip() for p in raw.split(",")):
        if not item:
            continue
        name, sep, quantity = (s.strip() for s in item.partition("="))
        if not sep or not _RESOURCE.fullmatch(name) or len(name) > 253:
            raise ValueError(
                f"{SETTING}: expected RESOURCE=QUANTITY with a domain-prefixed extended "
                f"resource name (nvidia.com/gpu=80Gi), got {item!r}"
            )
        match = _QUANTITY.fullmatch(quantity) if len(quantity) <= 32 else None
        size = int(float(match["n"]) * _UNITS[match["unit"] or ""]) if match else 0
        if size <= 0 or size > 2**60:
            raise ValueError(
                f"{SETTING}: {name}: expected a positive memory quantity such as 80Gi, "
                f"got {quantity!r}"
            )
        if name in found:
            raise ValueError(f"{SETTING}: {name} is declared twice")
        found[name] = size
    return GpuMemory(tuple(sorted(found.items())))


def needed_bytes(spec: EvalRunSpec) -> int | None:
    """GPU memory the model needs in one process, when its preset's checkpoint runs."""
    preset = presets.PRESETS.get(spec.model.type)
    if preset is None or preset.params_b is None:
        return None
    if preset.pretrained is not None:
        if spec.model.pretrained not in (None, preset.pretrained):
            return None
    elif spec.model.pretrained is not None or any(
        spec.model.args.get(k, v) != v for k, v in preset.args.items()
    ):
        return None  # the preset's args name the checkpoint (phi3v's model_id_name)
    return int(preset.params_b * 1e9 * WEIGHT_BYTES * (1 + HEADROOM))


def splits(model_type: str, cat: catalogue.Catalogue) -> bool:
    """Whether the backend spreads a model over GPUs given ``device_map=auto``."""
    takes = "device_map" in cat.model_args.get(model_type, ())
    return takes and model_type not in IGNORES_DEVICE_MAP


def _served(spec: EvalRunSpec) -> str | None:
    """The field that makes another program hold the model (an engine or an endpoint)."""
    for name in ("engine", "endpoint"):
        if getattr(spec.model, name, None) is not None:
            return f"spec.model.{name}"
    return None


def mode(
    spec: EvalRunSpec, memory: GpuMemory, cat: catalogue.Catalogue | None = None
) -> Mode | None:
    """The mode the runner uses: the spec's, else the default; None where the question
    does not arise (one GPU or none, an engine or endpoint) or the size is unknown
    (``check`` refuses such a spec)."""
    if spec.model.multi_gpu is not None:
        return spec.model.multi_gpu
    res = spec.resources
    if res.gpus <= 1 or _served(spec):
        return None
    if res.nodes > 1 or not splits(spec.model.type, cat or catalogue.load()):
        return DATA_PARALLEL
    need, have = needed_bytes(spec), memory.of(res.gpu_resource_name)
    if need is None or have is None:
        return None
    return DATA_PARALLEL if need <= have else MODEL_PARALLEL


def check(
    spec: EvalRunSpec, memory: GpuMemory, cat: catalogue.Catalogue | None = None
) -> list[Problem]:
    """A mode the run cannot use, or none chosen where the operator cannot tell."""
    cat = cat or catalogue.load()
    res, mtype = spec.resources, spec.model.type
    if spec.model.multi_gpu == MODEL_PARALLEL:
        served = _served(spec)
        why = None
        if res.nodes > 1:
            why = (
                "runs in one pod, and resources.nodes > 1 is data parallel over one torchrun "
                "world; use one node with more GPUs"
            )
        elif served:
            why = f"is for Hugging Face backends; with {served} the server spreads the model"
        elif res.gpus < 1:
            why = "spreads the model over the pod's GPUs, and resources.gpus is 0"
        elif not splits(mtype, cat):
            why = (
                f"needs a backend that spreads the model given device_map=auto, and "
                f"lmms-eval's {mtype!r} "
                + ("loads it onto one device" if mtype in IGNORES_DEVICE_MAP else "takes none")
            )
        elif mtype == "internvl2" and not _internvl2_splits(spec):
            why = (
                "with internvl2 needs a checkpoint lmms-eval knows the layers of "
                f"({', '.join(sorted(INTERNVL2_SPLITS))}) or model.args.num_layers"
            )
        return [Problem(FIELD, f"ModelParallel {why}")] if why else []
    if spec.model.multi_gpu is None and res.gpus > 1 and mode(spec, memory, cat) is None:
        if _served(spec):
            return []
        if needed_bytes(spec) is None:
            unknown = (
                f"the size of {spec.model.pretrained or mtype!r} is not known "
                "(no preset of that checkpoint)"
            )
        else:
            unknown = f"the admin declares no memory for {res.gpu_resource_name} GPUs"
        return [
            Problem(
                FIELD,
                f"required with resources.gpus > 1: {unknown}, so the operator cannot tell "
                "whether the model fits on one GPU; set DataParallel (one process per GPU, "
                "each with a whole copy) or ModelParallel (one process spreading the model "
                "over the GPUs)",
            )
        ]
    return []


def _internvl2_splits(spec: EvalRunSpec) -> bool:
    pretrained, args = presets.resolve(spec.model.type, spec.model.pretrained, spec.model.args)
    name = (pretrained or "").rstrip("/").split("/")[-1]
    return name in INTERNVL2_SPLITS or "num_layers" in args
