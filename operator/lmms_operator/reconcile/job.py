"""spec -> the objects that run an evaluation: Job, run-config ConfigMap, token Secret,
and (multi-node) a headless Service and NetworkPolicy (``netpol``); an engine run's pod
has the engine's server beside the runner (``inference``). Pure functions; the k8s layer
applies them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import presets
from ..api import API_VERSION, EvalRunSpec
from ..api.runner import EXIT_CONFIG_ERROR
from . import inference, multigpu, netpol, poddefaults
from .kueue import job_labels as kueue_labels
from .shards import Shard
from .spechash import spec_hash as spec_hash  # re-exported: the Job's label and name

LABEL_PREFIX = "eval.lmms.dev"
LABEL_RUN = f"{LABEL_PREFIX}/run"
LABEL_RUN_UID = f"{LABEL_PREFIX}/run-uid"
LABEL_SPEC_HASH = f"{LABEL_PREFIX}/spec-hash"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "lmms-operator"

CONFIG_DIR = "/etc/lmms/run"
CONFIG_FILE = f"{CONFIG_DIR}/config.json"
TASKS_DIR = "/etc/lmms/tasks"
HF_HOME = "/var/cache/huggingface"
OUTPUT_DIR = "/var/lib/lmms/output"
RDZV_PORT = 29500
#: A pod's Job completion index: a multi-node run's node rank, a fan-out's shard.
JOB_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def job_name(run_name: str, uid: str, hash_: str) -> str:
    """Deterministic, unique to the run and its spec, at most 63 characters (Job names
    become label values). The suffix hashes the run's uid with the spec hash: two runs
    whose names share 52 characters, or one name in two namespaces, never share a Job
    (nor its token Secret, config or results ConfigMap, which are named after it)."""
    suffix = hashlib.sha256(f"{uid}/{hash_}".encode()).hexdigest()[:10]
    return f"{run_name[:52].rstrip('-.')}-{suffix}"


@dataclass(frozen=True)
class RunnerDefaults:
    """What the operator's configuration decides about every runner pod (values: this
    module reads no environment)."""

    image: str = "lmms-operator-runner:0.1.0"
    command: tuple[str, ...] = ("lmms-runner",)
    port: int = 8080
    image_pull_policy: str = "IfNotPresent"
    default_shm: str = "8Gi"
    uid: int = 1000
    hold_timeout: float = 600.0
    network_policy: bool = True  # NetworkPolicies: the operator, ``prometheus`` reach runners
    operator_namespace: str = ""
    operator_labels: tuple[tuple[str, str], ...] = (("app.kubernetes.io/name", "lmms-operator"),)
    prometheus: netpol.PrometheusScrapers | None = None
    pod: poddefaults.PodDefaults = field(default_factory=poddefaults.PodDefaults)
    gpu_memory: multigpu.GpuMemory = field(default_factory=multigpu.GpuMemory)  # per resource
    engine_images: tuple[tuple[str, str], ...] = ()  # (engine, image): ``inference``
    engine_runner: tuple[tuple[str, str], ...] = inference.RUNNER_RESOURCES  # beside an engine


@dataclass(frozen=True)
class RunRef:
    name: str
    namespace: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "EvalRun",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class Desired:
    """Everything one evaluation needs, in creation order."""

    job: dict[str, Any]
    config_map: dict[str, Any]
    token_secret: dict[str, Any]
    service: dict[str, Any] | None
    network_policy: dict[str, Any] | None = None


def run_config(
    run: RunRef,
    spec: EvalRunSpec,
    hash_: str,
    shards: Sequence[Shard] = (),
    evaluate: Sequence[str] | None = None,
    reuse_key: Mapping[str, Any] | None = None,
    gpu_memory: multigpu.GpuMemory = multigpu.UNDECLARED,
) -> dict[str, Any]:
    """What the runner reads: the EvalRun, presets and multiGPU resolved; ``shards`` (more
    than one) each Job index's tasks (a pod's index: LMMS_SHARD_INDEX); ``evaluate`` the
    tasks left to evaluate when some tasks' results were reused."""
    pretrained, args = presets.resolve(spec.model.type, spec.model.pretrained, spec.model.args)
    model = {"pretrained": pretrained, "args": args, "multi_gpu": multigpu.mode(spec, gpu_memory)}
    resolved = spec.model_copy(update={"model": spec.model.model_copy(update=model)})
    config: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "EvalRun",
        "metadata": {
            "name": run.name,
            "namespace": run.namespace,
            "uid": run.uid,
            "annotations": {f"{LABEL_PREFIX}/spec-hash": hash_},
        },
        "spec": resolved.to_wire(),
    }
    if len(shards) > 1:
        config["shards"] = [list(s.tasks) for s in shards]
    if evaluate is not None:
        config["evaluate"] = list(evaluate)
    if reuse_key is not None:
        # The evaluation identity, as computed when the Job was made (the custom tasks'
        # content then): the results are added to the index under it.
        config["reuseKey"] = dict(reuse_key)
    return config


