"""spec.model.engine: the engine's server as a native sidecar of the run's pod, the checks
on an engine run, the operator's engine images, and what the engine's status tells."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from lmms_operator.config import Settings
from lmms_operator.errors import InvalidSpec
from lmms_operator.reconcile import identity, inference, observation, reuse
from lmms_operator.reconcile import job as jobs
from lmms_operator.reconcile import reasons as R
from lmms_operator.reconcile import status as st
from lmms_operator.reconcile.validate import Policy, validate

RUN = jobs.RunRef("big-model", "team-a", "0b8e6f5c-1111-2222-3333-444455556666")
IMAGES = (("vllm", "registry.example/vllm:1"), ("sglang", "registry.example/sglang:1"))
POLICY = Policy(engines=frozenset({"vllm", "sglang"}))
RUNNER = dataclasses.replace(Settings().runner, engine_images=IMAGES)
NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def raw(**model: Any) -> dict[str, Any]:
    base = {"type": "openai", "pretrained": "Qwen/Qwen2-VL-72B-Instruct", "engine": "vllm"}
    return {
        "model": {**base, **model},
        "tasks": ["mme"],
        "resources": {"gpus": 4, "memory": "200Gi", "cpu": "16"},
        "huggingFaceToken": {"secretKeyRef": {"name": "hf", "key": "token"}},
        "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
    }


def pod_spec(spec: dict[str, Any]) -> dict[str, Any]:
    desired = jobs.build(RUN, validate(spec, POLICY), RUNNER, token="t0ken")
    return dict(desired.job["spec"]["template"]["spec"])


def problems(spec: dict[str, Any], policy: Policy = POLICY) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as exc:
        validate(spec, policy)
    return {p.field: p.message for p in exc.value.problems}


def test_the_engine_is_a_native_sidecar_with_the_pods_gpus_and_the_runner_requests_none() -> None:
    pod = pod_spec(raw())
    [engine] = pod["initContainers"]
    [runner] = pod["containers"]
    assert engine["name"] == "engine" and engine["restartPolicy"] == "Always"
    assert engine["image"] == "registry.example/vllm:1"
    assert engine["command"] == [
        *("vllm", "serve", "Qwen/Qwen2-VL-72B-Instruct", "--tensor-parallel-size", "4"),
        *("--host", "127.0.0.1", "--port", "8000"),
        *("--served-model-name", "Qwen/Qwen2-VL-72B-Instruct"),
    ]
    wanted = {"nvidia.com/gpu": "4", "memory": "200Gi", "cpu": "16"}
    assert engine["resources"] == {"requests": wanted, "limits": wanted}
    # A sidecar's requests add to the regular containers': the pod asks for 4 GPUs once;
    # the runner has a small request = limit of its own (a quota on limits admits it).
    own = {"cpu": "1", "memory": "4Gi"}
    assert runner["resources"] == {"requests": own, "limits": own}
    assert engine["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert engine["securityContext"] == runner["securityContext"]
    assert engine["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in engine["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert env["HF_HOME"]["value"] == jobs.HF_HOME and env["VLLM_LOGGING_LEVEL"]["value"] == "DEBUG"
    assert "LMMS_RUNNER_TOKEN" not in env  # the runner's own secrets stay with the runner
    mounts = {m["name"]: m["mountPath"] for m in engine["volumeMounts"]}
    assert mounts == {"hf-home": jobs.HF_HOME, "tmp": "/tmp", "dshm": "/dev/shm"}
    runner_env = {e["name"]: e.get("value") for e in runner["env"]}
    assert runner_env["LMMS_MODEL_URL"] == "http://127.0.0.1:8000/v1"
    assert runner_env["LMMS_MODEL_WAIT_SECONDS"] == "3600"
    # No key: the engine checks none (the runner's client sends the placeholder EMPTY),
    # and the runner's own token never goes to the engine.
    assert "OPENAI_API_KEY" not in runner_env


def test_sglang_and_a_revision() -> None:
    pod = pod_spec(raw(engine="sglang", revision="a" * 40))
    [engine] = pod["initContainers"]
    assert engine["image"] == "registry.example/sglang:1"
    assert engine["command"][:7] == [
        *("python3", "-m", "sglang.launch_server", "--model-path"),
        *("Qwen/Qwen2-VL-72B-Instruct", "--tp", "4"),
    ]
    assert engine["command"][-2:] == ["--revision", "a" * 40]
    assert engine["command"][7:11] == ["--host", "127.0.0.1", "--port", "8000"]


def test_a_run_without_an_engine_has_no_sidecar() -> None:
    spec = raw(type="qwen2_vl")
    del spec["model"]["engine"]
    spec["model"]["multiGPU"] = "ModelParallel"  # a 72B checkpoint, no declared GPU memory
    pod = pod_spec(spec)
    assert "initContainers" not in pod
    assert "LMMS_MODEL_URL" not in {e["name"] for e in pod["containers"][0]["env"]}


def test_an_engine_run_must_be_openai_with_a_checkpoint_on_one_node() -> None:
    spec = raw(type="qwen2_vl")
    spec["resources"]["nodes"] = 2
    found = problems(spec)
    assert "must be openai with an engine" in found["spec.model.type"]
    assert "pipeline parallel across nodes is not supported" in found["spec.resources.nodes"]
    no_ckpt = raw()
    del no_ckpt["model"]["pretrained"]
    assert "required with an engine" in problems(no_ckpt)["spec.model.pretrained"]
    keyed = raw()
    keyed["model"]["apiKey"] = {"secretKeyRef": {"name": "k", "key": "k"}}
    assert "not with an engine" in problems(keyed)["spec.model.apiKey"]
    no_gpu = raw()
    no_gpu["resources"] = {"gpus": 0}
    assert "at least one GPU" in problems(no_gpu)["spec.resources.gpus"]


def test_an_unsupported_engine_and_one_without_an_image_name_spec_model_engine() -> None:
    assert "spec.model.engine" in problems(raw(engine="tgi"))
    found = problems(raw(engine="sglang"), Policy(engines=frozenset({"vllm"})))
    assert list(found) == ["spec.model.engine"]
    assert "no image for the sglang engine" in found["spec.model.engine"]
    assert "LMMS_ENGINE_IMAGE_SGLANG" in found["spec.model.engine"]


def test_engine_images_come_from_the_settings_and_bad_ones_stop_the_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LMMS_ENGINE_IMAGE_VLLM", "registry.example/vllm:0.11")
    settings = Settings.from_env().check()
    assert settings.policy.engines == frozenset({"vllm"})
    assert settings.runner.engine_images == (("vllm", "registry.example/vllm:0.11"),)
    monkeypatch.setenv("LMMS_ENGINE_IMAGE_SGLANG", "not an image")
    with pytest.raises(ValueError, match="LMMS_ENGINE_IMAGE_SGLANG"):
        Settings.from_env()


# -- what the engine's status tells ------------------------------------------------------
SPEC = validate(raw(), POLICY)
TOKEN = "hf_" + "a" * 34


def pod(engine: dict[str, Any], runner: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "big-model-abc", "creationTimestamp": "2026-01-01T11:00:00Z", **meta},
        "spec": {"initContainers": [{"name": "engine", "image": "registry.example/vllm:1"}]},
        "status": {
            "phase": "Running",
            "initContainerStatuses": [{"name": "engine", "restartCount": 1, **engine}],
            "containerStatuses": [{"name": "runner", **runner}],
        },
    }


def crashed(code: int = 1) -> dict[str, Any]:
    lines = "\n".join(f"line {i}" for i in range(100))
    message = f"{lines}\nconnecting with token {TOKEN} to https://user:pw@hub.example/x\nCUDA error"
    return {"exitCode": code, "reason": "Error", "message": message}


RUNNING = {"state": {"running": {"startedAt": "2026-01-01T11:00:05Z"}}}
ACTIVE = st.Observation(R.RUNNING, R.RUNNING, "pod big-model-abc is running", pod_name="p")


def test_an_engine_that_died_ends_the_run_engine_failed_with_its_redacted_last_lines() -> None:
    engine = {
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": crashed()},
    }
    ob = inference.observed(SPEC, ACTIVE, [pod(engine, RUNNING)], NOW, st.Timeouts())
    assert (ob.phase, ob.reason, ob.stop_job) == (R.FAILED, R.ENGINE_FAILED, True)
    assert "exited with code 1" in ob.message and "CUDA error" in ob.message
    assert TOKEN not in ob.message and "user:pw" not in ob.message
    assert "[REDACTED]" in ob.message
    assert "line 0\n" not in ob.message and "line 99" in ob.message  # the last lines only
    assert len(ob.message) < inference.MAX_CHARS + 200


def test_an_engine_stopped_with_its_pod_is_no_failure() -> None:
    done = {"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    stopped = {"state": {"terminated": {"exitCode": 143, "reason": "Error", "message": "bye"}}}
    # The runner finished: the kubelet stops the sidecar.
    assert inference.died(pod(stopped, done)) is None
    # The pod is being deleted (suspension, preemption, deadline).
    assert inference.died(pod(stopped, RUNNING, deletionTimestamp="2026-01-01T12:00:00Z")) is None
    assert inference.died(pod(RUNNING, RUNNING)) is None
    # The engine exited while the runner still ran: whatever its code, the server is gone.
    assert inference.died(pod(stopped, RUNNING)) is not None
    # The runner failed and the engine crashed: the engine's failure is the cause.
    failed = {"state": {"terminated": {"exitCode": 3, "reason": "Error"}}}
    assert inference.died(pod({"state": {"terminated": crashed()}}, failed)) is not None
    assert inference.died(pod(stopped, failed)) is None


def test_a_failed_job_whose_engine_crashed_reads_engine_failed() -> None:
    failed_ob = st.Observation(R.FAILED, R.RUNNER_ERROR, "runner evaluation failed", pod_name="p")
    engine = {"state": {"terminated": crashed(137) | {"reason": "OOMKilled"}}}
    runner = {"state": {"terminated": {"exitCode": 3, "reason": "Error"}}}
    ob = inference.observed(SPEC, failed_ob, [pod(engine, runner)], NOW, st.Timeouts())
    assert (ob.phase, ob.reason) == (R.FAILED, R.ENGINE_FAILED) and "OOMKilled" in ob.message
    assert not ob.stop_job  # the Job is over already


def test_an_engine_image_that_cannot_be_pulled_waits_then_fails() -> None:
    engine = {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
    waiting = {"state": {"waiting": {"reason": "PodInitializing"}}}
    starting = st.Observation(R.PENDING, R.STARTING, "pod is starting", pod_name="p")
    p = pod(engine, waiting, creationTimestamp="2026-01-01T11:59:00Z")  # a minute ago
    ob = inference.observed(SPEC, starting, [p], NOW, st.Timeouts())
    assert (ob.phase, ob.reason) == (R.PENDING, R.IMAGE_PULL_BACKOFF)
    assert "registry.example/vllm:1" in ob.message
    late = inference.observed(SPEC, starting, [p], NOW, st.Timeouts(image_pull=60))
    assert (late.phase, late.reason, late.stop_job) == (R.FAILED, R.IMAGE_PULL_ERROR, True)


def test_the_status_shows_the_model_loading_until_the_runner_has_the_server() -> None:
    def reason(progress_phase: str | None) -> str:
        ob = st.Observation(R.RUNNING, R.RUNNING, "pod p is running", pod_name="p")
        status = {"progress": {"phase": progress_phase}} if progress_phase else {}
        return inference.loading(SPEC, ob, status).reason

    assert reason(None) == reason("loading") == R.MODEL_LOADING
    assert reason("evaluating") == R.RUNNING
    plain = validate({"model": {"type": "qwen2_vl"}, "tasks": ["mme"]})
    ob = st.Observation(R.RUNNING, R.RUNNING, "pod p is running", pod_name="p")
    assert inference.loading(plain, ob, {}).reason == R.RUNNING


def test_observe_job_reads_the_engine() -> None:
    job = {
        "metadata": {"name": "j"},
        "spec": {},
        "status": {"active": 1, "startTime": "2026-01-01T11:00:00Z"},
    }
    engine = {"lastState": {"terminated": crashed()}, "state": {"running": {}}}
    ob = observation.observe_job(SPEC, job, [pod(engine, RUNNING)], NOW, st.Timeouts())
    assert ob.reason == R.ENGINE_FAILED and ob.stop_job


def test_an_engine_is_part_of_the_leaderboard_entry_and_the_evaluation_identity() -> None:
    wire = SPEC.to_wire()
    assert identity.model_identity(wire) == "Qwen/Qwen2-VL-72B-Instruct"
    assert identity.settings_label(wire, "0.7.3") == "lmms-eval=0.7.3 engine=vllm"
    sglang = validate(raw(engine="sglang"), POLICY)
    assert reuse.reuse_key(SPEC, "0.7.3", None) != reuse.reuse_key(sglang, "0.7.3", None)
    plain = validate({"model": {"type": "qwen2_vl"}, "tasks": ["mme"]})
    assert "engine" not in reuse.reuse_key(plain, "0.7.3", None)


def test_the_runner_beside_an_engine_takes_the_operators_resources(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LMMS_ENGINE_RUNNER_CPU and LMMS_ENGINE_RUNNER_MEMORY set the runner's request and
    limit beside an engine; a value that is not a positive quantity stops the operator,
    naming the variable."""
    monkeypatch.setenv("LMMS_ENGINE_RUNNER_CPU", "500m")
    monkeypatch.setenv("LMMS_ENGINE_RUNNER_MEMORY", "2Gi")
    runner_defaults = dataclasses.replace(Settings.from_env().runner, engine_images=IMAGES)
    desired = jobs.build(RUN, validate(raw(), POLICY), runner_defaults, token="t0ken")
    [runner] = desired.job["spec"]["template"]["spec"]["containers"]
    own = {"cpu": "500m", "memory": "2Gi"}
    assert runner["resources"] == {"requests": own, "limits": own}
    for name, bad in (("LMMS_ENGINE_RUNNER_CPU", "0"), ("LMMS_ENGINE_RUNNER_MEMORY", "lots")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=name):
            Settings.from_env()
        monkeypatch.delenv(name)
