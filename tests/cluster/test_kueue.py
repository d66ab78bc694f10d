"""The real Kueue (v0.17, built from its Go module) in front of the devcluster's GPUs.

A ClusterQueue with ``nvidia.com/gpu`` quota, a ResourceFlavor and a LocalQueue per
test; Kueue admits Workloads, unsuspends their Jobs, and preempts by priority.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from lmms_devcluster import devcluster
from lmms_devcluster.kueue import QUEUE_LABEL
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

KUEUE = ("kueue.x-k8s.io", "v1beta2")


class Queues:
    """A ResourceFlavor, a ClusterQueue with GPU quota (for one namespace) and a
    LocalQueue in that namespace; deleted afterwards."""

    def __init__(self, api: client.ApiClient, namespace: str, gpus: int) -> None:
        self.objs = client.CustomObjectsApi(api)
        self.namespace = namespace
        suffix = uuid.uuid4().hex[:6]
        self.flavor = f"gpu-{suffix}"
        self.cluster_queue = f"cq-{suffix}"
        self.local_queue = "team-a"
        self.priority_classes: list[str] = []
        self.objs.create_cluster_custom_object(
            *KUEUE,
            "resourceflavors",
            {
                "apiVersion": "/".join(KUEUE),
                "kind": "ResourceFlavor",
                "metadata": {"name": self.flavor},
            },
        )
        self.objs.create_cluster_custom_object(
            *KUEUE,
            "clusterqueues",
            {
                "apiVersion": "/".join(KUEUE),
                "kind": "ClusterQueue",
                "metadata": {"name": self.cluster_queue},
                "spec": {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "queueingStrategy": "BestEffortFIFO",
                    "preemption": {"withinClusterQueue": "LowerPriority"},
                    "resourceGroups": [
                        {
                            "coveredResources": [devcluster.GPU_RESOURCE],
                            "flavors": [
                                {
                                    "name": self.flavor,
                                    "resources": [
                                        {"name": devcluster.GPU_RESOURCE, "nominalQuota": gpus}
                                    ],
                                }
                            ],
                        }
                    ],
                },
            },
        )
        self.objs.create_namespaced_custom_object(
            *KUEUE,
            namespace,
            "localqueues",
            {
                "apiVersion": "/".join(KUEUE),
                "kind": "LocalQueue",
                "metadata": {"name": self.local_queue},
                "spec": {"clusterQueue": self.cluster_queue},
            },
        )
        wait_for(self._active, timeout=30, message="ClusterQueue active")

    def _active(self) -> bool:
        cq = self.objs.get_cluster_custom_object(*KUEUE, "clusterqueues", self.cluster_queue)
        return any(
            c["type"] == "Active" and c["status"] == "True"
            for c in cq.get("status", {}).get("conditions", [])
        )

    def priority_class(self, name: str, value: int) -> str:
        name = f"{name}-{self.cluster_queue}"
        self.objs.create_cluster_custom_object(
            *KUEUE,
            "workloadpriorityclasses",
            {
                "apiVersion": "/".join(KUEUE),
                "kind": "WorkloadPriorityClass",
                "metadata": {"name": name},
                "value": value,
            },
        )
        self.priority_classes.append(name)
        return name

    def workloads(self) -> list[dict[str, Any]]:
        out = self.objs.list_namespaced_custom_object(*KUEUE, self.namespace, "workloads")
        return list(out["items"])

    def delete(self) -> None:
        for plural, name in [
            *(("workloadpriorityclasses", n) for n in self.priority_classes),
            ("clusterqueues", self.cluster_queue),
            ("resourceflavors", self.flavor),
        ]:
            try:
                self.objs.delete_cluster_custom_object(*KUEUE, plural, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture()
def queues(api: client.ApiClient, namespace: str) -> Iterator[Queues]:
    q = Queues(api, namespace, gpus=2)
    yield q
    q.delete()


def _job(name: str, gpus: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"type": "kwok"},
                    "containers": [
                        {
                            "name": "main",
                            "image": "kwok-simulated",
                            "resources": {"limits": {devcluster.GPU_RESOURCE: str(gpus)}},
                        }
                    ],
                }
            },
        },
    }


def _succeeded(batch: client.BatchV1Api, namespace: str, name: str) -> bool:
    return bool(batch.read_namespaced_job_status(name, namespace).status.succeeded)


# -- the devcluster's Kueue ------------------------------------------------------------------


def test_a_queued_job_is_admitted_within_quota(
    api: client.ApiClient, namespace: str, queues: Queues
) -> None:
    """Kueue suspends a labelled Job on creation (its webhook), creates a Workload and
    unsuspends the Job once the ClusterQueue has quota; beyond quota the Job waits."""
    batch = client.BatchV1Api(api)
    labels = {QUEUE_LABEL: queues.local_queue}
    # kwok keeps no pod running for long, so a Job that holds the quota is not needed:
    # a Job asking for more than the quota waits forever; one within it runs.
    batch.create_namespaced_job(namespace, _job("too-big", 4, labels))
    batch.create_namespaced_job(namespace, _job("fits", 2, labels))
    wait_for(lambda: _succeeded(batch, namespace, "fits"), timeout=60, message="fits admitted")
    big = batch.read_namespaced_job(namespace=namespace, name="too-big")
    assert big.spec.suspend is True
    workload = wait_for(
        lambda: next(
            (
                w
                for w in queues.workloads()
                if w["metadata"]["ownerReferences"][0]["name"] == "too-big"
            ),
            None,
        )
    )
    conds = {c["type"]: c for c in workload["status"]["conditions"]}
    assert conds["QuotaReserved"]["status"] == "False"
    assert "insufficient quota" in conds["QuotaReserved"]["message"]


def test_an_outage_of_kueue_never_blocks_jobs_without_a_queue(
    cluster: devcluster.DevCluster, api: client.ApiClient, namespace: str
) -> None:
    """Kueue's Job webhooks only see Jobs that carry the queue label: with Kueue
    stopped, a plain Job is created and runs, while a queued one is refused (the
    webhook really is in the path)."""
    batch = client.BatchV1Api(api)
    cluster.stop_kueue()
    try:
        batch.create_namespaced_job(namespace, _job("plain", 1))
        with pytest.raises(ApiException) as refused:
            batch.create_namespaced_job(namespace, _job("queued", 1, {QUEUE_LABEL: "team-a"}))
        assert "mjob.kb.io" in json.loads(refused.value.body)["message"]
        wait_for(lambda: _succeeded(batch, namespace, "plain"), timeout=60)
    finally:
        cluster.start_kueue()


def test_kueue_is_started_again_when_it_exits(
    cluster: devcluster.DevCluster, api: client.ApiClient, namespace: str, queues: Queues
) -> None:
    before = cluster.kueue_pids()
    assert len(before) == 1
    cluster.kill_kueue()
    wait_for(lambda: cluster.kueue_pids() and cluster.kueue_pids() != before, timeout=30)
    batch = client.BatchV1Api(api)
    # Until the new process serves its webhooks, queued Jobs are refused: retry.
    wait_for(
        lambda: batch.create_namespaced_job(
            namespace, _job("after-restart", 1, {QUEUE_LABEL: queues.local_queue})
        ),
        timeout=60,
    )
    wait_for(lambda: _succeeded(batch, namespace, "after-restart"), timeout=60)
