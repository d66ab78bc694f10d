"""The runner's driver check at start, and the reason the operator shows for it.

A pod that requests NVIDIA GPUs on a node whose driver cannot run the image's torch (too
old for its CUDA build, or absent) fails at once with DriverTooOld or NoGPU, naming the
required and the found driver, instead of a traceback from deep inside lmms-eval."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

from lmms_devcluster import executor
from lmms_operator.api import ResourcesSpec
from lmms_operator.api import runner as runner_api
from lmms_operator.reconcile import reasons as R
from lmms_runner import gpucheck, results
from lmms_runner.gpucheck import Driver, Problem, TorchBuild
from tests.unit.test_status import failed_job, observe, pod, terminated

CU132 = TorchBuild("2.15.0+cu132", "13.2")


def fake(driver: Driver | None) -> Callable[[], Driver | None]:
    return lambda: driver


def test_a_driver_older_than_the_torch_build_needs_is_named_with_both_versions() -> None:
    # Driver 550 supports CUDA 12.4; torch built for CUDA 13.2 needs the 580 family.
    old = Driver(version="550.54.15", cuda=12040, devices=1)
    problem = gpucheck.check(1, CU132, fake(old))
    assert problem is not None and problem.reason == "DriverTooOld"
    assert "CUDA 13.2" in problem.message and ">= 580.65.06" in problem.message
    assert "550.54.15, supporting CUDA 12.4" in problem.message
    # The driver's version alone (no cuDriverGetVersion) decides as well.
    assert gpucheck.check(1, CU132, fake(Driver("575.57.08", None, devices=1))) == Problem(
        "DriverTooOld",
        "the image's torch 2.15.0+cu132 is built for CUDA 13.2, which needs an NVIDIA driver "
        ">= 580.65.06; the node's driver is 575.57.08: upgrade the node's driver, or run on "
        "nodes that have one (spec.scheduling.nodeSelector)",
    )


def test_a_driver_of_the_same_cuda_family_runs_a_newer_minor_build() -> None:
    # CUDA's minor version compatibility: driver 580 (CUDA 13.0) runs a 13.2 build.
    assert gpucheck.check(1, CU132, fake(Driver("580.65.06", 13000, devices=1))) is None
    assert gpucheck.check(8, CU132, fake(Driver("590.44.01", 13010, devices=8))) is None


def test_no_driver_in_the_container_is_no_gpu() -> None:
    problem = gpucheck.check(2, CU132, fake(None))
    assert problem is not None and problem.reason == "NoGPU"
    assert "requests 2 NVIDIA GPU(s)" in problem.message and "libcuda.so.1" in problem.message
    assert ">= 580.65.06" in problem.message and "runtimeClassName" in problem.message


def test_cuda_that_cannot_initialise_or_sees_too_few_gpus_is_no_gpu() -> None:
    no_device = Driver("580.65.06", 13000, init_error="CUDA_ERROR_NO_DEVICE")
    problem = gpucheck.check(1, CU132, fake(no_device))
    assert problem is not None and problem.reason == "NoGPU"
    assert "CUDA_ERROR_NO_DEVICE" in problem.message and "580.65.06" in problem.message
    fewer = gpucheck.check(4, CU132, fake(Driver("580.65.06", 13000, devices=2)))
    assert fewer is not None and fewer.reason == "NoGPU" and "sees 2 GPU(s)" in fewer.message


def test_nothing_is_asked_without_gpus_or_a_cuda_build() -> None:
    def never() -> Driver | None:
        raise AssertionError("the driver was queried")

    assert gpucheck.check(0, CU132, never) is None
    assert gpucheck.check(1, TorchBuild("2.15.0+cpu", None), never) is None
    assert gpucheck.check(1, None, never) is None


def test_only_pods_that_request_nvidia_gpus_are_checked_and_simulated_gpus_never() -> None:
    # A workstation run (no POD_IP: a CPU may run what the spec gives a GPU), another
    # vendor's GPUs, and the devcluster executor's pods (GPUs simulated, no driver) start
    # without a check.
    one_gpu = ResourcesSpec(gpus=1)
    assert gpucheck.at_start(one_gpu, {}) is None
    pod_env = {"POD_IP": "10.0.0.7"}
    amd = ResourcesSpec(gpus=1, gpu_resource_name="amd.com/gpu")
    assert gpucheck.at_start(amd, pod_env) is None
    assert gpucheck.at_start(one_gpu, {**pod_env, "LMMS_SIMULATED_GPUS": "1"}) is None
    assert executor.SIMULATED_GPUS_ENV == runner_api.SIMULATED_GPUS_ENV


def test_the_torch_build_is_read_from_its_version_file() -> None:
    import torch.version as torch

    found = gpucheck.torch_build()
    assert found is not None
    assert found.version == torch.__version__  # "2.15.0+cu132": the build, not only the release
    assert found.version.startswith(importlib.metadata.version("torch"))
    assert found.cuda == torch.cuda


def test_the_run_fails_with_the_runners_reason_and_message() -> None:
    problem = gpucheck.check(1, CU132, fake(Driver("550.54.15", 12040, devices=1)))
    assert problem is not None
    message = results.failure_message(problem.reason, problem.message)
    failed = observe(
        failed_job("PodFailurePolicy"), [pod("Failed", terminated(2, message=message))]
    )
    assert (failed.phase, failed.reason) == ("Failed", R.DRIVER_TOO_OLD)
    assert failed.message == problem.message
    assert R.DRIVER_TOO_OLD in R.FAILURE_REASONS and R.NO_GPU in R.FAILURE_REASONS
    # Any other runner failure stays RunnerError, with the runner's text.
    other = results.failure_message("ConfigError", "spec.tasks: at least one task is required")
    config = observe(failed_job("PodFailurePolicy"), [pod("Failed", terminated(2, message=other))])
    assert config.reason == R.RUNNER_ERROR and "at least one task" in config.message
