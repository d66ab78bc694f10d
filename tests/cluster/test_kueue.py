"""The real Kueue (v0.17, built from its Go module) in front of the devcluster's GPUs.

A ClusterQueue with ``nvidia.com/gpu`` quota, a ResourceFlavor and a LocalQueue per
test; Kueue admits Workloads, unsuspends their Jobs, and preempts by priority.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from lmms_devcluster import devcluster
from lmms_devcluster.kueue import QUEUE_LABEL
from tests import evalruns as er
from tests.helpers import wait_for
from tests.operator_process import OperatorProcess

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


# -- the operator with the real Kueue --------------------------------------------------------

HIGH, LOW = "eval-high", "eval-low"


@pytest.fixture(scope="module")
def kueue_operator(operator_process: OperatorProcess, api: client.ApiClient) -> Iterator[None]:
    """The operator, allowed the tests' WorkloadPriorityClasses (restarted with them, and
    restarted as it was afterwards); the classes themselves (cluster-wide)."""
    objs = client.CustomObjectsApi(api)
    for name, value in ((HIGH, 1000), (LOW, 100)):
        body = {
            "apiVersion": "/".join(KUEUE),
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": name},
            "value": value,
        }
        try:
            objs.create_cluster_custom_object(*KUEUE, "workloadpriorityclasses", body)
        except ApiException as exc:
            if exc.status != 409:
                raise
    operator_process.stop()
    operator_process.extra_env["LMMS_ALLOWED_PRIORITY_CLASSES"] = f"{HIGH},{LOW}"
    operator_process.start()
    yield
    operator_process.stop()
    del operator_process.extra_env["LMMS_ALLOWED_PRIORITY_CLASSES"]
    operator_process.start()


def _scripted(**args: str) -> dict[str, Any]:
    return {
        "type": "dummy",
        "pretrained": "local",
        "args": {f"scripted_{k}": v for k, v in args.items()},
    }


def _queued(name: str, queue: str, gpus: int, model: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body = er.manifest(name, er.EXECUTOR, model=model, resources={"gpus": gpus}, **spec)
    body["spec"]["scheduling"]["queueName"] = queue
    return body


class Cache:
    """A PersistentVolumeClaim bound to a PersistentVolume (the executor keeps its data
    in a directory of its own, which the test reads)."""

    def __init__(self, cluster: devcluster.DevCluster, api: client.ApiClient, namespace: str):
        self.name = "cache"
        self.pv = f"pv-{namespace}"
        core = client.CoreV1Api(api)
        core.create_persistent_volume(
            {
                "metadata": {"name": self.pv},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "manual",
                    "hostPath": {"path": f"/tmp/{self.pv}"},
                    "claimRef": {"namespace": namespace, "name": self.name},
                },
            }
        )
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": self.name},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "manual",
                    "volumeName": self.pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        wait_for(
            lambda: (
                core.read_namespaced_persistent_volume_claim(self.name, namespace).status.phase
                == "Bound"
            ),
            timeout=30,
        )
        self.dir = cluster.directory / "executor" / "pvcs" / namespace / self.name
        self.core = core

    def state(self, shard: int = 0) -> Path:
        return self.dir / "lmms-runner" / f"scripted-{shard}"

    def done(self) -> int:
        path = self.state() / "done"
        return int(path.read_text() or 0) if path.exists() else 0

    def attempts(self) -> list[int]:
        path = self.state() / "attempts"
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    def delete(self) -> None:
        self.core.delete_persistent_volume(self.pv)


@pytest.fixture()
def cache(cluster: devcluster.DevCluster, api: client.ApiClient, namespace: str) -> Iterator[Cache]:
    c = Cache(cluster, api, namespace)
    yield c
    c.delete()


def _workload_of(queues: Queues, job_name: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        for wl in queues.workloads():
            if any(r["name"] == job_name for r in wl["metadata"].get("ownerReferences") or []):
                return wl
        return None

    return wait_for(probe, timeout=30, message=f"the Workload of {job_name}")


def _failures(operator_process: OperatorProcess) -> float:
    total = 0.0
    for line in operator_process.metrics().splitlines():
        if line.startswith("lmms_operator_evalrun_failures_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.usefixtures("kueue_operator")
def test_runs_beyond_the_quota_wait_with_the_workloads_reason_and_start_when_it_frees(
    api: client.ApiClient, namespace: str, queues: Queues
) -> None:
    q = queues.local_queue
    er.create(api, namespace, _queued("first", q, 2, _scripted(sleep="6")))
    er.wait_phase(api, namespace, "first", "Running", timeout=60)
    er.create(api, namespace, _queued("second", q, 2, _scripted(sleep="1")))
    er.wait_phase(api, namespace, "second", "Queued", timeout=30, reason="Queued")

    # Kueue's own words, from the Workload's QuotaReserved condition.
    def told() -> dict[str, Any] | None:
        run = er.get(api, namespace, "second")
        return run if "insufficient unused quota" in run["status"]["message"] else None

    waiting = wait_for(told, timeout=15)
    assert f"LocalQueue {q!r}" in waiting["status"]["message"]
    suspended = er.condition(waiting, "Suspended")
    assert (suspended["status"], suspended["reason"]) == ("True", "Queued")
    (job,) = er.jobs_of(api, namespace, waiting)
    assert job.spec.suspend is True
    assert job.metadata.labels[QUEUE_LABEL] == q
    er.wait_phase(api, namespace, "first", "Succeeded", timeout=60)
    er.wait_phase(api, namespace, "second", "Succeeded", timeout=60)


@pytest.mark.usefixtures("kueue_operator")
def test_suspend_holds_a_queued_run_and_resuming_continues_from_its_cache(
    api: client.ApiClient, namespace: str, queues: Queues, cache: Cache
) -> None:
    model = _scripted(steps="8", step_seconds="1")
    body = _queued("held", queues.local_queue, 1, model, suspend=True)
    body["spec"]["cache"] = {"persistentVolumeClaim": cache.name}
    run = er.create(api, namespace, body)
    held = er.wait_phase(api, namespace, "held", "Queued", timeout=30, reason="Suspended")
    # Held before it started: no Job at all, so Kueue has nothing to admit.
    assert not er.jobs_of(api, namespace, held) and not queues.workloads()
    er.patch_spec(api, namespace, "held", {"suspend": False})
    run = er.wait_phase(api, namespace, "held", "Running", timeout=60)
    wait_for(lambda: cache.done() >= 2, timeout=30)
    er.patch_spec(api, namespace, "held", {"suspend": True})
    run = er.wait_phase(api, namespace, "held", "Queued", timeout=30, reason="Suspended")
    job_name = run["status"]["jobName"]
    assert _workload_of(queues, job_name)["spec"]["active"] is False
    batch = client.BatchV1Api(api)
    wait_for(lambda: batch.read_namespaced_job(job_name, namespace).spec.suspend, timeout=30)
    wait_for(lambda: not batch.read_namespaced_job_status(job_name, namespace).status.active)
    stopped_at = cache.done()
    assert stopped_at < 8
    er.patch_spec(api, namespace, "held", {"suspend": False})
    done = er.wait_phase(api, namespace, "held", "Succeeded", timeout=90)
    assert done["status"]["jobName"] == job_name  # the same Job, resumed
    attempts = cache.attempts()
    assert attempts[0] == 0 and attempts[-1] >= 2, attempts  # the second began where it stopped
    assert cache.done() == 8


@pytest.mark.usefixtures("kueue_operator")
def test_suspending_a_running_queued_run_leaves_the_jobs_suspend_to_kueue(
    api: client.ApiClient, namespace: str, queues: Queues
) -> None:
    """The operator deactivates the Workload and never writes the Job's suspend: over a
    minute, the Job's suspend turns true once (Kueue) and never back."""
    er.create(api, namespace, _queued("busy", queues.local_queue, 1, _scripted(sleep="120")))
    run = er.wait_phase(api, namespace, "busy", "Running", timeout=60)
    job_name = run["status"]["jobName"]
    batch = client.BatchV1Api(api)
    seen: list[tuple[str, bool]] = []
    stop = threading.Event()

    def follow() -> None:
        w = watch.Watch()
        for ev in w.stream(
            batch.list_namespaced_job,
            namespace,
            field_selector=f"metadata.name={job_name}",
            timeout_seconds=75,
        ):
            job = ev["object"]
            seen.append((job.metadata.resource_version, bool(job.spec.suspend)))
            if stop.is_set():
                w.stop()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(1)
    er.patch_spec(api, namespace, "busy", {"suspend": True})
    er.wait_phase(api, namespace, "busy", "Queued", timeout=30, reason="Suspended")
    time.sleep(60)
    stop.set()
    follower.join(timeout=30)
    suspends = [s for _, s in seen]
    flips = sum(1 for a, b in itertools.pairwise(suspends) if a != b)
    assert suspends[-1] is True and flips == 1, seen
    # The writes settle: the Job controller's status updates as its pod stops, then none.
    assert len(seen) <= 12, seen
    run = er.get(api, namespace, "busy")
    assert run["status"]["phase"] == "Queued"


