"""The operator's informers against the real API server: only labelled objects reach the
process, in pages, and their changes arrive in order. (The relist on 410 Gone is a unit
test: a real API server answers Gone only once its watch cache dropped the events.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from lmms_devcluster import devcluster
from lmms_operator import k8s
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

MANAGED = {"app.kubernetes.io/managed-by": "lmms-operator"}


class Sink:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: list[str] = []
        self.lists = 0
        self.events: list[tuple[str, str]] = []
        self.kinds: set[str] = set()

    def relisting(self, scope: str | None) -> None:
        pass

    def listed(self, scope: str | None, objects: list[dict[str, Any]], final: bool) -> None:
        with self.lock:
            self.names += [o["metadata"]["name"] for o in objects]
            self.kinds |= {o.get("kind", "") for o in objects}
            self.lists += final

    def event(self, type_: str, obj: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((type_, obj["metadata"]["name"]))

    def undecodable(self, kind: str, meta: dict[str, Any], reason: str) -> None:
        raise AssertionError(f"undecodable {kind} {meta}: {reason}")


@pytest.fixture()
def operator_client(
    cluster: devcluster.DevCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    yield


def _pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            # Bound to a node that runs nothing: the pod stays as it is.
            "nodeName": "not-a-node",
            "containers": [{"name": "c", "image": "registry.invalid/none:1"}],
        },
    }


def test_only_labelled_pods_reach_the_process(
    api: client.ApiClient, namespace: str, operator_client: None
) -> None:
    core = client.CoreV1Api(api)
    for i in range(3):
        core.create_namespaced_pod(namespace, _pod(f"ours-{i}", MANAGED))
    for i in range(20):
        core.create_namespaced_pod(namespace, _pod(f"theirs-{i}", {"team": "b"}))
    sink = Sink()
    informer = k8s.Informer(
        "Pod",
        sink,
        namespace=namespace,
        label_selector="app.kubernetes.io/managed-by=lmms-operator",
        fetch=k8s.Api().request,
    )
    informer.PAGE = 2  # several pages: the list is consistent across them
    informer.start()
    try:
        assert informer.synced.wait(30)
        assert sorted(sink.names) == ["ours-0", "ours-1", "ours-2"]
        assert sink.kinds == {"Pod"}
        core.create_namespaced_pod(namespace, _pod("theirs-late", {"team": "b"}))
        core.create_namespaced_pod(namespace, _pod("ours-late", MANAGED))
        core.delete_namespaced_pod("ours-0", namespace, grace_period_seconds=0)
        wait_for(lambda: ("DELETED", "ours-0") in sink.events, timeout=30)
        names = {name for _, name in sink.events}
        assert "ours-late" in names
        assert not any(name.startswith("theirs") for name in names)
        added = [e for e in sink.events if e[1] == "ours-late"]
        assert added[0][0] == "ADDED"
    finally:
        informer.stop()
        informer.join(10)
