"""spec.model.engine end to end: the real operator renders the engine sidecar, the
executor runs the pod's two containers (the engine from an image: the loopback model
server behind a `vllm serve` command line, tests/fixtures/engine; the real runner with
real lmms-eval 0.7.3, offline), the runner waits for the server over the pod's
127.0.0.1, and the run succeeds with its scores; an engine that crashes mid-run ends the
run Failed with reason EngineFailed and its last lines, redacted."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from lmms_devcluster import devcluster
from tests import evalruns as er
from tests.fixtures import colortask
from tests.helpers import wait_for
from tests.operator_process import OperatorProcess

pytestmark = [pytest.mark.e2e]

TASK_DIR = "/etc/lmms/tasks/colors-task"
#: What the engine prints while "downloading": the run's Hugging Face token.
HF_TOKEN = "hf_" + "EngineE2eSecret" * 3
MODEL = "stub/tiny-vl"


@pytest.fixture(scope="module")
def stub_image() -> str:
    """The stand-in engine image (tests/fixtures/engine; cached, keyed by its inputs)."""
    script = devcluster.HERE / "images.sh"
    out = subprocess.run(["bash", str(script), "engine-stub"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"images.sh engine-stub failed:\n{out.stderr[-3000:]}")
    name, tag = out.stdout.split()
    return f"localhost/{name}:{tag}"


@pytest.fixture()
def engine_operator(
    cluster: devcluster.DevCluster,
    namespace: str,
    operator_process: OperatorProcess,
    stub_image: str,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    """The operator with the stand-in as its vLLM image, for this namespace only (the
    session's operator stops meanwhile)."""
    env = {"LMMS_ENGINE_IMAGE_VLLM": stub_image, "LMMS_ALLOWED_ENV": "STUB_*"}
    operator_process.stop()
    proc = OperatorProcess(cluster, tmp_path, env=env, args=["--namespace", namespace])
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()
        operator_process.start()


def engine_run(core: client.CoreV1Api, namespace: str, name: str, **stub: str) -> dict[str, Any]:
    """The custom "colors" task, the run's Hugging Face token, and an engine run of it."""
    with_task = {"colors-task": colortask.files("colors", samples=10, data_dir=TASK_DIR)}
    for cm, data in with_task.items():
        if not core.list_namespaced_config_map(
            namespace, field_selector=f"metadata.name={cm}"
        ).items:
            core.create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=cm), data=data)
            )
    if not core.list_namespaced_secret(namespace, field_selector="metadata.name=hf").items:
        core.create_namespaced_secret(
            namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="hf", labels=er.USABLE),
                string_data={"token": HF_TOKEN},
            ),
        )
    body = er.manifest(
        name,
        er.EXECUTOR,
        model={
            "type": "openai",
            "engine": "vllm",
            "pretrained": MODEL,
            "args": {"num_concurrent": "1"},
        },
        customTasks=[{"configMap": "colors-task", "tasks": ["colors"]}],
        env=[
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "HF_DATASETS_OFFLINE", "value": "1"},
            *({"name": k, "value": v} for k, v in stub.items()),
        ],
    )
    body["spec"]["tasks"] = []
    body["spec"]["resources"] = {"gpus": 2}
    body["spec"]["huggingFaceToken"] = {"secretKeyRef": {"name": "hf", "key": "token"}}
    return body


def watch(
    api: client.ApiClient, namespace: str, name: str, timeout: float
) -> tuple[dict[str, Any], set[tuple[str, str]]]:
    """The run's status once it ended, and every (phase, reason) it went through."""
    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = er.get(api, namespace, name).get("status") or {}
        seen.add((status.get("phase") or "", status.get("reason") or ""))
        if status.get("phase") in ("Succeeded", "Failed"):
            return status, seen
        time.sleep(0.3)
    raise AssertionError(f"{name} did not end within {timeout}s: {status}")


def pod_of(api: client.ApiClient, namespace: str, run: dict[str, Any]) -> client.V1Pod:
    core = client.CoreV1Api(api)
    (job,) = er.jobs_of(api, namespace, run)
    (pod,) = core.list_namespaced_pod(
        namespace, label_selector=f"job-name={job.metadata.name}"
    ).items
    return pod


def test_an_engine_run_waits_for_its_server_and_succeeds_with_the_scores(
    api: client.ApiClient, namespace: str, engine_operator: OperatorProcess
) -> None:
    core = client.CoreV1Api(api)
    body = engine_run(core, namespace, "engine-ok", STUB_START_DELAY="12")
    er.create(api, namespace, body)
    status, seen = watch(api, namespace, "engine-ok", timeout=420)
    assert status["phase"] == "Succeeded", status["message"]
    # While the server loaded, the runner waited and the status said so.
    assert ("Running", "ModelLoading") in seen, seen
    (result,) = status["results"]
    assert (result["task"], result["metric"]) == ("colors", "exact_match")
    assert result["value"] == pytest.approx(1.0)
    run = er.get(api, namespace, "engine-ok")
    pod = pod_of(api, namespace, run)
    # One pod, two containers: the engine (a native sidecar, with the pod's GPUs) and the
    # runner (no GPU; a request = limit of its own, LMMS_ENGINE_RUNNER_*), each with its
    # status.
    (engine,) = pod.spec.init_containers
    (runner,) = pod.spec.containers
    assert engine.name == "engine" and engine.restart_policy == "Always"
    assert engine.resources.limits == {"nvidia.com/gpu": "2"}
    runner_share = {"cpu": "1", "memory": "4Gi"}
    assert runner.resources.limits == runner.resources.requests == runner_share
    assert "--tensor-parallel-size" in engine.command and "2" in engine.command
    assert pod.status.phase == "Succeeded"
    (engine_status,) = pod.status.init_container_statuses
    assert engine_status.name == "engine" and engine_status.restart_count == 0
    assert engine_status.state.terminated is not None  # stopped once the runner exited
    (runner_status,) = pod.status.container_statuses
    assert runner_status.state.terminated.exit_code == 0
    # The runner evaluated the id the server listed, and says so.
    cm = core.read_namespaced_config_map(status["resultsConfigMap"], namespace)
    provenance = json.loads(cm.data["results.json"])["provenance"]
    assert provenance["servedModel"] == MODEL
    assert provenance["endpoint"] == "http://127.0.0.1:8000/v1"


def test_an_engine_that_crashes_mid_run_fails_the_run_with_its_last_lines_redacted(
    api: client.ApiClient, namespace: str, engine_operator: OperatorProcess
) -> None:
    core = client.CoreV1Api(api)
    body = engine_run(core, namespace, "engine-crash", STUB_CRASH_AFTER="3")
    er.create(api, namespace, body)
    status, _ = watch(api, namespace, "engine-crash", timeout=420)
    assert (status["phase"], status["reason"]) == ("Failed", "EngineFailed"), status
    message = status["message"]
    assert "the vllm engine (container engine of pod" in message
    assert "exited with code 1" in message
    assert "CUDA error: an illegal memory access" in message
    assert HF_TOKEN not in message and "[REDACTED]" in message, message
    assert er.wait_event(api, namespace, "engine-crash", "EngineFailed")
    # The run's Job is stopped: no pod holds the GPUs any longer.
    run = er.get(api, namespace, "engine-crash")

    def released() -> bool:
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"eval.lmms.dev/run-uid={run['metadata']['uid']}"
        ).items
        return all(p.status.phase in ("Succeeded", "Failed") for p in pods)

    wait_for(released, timeout=60)
