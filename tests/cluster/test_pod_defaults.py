"""The platform's runner pod defaults (settings LMMS_RUNNER_*, chart values
``runnerPodDefaults``) on the real API server, with the real operator process: a run that
names no placement of its own lands where the platform says, a run's own tolerations and
node selector are added to the platform's, and the placement policy still refuses what a
run may not choose, the platform's own priority class and toleration among them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from lmms_devcluster import devcluster
from tests import evalruns as er
from tests.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]

SCRIPTED = {"type": "dummy", "pretrained": "local", "args": {"scripted_sleep": "1"}}
PLATFORM_TOLERATION = {"key": devcluster.EXECUTOR_LABEL, "operator": "Exists"}
OWN_TOLERATION = {"key": "example.com/team-gpus", "operator": "Exists", "effect": "NoSchedule"}


def _classes(api: client.ApiClient, suffix: str) -> tuple[str, str]:
    """A PriorityClass and a RuntimeClass: the API server admits no pod naming a missing one."""
    priority, runtime = f"evals-default-{suffix}", f"nvidia-{suffix}"
    client.SchedulingV1Api(api).create_priority_class(
        client.V1PriorityClass(metadata=client.V1ObjectMeta(name=priority), value=1000)
    )
    client.NodeV1Api(api).create_runtime_class(
        client.V1RuntimeClass(metadata=client.V1ObjectMeta(name=runtime), handler="runc")
    )
    return priority, runtime


def _delete_classes(api: client.ApiClient, priority: str, runtime: str) -> None:
    client.SchedulingV1Api(api).delete_priority_class(priority)
    client.NodeV1Api(api).delete_runtime_class(runtime)


def _pods(api: client.ApiClient, namespace: str, run: dict[str, Any]) -> list[client.V1Pod]:
    selector = f"eval.lmms.dev/run-uid={run['metadata']['uid']}"
    return list(client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items)


def test_a_runs_pods_get_the_platform_defaults_and_the_policy_still_checks_the_run(
    cluster: devcluster.DevCluster,
    api: client.ApiClient,
    namespace: str,
    operator_process: OperatorProcess,
    tmp_path: Path,
) -> None:
    priority, runtime = _classes(api, uuid.uuid4().hex[:6])
    env = {
        "LMMS_RUNNER_NODE_SELECTOR": json.dumps({devcluster.EXECUTOR_LABEL: "true"}),
        "LMMS_RUNNER_TOLERATIONS": json.dumps([PLATFORM_TOLERATION]),
        "LMMS_RUNNER_IMAGE_PULL_SECRETS": '["registry-creds"]',
        "LMMS_RUNNER_PRIORITY_CLASS_NAME": priority,
        "LMMS_RUNNER_RUNTIME_CLASS_NAME": runtime,
        "LMMS_RUNNER_LABELS": '{"cost.example.com/center": "ml-42"}',
        "LMMS_RUNNER_ANNOTATIONS": '{"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}',
        # The policy for runs: neither the platform's priority class nor its toleration key.
        "LMMS_ALLOWED_TOLERATION_KEYS": "example.com/*",
    }
    operator_process.stop()
    platform = OperatorProcess(cluster, tmp_path, env=env, args=["--namespace", namespace])
    try:
        platform.start()
        # A run that says nothing of placement lands on the executor's (tainted) node: the
        # platform's node selector and toleration took it there.
        er.create(api, namespace, er.manifest("plain", model=SCRIPTED))
        # A run with placement of its own: added to the platform's.
        own = {
            "tolerations": [OWN_TOLERATION],
            "nodeSelector": {"kubernetes.io/os": "linux", devcluster.EXECUTOR_LABEL: "true"},
        }
        er.create(api, namespace, er.manifest("own", own, model=SCRIPTED))
        # Runs the policy refuses, whatever the platform's defaults say.
        refused: dict[str, tuple[dict[str, Any], str]] = {
            "changed": ({"nodeSelector": {devcluster.EXECUTOR_LABEL: "false"}}, "nodeSelector"),
            "priority": ({"priorityClassName": priority}, "priorityClassName"),
            "toleration": ({"tolerations": [PLATFORM_TOLERATION]}, "tolerations[0].key"),
        }
        for name, (scheduling, _) in refused.items():
            er.create(api, namespace, er.manifest(name, scheduling, model=SCRIPTED))

        plain = er.wait_phase(api, namespace, "plain", "Succeeded", timeout=90)
        (pod,) = _pods(api, namespace, plain)
        assert pod.spec.node_name == devcluster.EXECUTOR_NODE
        assert pod.spec.node_selector == {devcluster.EXECUTOR_LABEL: "true"}
        assert pod.spec.priority_class_name == priority
        assert pod.spec.priority == 1000  # the API server resolved the class
        assert pod.spec.runtime_class_name == runtime
        assert [s.name for s in pod.spec.image_pull_secrets] == ["registry-creds"]
        assert pod.metadata.labels["cost.example.com/center"] == "ml-42"
        assert pod.metadata.labels["app.kubernetes.io/managed-by"] == "lmms-operator"
        assert pod.metadata.annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == (
            "false"
        )
        (job,) = er.jobs_of(api, namespace, plain)
        assert job.metadata.labels["cost.example.com/center"] == "ml-42"

        mine = er.wait_phase(api, namespace, "own", "Succeeded", timeout=90)
        (pod,) = _pods(api, namespace, mine)
        assert pod.spec.node_selector == {
            "kubernetes.io/os": "linux",
            devcluster.EXECUTOR_LABEL: "true",
        }
        tolerations = [
            {"key": t.key, "operator": t.operator, "effect": t.effect}
            for t in pod.spec.tolerations
            if t.key in (OWN_TOLERATION["key"], PLATFORM_TOLERATION["key"])
        ]
        assert tolerations == [OWN_TOLERATION, {**PLATFORM_TOLERATION, "effect": None}]

        for name, (_, field) in refused.items():
            run = er.wait_phase(api, namespace, name, "Failed", timeout=60, reason="InvalidSpec")
            assert f"spec.scheduling.{field}" in run["status"]["message"], run["status"]
            assert not er.jobs_of(api, namespace, run)
        changed = er.get(api, namespace, "changed")["status"]["message"]
        assert f"spec.scheduling.nodeSelector.{devcluster.EXECUTOR_LABEL}" in changed
        assert "LMMS_RUNNER_NODE_SELECTOR" in changed
    finally:
        platform.stop()
        operator_process.start()
        _delete_classes(api, priority, runtime)
