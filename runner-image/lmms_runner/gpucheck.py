"""Whether the pod's NVIDIA GPUs can run the image's torch: checked before lmms-eval starts.

A pod that requests NVIDIA GPUs (``spec.resources``: ``gpus`` of an ``nvidia.com/``
resource, in a pod the operator made: ``POD_IP`` is set) on a node whose
driver is older than the torch build's CUDA needs, or without the driver in the container
at all (no NVIDIA container runtime, a missing ``runtimeClassName``), would otherwise
fail deep inside lmms-eval, after minutes of loading, with torch's warning and a
traceback. The runner stops first, with the reason the operator shows: ``DriverTooOld``
(naming the required and the found driver) or ``NoGPU``.

The driver is asked through its own libraries (``libcuda.so.1``: the CUDA version it
supports, ``cuInit``, the device count; ``libnvidia-ml.so.1`` or
``/proc/driver/nvidia/version``: its version), never through torch, whose import costs
seconds. The torch build's CUDA version is read from ``torch/version.py`` the same way.
"""

from __future__ import annotations

import ast
import ctypes
import importlib.util
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lmms_operator.api import ResourcesSpec
from lmms_operator.api.runner import DRIVER_TOO_OLD, NO_GPU, SIMULATED_GPUS_ENV

#: The oldest Linux driver of each CUDA major version: a build for CUDA X.Y runs on every
#: driver of X's family from this one on (NVIDIA's minor version compatibility).
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}

CUDA_SUCCESS = 0
PROC_VERSION = Path("/proc/driver/nvidia/version")


@dataclass(frozen=True)
class Driver:
    """What the container sees of the node's NVIDIA driver."""

    #: The driver's version ("580.65.06"), when NVML or /proc tell it.
    version: str | None
    #: The newest CUDA version the driver supports (cuDriverGetVersion: 13000 is 13.0).
    cuda: int | None
    #: cuInit's error name ("CUDA_ERROR_NO_DEVICE"); None when CUDA initialised.
    init_error: str | None = None
    #: GPUs CUDA sees.
    devices: int = 0


@dataclass(frozen=True)
class TorchBuild:
    version: str
    #: The CUDA version torch was built for ("13.2"); None for a CPU build.
    cuda: str | None


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


def torch_build() -> TorchBuild | None:
    """The installed torch's version and CUDA build, from ``torch/version.py`` without
    importing torch; None when torch is not installed."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return None
    values: dict[str, object] = {}
    tree = ast.parse((Path(spec.origin).parent / "version.py").read_text())
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            values[target.id] = value.value
    cuda = values.get("cuda")
    return TorchBuild(str(values.get("__version__", "?")), cuda if isinstance(cuda, str) else None)


def query() -> Driver | None:
    """The node's driver as the container sees it; None when no driver is in it."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    number = ctypes.c_int(0)
    cuda = number.value if libcuda.cuDriverGetVersion(ctypes.byref(number)) == 0 else None
    code = libcuda.cuInit(0)
    devices = ctypes.c_int(0)
    if code == CUDA_SUCCESS:
        libcuda.cuDeviceGetCount(ctypes.byref(devices))
    return Driver(
        version=_nvml_version() or _proc_version(),
        cuda=cuda,
        init_error=None if code == CUDA_SUCCESS else _error_name(libcuda, code),
        devices=devices.value,
    )


def _error_name(libcuda: ctypes.CDLL, code: int) -> str:
    name = ctypes.c_char_p()
    if libcuda.cuGetErrorName(code, ctypes.byref(name)) == 0 and name.value:
        return name.value.decode()
    return f"CUDA error {code}"


def _nvml_version() -> str | None:
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        buffer = ctypes.create_string_buffer(96)
        if nvml.nvmlSystemGetDriverVersion(buffer, len(buffer)) != 0:
            return None
        return buffer.value.decode() or None
    finally:
        nvml.nvmlShutdown()


def _proc_version() -> str | None:
    try:
        text = PROC_VERSION.read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    return found.group(1) if found else None


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def _cuda_text(cuda: int) -> str:
    return f"{cuda // 1000}.{cuda % 1000 // 10}"


def check(
    gpus: int, torch: TorchBuild | None, query: Callable[[], Driver | None] = query
) -> Problem | None:
    """Why the pod's ``gpus`` NVIDIA GPUs cannot run ``torch``; None when they can (or
    when there is nothing to check: no GPUs, no torch, or torch without CUDA)."""
    if gpus <= 0 or torch is None or torch.cuda is None:
        return None
    major = _numbers(torch.cuda)[0]
    required = MIN_DRIVER.get(major, f"one of CUDA {major}.x")
    needs = (
        f"the image's torch {torch.version} is built for CUDA {torch.cuda}, which needs an "
        f"NVIDIA driver >= {required}"
    )
    driver = query()
    if driver is None:
        return Problem(
            NO_GPU,
            f"the pod requests {gpus} NVIDIA GPU(s), but no NVIDIA driver is in the container "
            f"(libcuda.so.1 cannot be loaded): is the node's NVIDIA container runtime set up "
            f"(runtimeClassName, the device plugin)? {needs}",
        )
    found = driver.version or "of unknown version"
    if driver.cuda is not None:
        found += f", supporting CUDA {_cuda_text(driver.cuda)}"
    too_old = (
        driver.cuda // 1000 < major
        if driver.cuda is not None
        else driver.version is not None
        and major in MIN_DRIVER
        and _numbers(driver.version) < _numbers(required)
    )
    if too_old:
        return Problem(
            DRIVER_TOO_OLD,
            f"{needs}; the node's driver is {found}: upgrade the node's driver, or run on "
            f"nodes that have one (spec.scheduling.nodeSelector)",
        )
    if driver.init_error is not None or driver.devices < gpus:
        why = driver.init_error or f"it sees {driver.devices} GPU(s)"
        return Problem(
            NO_GPU,
            f"the pod requests {gpus} NVIDIA GPU(s), but CUDA cannot use them ({why}) with "
            f"the node's driver {found}",
        )
    return None


def at_start(resources: ResourcesSpec, env: Mapping[str, str]) -> Problem | None:
    """The check, in a pod (``POD_IP``: not on a workstation, where a CPU may run what
    the spec gives GPUs) that requests NVIDIA GPUs, unless its node simulates them
    (LMMS_SIMULATED_GPUS: the devcluster's executor), nor where the model is served
    (LMMS_MODEL_URL: an engine sidecar holds the pod's GPUs, the runner none)."""
    if not env.get("POD_IP") or env.get(SIMULATED_GPUS_ENV) or env.get("LMMS_MODEL_URL"):
        return None
    if not resources.gpu_resource_name.startswith("nvidia.com/"):
        return None
    return check(resources.gpus, torch_build())