@pytest.mark.usefixtures("kueue_operator")
def test_a_fan_out_run_is_admitted_all_or_nothing_as_one_workload(
    api: client.ApiClient, namespace: str, queues: Queues
) -> None:
    tasks = ["mme", "mmmu_val", "ai2d"]
    model = _scripted(sleep="1", shard_scores="1")
    q = queues.local_queue  # 2 GPUs
    er.create(api, namespace, _queued("wide", q, 1, model, tasks=tasks, parallelism=3))
    wide = er.wait_phase(api, namespace, "wide", "Queued", timeout=30, reason="Queued")
    er.create(api, namespace, _queued("narrow", q, 1, model, tasks=tasks[:2], parallelism=2))
    narrow = er.wait_phase(api, namespace, "narrow", "Succeeded", timeout=90)
    wl = _workload_of(queues, narrow["status"]["jobName"])
    assert [ps["count"] for ps in wl["spec"]["podSets"]] == [2]
    assert {r["task"] for r in narrow["status"]["results"]} == set(tasks[:2])
    # Three pods of one GPU never fit in two GPUs: not one of them started.
    wl = _workload_of(queues, wide["status"]["jobName"])
    assert [ps["count"] for ps in wl["spec"]["podSets"]] == [3]
    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"job-name={wide['status']['jobName']}"
    )
    assert not pods.items
    assert er.get(api, namespace, "wide")["status"]["phase"] == "Queued"