def _labels(run: RunRef, hash_: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "lmms-runner",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_RUN: run.name[:63].rstrip("-._"),
        LABEL_RUN_UID: run.uid,
        LABEL_SPEC_HASH: hash_,
    }


def _meta(name: str, run: RunRef, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": run.namespace,
        "labels": dict(labels),
        "ownerReferences": [run.owner_reference()],
    }


def _secret_env(name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key, **({"optional": True} if optional else {})}
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def build(
    run: RunRef,
    spec: EvalRunSpec,
    runner: RunnerDefaults,
    token: str,
    shards: Sequence[Shard] = (),
    evaluate: Sequence[str] | None = None,
    reuse_key: Mapping[str, Any] | None = None,
) -> Desired:
    """``shards``: the fan-out assignment (``shards.plan``); more than one makes an
    Indexed Job with one pod per shard, each retried alone (backoffLimitPerIndex).
    ``evaluate``: the tasks to evaluate when the others' results were reused."""
    hash_ = spec_hash(spec)
    name = job_name(run.name, run.uid, hash_)
    labels = _labels(run, hash_)
    config = run_config(run, spec, hash_, shards, evaluate, reuse_key, runner.gpu_memory)
    volumes, mounts = _volumes(name, spec, runner)
    container = _container(spec, runner, _env(name, spec, runner, len(shards)), mounts)
    pod_spec = _pod_spec(name, spec, runner, container, volumes)
    inference.attach(pod_spec, spec, runner.engine_images, runner.engine_runner)  # an engine
    service: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    if spec.resources.nodes > 1:
        own = {LABEL_RUN_UID: run.uid, LABEL_SPEC_HASH: hash_}
        service = netpol.rendezvous_service(_meta(f"{name}-rdzv", run, labels), own, RDZV_PORT)
        policy = netpol.rendezvous_policy(_meta(f"{name}-rdzv", run, labels), own, runner)
    return Desired(
        job=poddefaults.apply(_job(name, run, labels, spec, pod_spec, len(shards)), runner.pod),
        config_map={
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(f"{name}-config", run, labels),
            "data": {"config.json": json.dumps(config, indent=1, sort_keys=True)},
        },
        token_secret={
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(f"{name}-token", run, labels),
            "type": "Opaque",
            "stringData": {"token": token},
        },
        service=service,
        network_policy=policy,
    )


