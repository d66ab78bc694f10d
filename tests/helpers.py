"""Small helpers shared by the test tiers."""

from __future__ import annotations

import contextlib
import functools
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config

from lmms_devcluster import devcluster

T = TypeVar("T")

CHART = Path(__file__).parents[1] / "helm" / "lmms-operator"


def helm(cluster: devcluster.DevCluster, *args: str) -> str:
    """Runs helm against the devcluster; fails the test with helm's output on an error."""
    out = subprocess.run(
        [devcluster.find_helm(), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def wait_for(
    probe: Callable[[], T | None], timeout: float = 60, interval: float = 0.2, message: str = ""
) -> T:
    """Polls ``probe`` until it returns something truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s {message}: last={last!r}")


def adopt_crds(cluster: devcluster.DevCluster, release: str, namespace: str) -> None:
    """Hands the CRDs the tests applied with kubectl to a Helm release, as the docs say
    for any cluster whose CRDs were applied before the chart."""
    for crd in ("evalruns.eval.lmms.dev", "leaderboards.eval.lmms.dev"):
        cluster.kubectl("label", "crd", crd, "app.kubernetes.io/managed-by=Helm", "--overwrite")
        cluster.kubectl(
            "annotate",
            "crd",
            crd,
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}",
            "--overwrite",
        )


#: Pod Security "restricted", enforced: what a platform team sets on tenant namespaces.
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def system_and_tenant_namespaces(api: client.ApiClient) -> tuple[str, str]:
    """A release namespace and a tenant's, both under Pod Security "restricted", with
    their default ServiceAccounts (pods need them); the caller deletes them."""
    core = client.CoreV1Api(api)
    suffix = uuid.uuid4().hex[:6]
    names = f"lmms-system-{suffix}", f"evals-{suffix}"
    for ns in names:
        core.create_namespace({"metadata": {"name": ns, "labels": RESTRICTED}})
    for ns in names:
        wait_for(functools.partial(core.read_namespaced_service_account, "default", ns), timeout=30)
    return names


def local_tasks(
    core: client.CoreV1Api, namespace: str, config_map: str, files: dict[str, str]
) -> None:
    """What a run of the loopback model on local tasks needs in its namespace: the
    tasks' files in a ConfigMap, and the model's key in a Secret ``model-key`` usable by
    EvalRuns (key ``key``)."""
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=config_map), data=files)
    )
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="model-key", labels={"eval.lmms.dev/usable-by-evalruns": "true"}
            ),
            string_data={"key": "sk-local-0123456789"},
        ),
    )
    wait_for(lambda: core.read_namespaced_service_account("default", namespace), timeout=60)


#: The ConfigMap of the benchmarks' local tasks, and where a run's pod finds it (the Job
#: mounts each ``customTasks`` ConfigMap at /etc/lmms/tasks/<name>).
LOCAL_TASKS = "bench-tasks"
LOCAL_TASK_DIR = f"/etc/lmms/tasks/{LOCAL_TASKS}"


@contextlib.contextmanager
def local_task_cluster(
    work: Path, namespace: str, files: dict[str, str]
) -> Iterator[tuple[devcluster.DevCluster, client.ApiClient]]:
    """A devcluster (under ``work/dc``) with the CRDs, and ``namespace`` ready for runs of
    local tasks (``files`` in ConfigMap ``LOCAL_TASKS``) against the loopback model: the
    benchmarks' set-up."""
    with devcluster.running(work / "dc") as cluster:
        cluster.kubectl("apply", "--server-side", "-f", str(CHART.parents[1] / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        local_tasks(core, namespace, LOCAL_TASKS, files)
        yield cluster, api