@pytest.mark.usefixtures("kueue_operator")
def test_a_higher_priority_preempts_a_run_that_resumes_later_and_is_no_failure(
    api: client.ApiClient,
    namespace: str,
    queues: Queues,
    cache: Cache,
    operator_process: OperatorProcess,
) -> None:
    failures = _failures(operator_process)
    q = queues.local_queue  # 2 GPUs
    low = _queued("low", q, 2, _scripted(steps="10", step_seconds="1"))
    low["spec"]["scheduling"]["workloadPriorityClassName"] = LOW
    low["spec"]["cache"] = {"persistentVolumeClaim": cache.name}
    er.create(api, namespace, low)
    run = er.wait_phase(api, namespace, "low", "Running", timeout=60)
    job_name = run["status"]["jobName"]
    (job,) = er.jobs_of(api, namespace, run)
    assert job.metadata.labels["kueue.x-k8s.io/priority-class"] == LOW
    wait_for(lambda: cache.done() >= 2, timeout=30)
    high = _queued("high", q, 2, _scripted(sleep="3"))
    high["spec"]["scheduling"]["workloadPriorityClassName"] = HIGH
    er.create(api, namespace, high)
    preempted = er.wait_phase(api, namespace, "low", "Queued", timeout=30, reason="Preempted")
    assert "preempted" in preempted["status"]["message"].lower()
    assert er.condition(preempted, "Stalled")["status"] == "False"
    er.wait_phase(api, namespace, "high", "Succeeded", timeout=60)
    done = er.wait_phase(api, namespace, "low", "Succeeded", timeout=90)
    assert done["status"]["jobName"] == job_name  # the same Job, admitted again
    attempts = cache.attempts()
    assert len(attempts) == 2 and attempts[0] == 0 and attempts[1] >= 2, attempts
    # Not a failure: no retry spent, no Failed phase, no failure counted.
    job = client.BatchV1Api(api).read_namespaced_job_status(job_name, namespace)
    assert not job.status.failed
    assert "Failed" not in er.event_reasons(api, namespace, "low")
    assert _failures(operator_process) == failures