def _env(name: str, spec: EvalRunSpec, runner: RunnerDefaults, shards: int) -> list[dict[str, Any]]:
    """The runner's environment: where things are, the spec's variables, and secrets only
    as secretKeyRefs (the Job stores every plain value). A multi-node run's pods learn
    their rank and the rendezvous, a fan-out's pods their shard, from the Job index."""
    env: list[dict[str, Any]] = [
        _field_env("POD_IP", "status.podIP"),
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        {"name": "LMMS_RUN_CONFIG", "value": CONFIG_FILE},
        {"name": "LMMS_RUNNER_PORT", "value": str(runner.port)},
        {"name": "LMMS_OUTPUT_DIR", "value": OUTPUT_DIR},
        _secret_env("LMMS_RUNNER_TOKEN", f"{name}-token", "token"),
        {"name": "LMMS_TASKS_DIR", "value": TASKS_DIR},
        {"name": "LMMS_HOLD_TIMEOUT", "value": str(int(runner.hold_timeout))},
        {"name": "HF_HOME", "value": HF_HOME},
        {"name": "HOME", "value": "/tmp"},
        {"name": "TMPDIR", "value": "/tmp"},
    ]
    env += [{"name": v.name, "value": v.value} for v in spec.env]
    env += [] if spec.resources.gpus else [dict(inference.NO_GPUS)]  # (see NO_GPUS)
    if spec.cache is not None:
        # Resume state (finished results, lmms-eval's response cache) lives on the volume.
        env.append({"name": "LMMS_STATE_DIR", "value": f"{HF_HOME}/lmms-runner"})
    if spec.model.api_key is not None:
        ref = spec.model.api_key.secret_key_ref
        env.append(_secret_env("OPENAI_API_KEY", ref.name, ref.key))
    if spec.hugging_face_token is not None:
        ref = spec.hugging_face_token.secret_key_ref
        env.append(_secret_env("HF_TOKEN", ref.name, ref.key))
    s3 = spec.output.s3 if spec.output else None
    if s3 is not None and s3.credentials_secret:
        env += [
            _secret_env("AWS_ACCESS_KEY_ID", s3.credentials_secret, "AWS_ACCESS_KEY_ID"),
            _secret_env("AWS_SECRET_ACCESS_KEY", s3.credentials_secret, "AWS_SECRET_ACCESS_KEY"),
            _secret_env("AWS_SESSION_TOKEN", s3.credentials_secret, "AWS_SESSION_TOKEN", True),
        ]
    res = spec.resources
    if res.nodes > 1:
        env += [
            {"name": "LMMS_NNODES", "value": str(res.nodes)},
            {"name": "LMMS_NPROC_PER_NODE", "value": str(res.gpus)},
            _field_env("LMMS_NODE_RANK", JOB_INDEX),
            {"name": "LMMS_MASTER_ADDR", "value": f"{name}-0.{name}-rdzv"},
            {"name": "LMMS_MASTER_PORT", "value": str(RDZV_PORT)},
        ]
    if shards > 1:
        env += [
            _field_env("LMMS_SHARD_INDEX", JOB_INDEX),
            {"name": "LMMS_SHARDS", "value": str(shards)},
            # How many pods of this shard failed before (the Job controller counts).
            _field_env(
                "LMMS_SHARD_FAILURES",
                "metadata.annotations['batch.kubernetes.io/job-index-failure-count']",
            ),
        ]
    return env


