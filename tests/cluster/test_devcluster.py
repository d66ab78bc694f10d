"""The devcluster behaves like a real cluster: CRDs, scheduling of GPUs, garbage collection."""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from lmms_devcluster import devcluster
from lmms_devcluster.imagestore import HOST_IMAGE
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster


def _job(
    name: str,
    gpus: int,
    command: list[str] | None = None,
    executor: bool = False,
    backoff_limit: int = 0,
) -> client.V1Job:
    container = client.V1Container(
        name="main",
        image=HOST_IMAGE,  # kwok ignores it; the executor runs it on the host
        command=command or ["true"],
        resources=client.V1ResourceRequirements(
            requests={devcluster.GPU_RESOURCE: str(gpus)},
            limits={devcluster.GPU_RESOURCE: str(gpus)},
        ),
    )
    pod_spec = client.V1PodSpec(containers=[container], restart_policy="Never")
    if executor:
        pod_spec.node_selector = {devcluster.EXECUTOR_LABEL: "true"}
        pod_spec.tolerations = [
            client.V1Toleration(key=devcluster.EXECUTOR_LABEL, operator="Exists")
        ]
    else:
        pod_spec.node_selector = {"type": "kwok"}
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            backoff_limit=backoff_limit,
            template=client.V1PodTemplateSpec(spec=pod_spec),
        ),
    )


def _pods_of(core: client.CoreV1Api, namespace: str, job: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items)


def test_version_is_the_pinned_release(api: client.ApiClient) -> None:
    info = client.VersionApi(api).get_code()
    assert info.git_version.startswith("v1.")
    assert info.git_version != "v0.0.0"
    assert info.minor in ("33", "34")


def test_gpu_nodes_advertise_gpus(api: client.ApiClient) -> None:
    nodes = client.CoreV1Api(api).list_node().items
    gpu_nodes = [n for n in nodes if n.status.allocatable.get(devcluster.GPU_RESOURCE) == "8"]
    assert len(gpu_nodes) >= 2


def test_crd_custom_resource_create_and_watch(api: client.ApiClient, namespace: str) -> None:
    group = f"t{uuid.uuid4().hex[:6]}.example.com"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(crd)
    try:
        wait_for(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(f"widgets.{group}").status.conditions
                or []
            ),
            timeout=30,
        )
        co = client.CustomObjectsApi(api)
        seen: list[dict[str, Any]] = []
        ready = threading.Event()

        def watcher() -> None:
            w = watch.Watch()
            ready.set()
            for event in w.stream(
                co.list_namespaced_custom_object,
                group,
                "v1",
                namespace,
                "widgets",
                timeout_seconds=20,
            ):
                seen.append(event)
                if event["object"]["spec"].get("size") == 2:
                    w.stop()

        t = threading.Thread(target=watcher)
        t.start()
        ready.wait()
        body = {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "w"},
            "spec": {"size": 1},
        }
        wait_for(
            lambda: co.create_namespaced_custom_object(group, "v1", namespace, "widgets", body)
        )
        co.patch_namespaced_custom_object(
            group, "v1", namespace, "widgets", "w", {"spec": {"size": 2}}
        )
        t.join(timeout=30)
        assert [e["type"] for e in seen][:1] == ["ADDED"]
        assert seen[-1]["type"] == "MODIFIED"
        assert seen[-1]["object"]["spec"]["size"] == 2
    finally:
        ext.delete_custom_resource_definition(f"widgets.{group}")


def test_job_with_one_gpu_is_scheduled_on_a_gpu_node(api: client.ApiClient, namespace: str) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(namespace, _job("one-gpu", gpus=1))
    pod = wait_for(
        lambda: next((p for p in _pods_of(core, namespace, "one-gpu") if p.spec.node_name), None),
        timeout=60,
    )
    assert pod.spec.node_name in devcluster.KWOK_NODES
    node = core.read_node(pod.spec.node_name)
    assert node.status.allocatable[devcluster.GPU_RESOURCE] == "8"
    # kwok runs the pod to completion, so the real Job controller completes the Job.
    wait_for(
        lambda: batch.read_namespaced_job("one-gpu", namespace).status.succeeded == 1, timeout=60
    )


def test_job_asking_for_too_many_gpus_is_unschedulable(
    api: client.ApiClient, namespace: str
) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(namespace, _job("too-many", gpus=devcluster.GPUS_PER_NODE + 1))

    def unschedulable() -> client.V1PodCondition | None:
        for pod in _pods_of(core, namespace, "too-many"):
            for cond in pod.status.conditions or []:
                if cond.type == "PodScheduled" and cond.reason == "Unschedulable":
                    return cond
        return None

    cond = wait_for(unschedulable, timeout=60)
    assert cond.status == "False"
    assert "Insufficient nvidia.com/gpu" in cond.message
    pods = _pods_of(core, namespace, "too-many")
    assert all(p.status.phase == "Pending" and not p.spec.node_name for p in pods)


def test_deleting_an_owner_garbage_collects_what_it_owns(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owned", owner_references=[ref])),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_config_map("owned", namespace)
        except client.ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(gone, timeout=60, message="owned ConfigMap was not garbage-collected")


def _listening_sockets() -> dict[int, str]:
    """inode -> local address of every listening TCP socket on the machine."""
    result: dict[int, str] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            addr_hex = fields[1].split(":")[0]
            if v6:
                addr = (
                    "::1"
                    if addr_hex == "0" * 31 + "1"
                    else ("::" if set(addr_hex) == {"0"} else addr_hex)
                )
                if addr_hex.startswith("0000000000000000FFFF0000"):
                    b = bytes.fromhex(addr_hex[24:])[::-1]
                    addr = ".".join(str(x) for x in b)
            else:
                b = bytes.fromhex(addr_hex)[::-1]
                addr = ".".join(str(x) for x in b)
            result[int(fields[9])] = addr
    return result


def test_nothing_listens_on_a_non_loopback_address(cluster: devcluster.DevCluster) -> None:
    state = json.loads(cluster.state_file.read_text())
    sockets = _listening_sockets()
    checked = 0
    # Kueue runs under its supervisor (a shell loop): its own sockets are the child's.
    kueue = {f"kueue[{pid}]": pid for pid in cluster.kueue_pids()}
    for name, pid in {**state["pids"], **kueue}.items():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in sockets:
                    addr = sockets[inode]
                    checked += 1
                    assert addr.startswith("127.") or addr == "::1", f"{name} listens on {addr}"
    assert checked >= 3  # etcd (client + peer) and the apiserver at least
