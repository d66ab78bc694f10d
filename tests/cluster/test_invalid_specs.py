"""A corpus of malformed EvalRuns: each is refused by the API server with a message that
names the field, or ends Failed/InvalidSpec (naming the field) with no Job created."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from lmms_operator.reconcile.placement import PlacementPolicy
from lmms_operator.reconcile.validate import FEATURES, Policy, validate
from tests import evalruns as er

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator_process")]

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {"model": {"type": "qwen2_vl"}, "tasks": ["mme"]}

# (case name, spec overrides, text the error names)
CORPUS: list[tuple[str, dict[str, Any], str]] = [
    ("no-model", {"model": None}, "spec.model"),
    ("model-type-empty", {"model": {"type": ""}}, "spec.model.type"),
    ("model-type-spaces", {"model": {"type": "qwen 2"}}, "spec.model.type"),
    ("model-type-unknown", {"model": {"type": "qwen2vl"}}, "spec.model.type"),
    ("model-type-not-string", {"model": {"type": 7}}, "spec.model.type"),
    ("model-no-preset-no-pretrained", {"model": {"type": "mantis"}}, "spec.model.pretrained"),
    ("model-args-comma", {"model": {"type": "qwen2_vl", "args": {"a": "1,2"}}}, "spec.model.args"),
    (
        "model-args-not-strings",
        {"model": {"type": "qwen2_vl", "args": {"a": {"b": 1}}}},
        "spec.model.args",
    ),
    ("model-unknown-field", {"model": {"type": "qwen2_vl", "weights": "x"}}, "spec.model"),
    ("no-tasks", {"tasks": []}, "spec.tasks"),
    ("task-unknown", {"tasks": ["mmee"]}, "spec.tasks[0]"),
    ("second-task-unknown", {"tasks": ["mme", "textvqa_vall"]}, "spec.tasks[1]"),
    ("task-bad-chars", {"tasks": ["mme; rm -rf /"]}, "spec.tasks"),
    ("tasks-duplicate", {"tasks": ["mme", "mme"]}, "spec.tasks"),
    ("tasks-not-list", {"tasks": "mme"}, "spec.tasks"),
    (
        "custom-task-bad-name",
        {"customTasks": [{"configMap": "Bad_Name", "tasks": ["x"]}]},
        "spec.customTasks[0].configMap",
    ),
    (
        "custom-task-twice",
        {
            "tasks": [],
            "customTasks": [{"configMap": "a", "tasks": ["x"]}, {"configMap": "a", "tasks": ["y"]}],
        },
        "spec.customTasks[1].configMap",
    ),
    ("batch-size-zero", {"evaluation": {"batchSize": 0}}, "spec.evaluation.batchSize"),
    ("limit-negative", {"evaluation": {"limit": -5}}, "spec.evaluation.limit"),
    ("fewshot-negative", {"evaluation": {"numFewshot": -1}}, "spec.evaluation.numFewshot"),
    ("seed-negative", {"evaluation": {"seed": -1}}, "spec.evaluation.seed"),
    (
        "temperature-negative",
        {"evaluation": {"generation": {"temperature": -0.5}}},
        "spec.evaluation.generation.temperature",
    ),
    (
        "top-p-above-one",
        {"evaluation": {"generation": {"topP": 1.5}}},
        "spec.evaluation.generation.topP",
    ),
    (
        "max-new-tokens-zero",
        {"evaluation": {"generation": {"maxNewTokens": 0}}},
        "spec.evaluation.generation.maxNewTokens",
    ),
    ("gpus-negative", {"resources": {"gpus": -1}}, "spec.resources.gpus"),
    ("gpus-too-many", {"resources": {"gpus": 1000}}, "spec.resources.gpus"),
    ("multi-node-no-gpus", {"resources": {"gpus": 0, "nodes": 2}}, "spec.resources.gpus"),
    ("memory-not-quantity", {"resources": {"memory": "lots"}}, "spec.resources.memory"),
    ("cpu-not-quantity", {"resources": {"cpu": "four"}}, "spec.resources.cpu"),
    (
        "gpu-resource-name-bad",
        {"resources": {"gpuResourceName": "nvidia.com/gpu!"}},
        "spec.resources.gpuResourceName",
    ),
    ("nodes-zero", {"resources": {"nodes": 0}}, "spec.resources.nodes"),
    ("queue-name-bad", {"scheduling": {"queueName": "Team A"}}, "spec.scheduling.queueName"),
    (
        "priority-class-bad",
        {"scheduling": {"priorityClassName": "HIGH!"}},
        "spec.scheduling.priorityClassName",
    ),
    (
        "toleration-bad-operator",
        {"scheduling": {"tolerations": [{"key": "a", "operator": "Maybe"}]}},
        "tolerations[0].operator",
    ),
    ("node-selector-bad-value", {"scheduling": {"nodeSelector": {"zone": "a b"}}}, "nodeSelector"),
    ("timeout-zero", {"timeoutSeconds": 0}, "spec.timeoutSeconds"),
    ("retries-negative", {"retries": -1}, "spec.retries"),
    ("ttl-negative", {"ttlSecondsAfterFinished": -1}, "spec.ttlSecondsAfterFinished"),
    ("image-with-space", {"image": "my image"}, "spec.image"),
    (
        "cache-pvc-bad",
        {"cache": {"persistentVolumeClaim": "Not_A_Name"}},
        "spec.cache.persistentVolumeClaim",
    ),
    (
        "hf-token-no-key",
        {"huggingFaceToken": {"secretKeyRef": {"name": "hf"}}},
        "spec.huggingFaceToken.secretKeyRef.key",
    ),
    ("s3-bucket-bad", {"output": {"s3": {"bucket": "A"}}}, "spec.output.s3.bucket"),
    (
        "s3-endpoint-not-url",
        {"output": {"s3": {"bucket": "evals", "endpoint": "minio:9000"}}},
        "spec.output.s3.endpoint",
    ),
    ("leaderboard-bad", {"leaderboard": "My Board"}, "spec.leaderboard"),
    ("suspend-not-bool", {"suspend": "maybe"}, "spec.suspend"),
    (
        "secret-in-model-args",
        {"model": {"type": "openai", "args": {"api_key": "sk-abc"}}},
        "spec.model.args.api_key",
    ),
    ("env-reserved", {"env": [{"name": "HF_TOKEN", "value": "hf_x"}]}, "spec.env[0].name"),
    ("env-bad-name", {"env": [{"name": "1-X", "value": "y"}]}, "spec.env[0].name"),
    ("multi-gpu-unknown-mode", {"model": {"type": "qwen2_vl", "multiGPU": "Pipeline"}}, "multiGPU"),
    (
        # Two GPUs of a size the operator cannot tell (no memory declared): say which.
        "multi-gpu-undecided",
        {"resources": {"gpus": 2}},
        "spec.model.multiGPU",
    ),
    (
        "model-parallel-multi-node",
        {
            "model": {"type": "qwen2_vl", "multiGPU": "ModelParallel"},
            "resources": {"gpus": 2, "nodes": 2},
        },
        "spec.model.multiGPU",
    ),
    (
        "model-parallel-no-device-map",
        {"model": {"type": "instructblip", "multiGPU": "ModelParallel"}, "resources": {"gpus": 2}},
        "spec.model.multiGPU",
    ),
    ("verbosity-unknown", {"evaluation": {"verbosity": "TRACE"}}, "spec.evaluation.verbosity"),
    # spec.model.engine: a name the schema does not know; one this operator has no image
    # for (the tests' operator has none); and what an engine run must also say.
    ("engine-unknown", {"model": {"type": "openai", "engine": "tgi"}}, "spec.model.engine"),
    (
        "engine-without-image",
        {"model": {"type": "openai", "engine": "vllm", "pretrained": "org/model"}},
        "spec.model.engine",
    ),
    ("engine-not-openai", {"model": {"type": "qwen2_vl", "engine": "sglang"}}, "spec.model.type"),
    (
        "engine-multi-node",
        {
            "model": {"type": "openai", "engine": "vllm", "pretrained": "org/model"},
            "resources": {"nodes": 2, "gpus": 8},
        },
        "spec.resources.nodes",
    ),
]


def _body(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    spec = json.loads(json.dumps(BASE))
    for key, value in overrides.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30
    assert len({name for name, _, _ in CORPUS}) == len(CORPUS)


def test_every_malformed_run_is_refused_or_fails_naming_the_field(
    api: client.ApiClient, namespace: str
) -> None:
    accepted = er.apply_corpus(api, namespace, CORPUS, _body)
    refused = len(CORPUS) - len(accepted)
    for name, field in accepted.items():
        run = er.wait_phase(api, namespace, name, "Failed", timeout=60, reason="InvalidSpec")
        assert field in run["status"]["message"], (name, run["status"]["message"])
        assert er.condition(run, "Stalled")["reason"] == "InvalidSpec"
        assert not er.jobs_of(api, namespace, run), f"{name}: a Job was created"
        assert er.wait_event(api, namespace, name, "InvalidSpec")
    # Both layers are exercised: the schema and the operator's own checks.
    assert refused >= 10 and len(accepted) >= 5, (refused, sorted(accepted))
    # Nothing half-created in the namespace.
    core = client.CoreV1Api(api)
    assert not [
        c.metadata.name
        for c in core.list_namespaced_config_map(
            namespace, label_selector="app.kubernetes.io/managed-by=lmms-operator"
        ).items
    ]
    assert not core.list_namespaced_secret(
        namespace, label_selector="app.kubernetes.io/managed-by=lmms-operator"
    ).items
    # And the operator is still alive and working.
    er.create(api, namespace, er.manifest("after", er.KWOK))
    er.wait_phase(api, namespace, "after", "Succeeded", timeout=60)


def test_fixing_an_invalid_spec_starts_the_run(api: client.ApiClient, namespace: str) -> None:
    er.create(api, namespace, er.manifest("fixme", er.KWOK, tasks=["mmee"]))
    er.wait_phase(api, namespace, "fixme", "Failed", timeout=30, reason="InvalidSpec")
    er.patch_spec(api, namespace, "fixme", {"tasks": ["mme"]})
    run = er.wait_phase(api, namespace, "fixme", "Succeeded", timeout=60)
    assert er.condition(run, "Ready")["observedGeneration"] == run["metadata"]["generation"]


def test_examples_apply_cleanly(cluster: Any, namespace: str) -> None:
    for path in sorted((REPO / "examples").glob("*.yaml")):
        cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path))
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "EvalRun":
                # The operator accepts it too, once the features and the priority class
                # it names are allowed (the multi-node example's InternVL2 needs
                # remoteCode; the Kueue example names the priority class batch-low).
                placement = PlacementPolicy(priority_classes=frozenset({"batch-low"}))
                validate(doc["spec"], Policy(features=frozenset(FEATURES), placement=placement))
