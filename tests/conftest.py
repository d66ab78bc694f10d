"""Shared fixtures: a real local control plane for the whole test session."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from lmms_devcluster import devcluster
from tests.helpers import wait_for
from tests.operator_process import OperatorProcess


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devcluster.DevCluster]:
    """A running devcluster (etcd, apiserver, controller-manager, scheduler, kwok,
    executor); every process it started is stopped at the end, also on failure."""
    directory = Path(os.environ.get("LMMS_TEST_CLUSTER_DIR") or tmp_path_factory.mktemp("dc"))
    with devcluster.running(directory) as dc:
        yield dc


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The operator and runner images, built from the Dockerfiles with buildah (`make
    images`, which `make test` runs first; cached, so this only reads the tags)."""
    script = devcluster.HERE / "images.sh"
    out = subprocess.run(["bash", str(script), "all"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"make images failed:\n{out.stderr[-3000:]}")
    built = dict(line.split() for line in out.stdout.splitlines() if line.strip())
    return {name: f"localhost/{name}:{tag}" for name, tag in built.items()}


@pytest.fixture(scope="session")
def api(cluster: devcluster.DevCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


def fresh_namespace(api: client.ApiClient) -> Iterator[str]:
    """A new namespace, ready for pods; deleted afterwards."""
    core = client.CoreV1Api(api)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods need the namespace's default ServiceAccount, made by the controller-manager.
    wait_for(lambda: core.read_namespaced_service_account("default", name), timeout=30)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture()
def namespace(api: client.ApiClient) -> Iterator[str]:
    yield from fresh_namespace(api)


@pytest.fixture()
def other_namespace(api: client.ApiClient) -> Iterator[str]:
    """A second tenant's namespace."""
    yield from fresh_namespace(api)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def crds(cluster: devcluster.DevCluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


@pytest.fixture(scope="session")
def operator_process(
    cluster: devcluster.DevCluster, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The real operator (`lmms-operator run`) as a process against the devcluster."""
    proc = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"))
    proc.start()
    yield proc
    proc.stop()