def _volumes(
    name: str, spec: EvalRunSpec, runner: RunnerDefaults
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's volumes and the runner's mounts of them: the run config, writable
    scratch (the root filesystem is read-only), the HF cache (the spec's claim, or
    scratch), each custom-task ConfigMap, and a memory-backed /dev/shm when needed."""
    res = spec.resources
    mounts: list[dict[str, Any]] = [
        {"name": "run-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "hf-home", "mountPath": HF_HOME},
        {"name": "output", "mountPath": OUTPUT_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "run-config", "configMap": {"name": f"{name}-config"}},
        {"name": "output", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if spec.cache is not None:
        claim = {"claimName": spec.cache.persistent_volume_claim}
        volumes.append({"name": "hf-home", "persistentVolumeClaim": claim})
    else:
        volumes.append({"name": "hf-home", "emptyDir": {}})
    for i, source in enumerate(spec.custom_tasks):
        volumes.append({"name": f"tasks-{i}", "configMap": {"name": source.config_map}})
        path = f"{TASKS_DIR}/{source.config_map}"
        mounts.append({"name": f"tasks-{i}", "mountPath": path, "readOnly": True})
    if res.gpus > 1 or res.shared_memory:
        shm = {"medium": "Memory", "sizeLimit": res.shared_memory or runner.default_shm}
        volumes.append({"name": "dshm", "emptyDir": shm})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes, mounts


def _container(
    spec: EvalRunSpec,
    runner: RunnerDefaults,
    env: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    """The runner container: requests = limits; non-root, read-only root, no capabilities."""
    res = spec.resources
    quantities: dict[str, str] = {}
    if res.gpus:
        quantities[res.gpu_resource_name] = str(res.gpus)
    if res.cpu:
        quantities["cpu"] = res.cpu
    if res.memory:
        quantities["memory"] = res.memory
    return {
        "name": "runner",
        "image": spec.image or runner.image,
        "imagePullPolicy": runner.image_pull_policy,
        "command": list(runner.command),
        "env": env,
        "volumeMounts": mounts,
        "ports": [{"name": "http", "containerPort": runner.port, "protocol": "TCP"}],
        "resources": {"requests": dict(quantities), "limits": dict(quantities)},
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": runner.uid,
            "runAsGroup": runner.uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def _pod_spec(
    name: str,
    spec: EvalRunSpec,
    runner: RunnerDefaults,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
) -> dict[str, Any]:
    """The pod template's spec: non-root, no service account token (a runner never calls
    the API server), the spec's placement, and (multi-node) DNS names under the
    rendezvous Service."""
    sched = spec.scheduling
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": runner.uid,
            "runAsGroup": runner.uid,
            "fsGroup": runner.uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if sched.node_selector:
        pod_spec["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in sched.tolerations]
    affinity = sched.affinity.to_wire()
    if affinity:
        pod_spec["affinity"] = affinity
    if sched.priority_class_name:
        pod_spec["priorityClassName"] = sched.priority_class_name
    if spec.resources.nodes > 1:
        pod_spec["subdomain"] = f"{name}-rdzv"
    return pod_spec


def _job(
    name: str,
    run: RunRef,
    labels: dict[str, str],
    spec: EvalRunSpec,
    pod_spec: dict[str, Any],
    shards: int,
) -> dict[str, Any]:
    """The Job: one pod, or an Indexed Job with one pod per node (multi-node) or per
    shard (fan-out); a configuration error fails it at once, a disruption costs no retry."""
    sched = spec.scheduling
    job_labels = dict(labels)
    job_labels.update(kueue_labels(sched.queue_name, sched.workload_priority_class_name))
    job_spec: dict[str, Any] = {
        # Kueue admits a queued Job (one Workload) by unsuspending it: its suspend is Kueue's.
        "suspend": spec.suspend or bool(sched.queue_name),
        "backoffLimit": spec.retries,
        "activeDeadlineSeconds": spec.timeout_seconds,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": "runner",
                        "operator": "In",
                        "values": [EXIT_CONFIG_ERROR],
                    },
                },
                # Preemption and node drains do not use up retries.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    nodes = spec.resources.nodes
    if nodes > 1:
        job_spec.update({"completionMode": "Indexed", "completions": nodes, "parallelism": nodes})
    elif shards > 1:
        # A failed shard is retried alone; the others keep their work.
        del job_spec["backoffLimit"]
        job_spec.update(
            {
                "completionMode": "Indexed",
                "completions": shards,
                "parallelism": shards,
                "backoffLimitPerIndex": spec.retries,
            }
        )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(name, run, job_labels),
        "spec": job_spec,
    }


def namespace_network_policy(namespace: str, runner: RunnerDefaults) -> dict[str, Any] | None:
    """The namespace's runner policy (``netpol``), selecting the pods by the operator's label."""
    return netpol.namespace_policy(namespace, runner, {LABEL_MANAGED_BY: MANAGED_BY})
