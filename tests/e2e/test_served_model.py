"""A model served in the cluster, evaluated by reference: the loopback model server runs
as a pod behind a Service; an EvalRun names the Service (spec.model.endpoint) and the
same server as its judge (spec.judge). Real operator, Job controller, EndpointSlice
controller, scheduler and executor; the real runner and lmms-eval 0.7.3 (offline).

What the devcluster proves here, without kube-proxy or cluster DNS: the operator waits
(WaitingForModel, no Job) while the Service has no ready endpoint, as the EndpointSlice
controller reports the model pod's readiness; the runner then reaches the Service by its
DNS name, ``model.<namespace>.svc``, which the executor's hosts file gives as the ready
pod's bridge address (``lmms_devcluster.servicenames``; the Service's port equals its
targetPort, there is no virtual IP)."""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path

import pytest
from kubernetes import client

from lmms_devcluster import devcluster
from lmms_devcluster.devcluster import DevCluster
from lmms_devcluster.imagestore import HOST_IMAGE
from tests import evalruns as er
from tests.cluster.test_executor import _pod_network
from tests.fixtures import colortask
from tests.helpers import LOCAL_TASK_DIR, LOCAL_TASKS, local_tasks, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator_process")]

REPO = Path(__file__).resolve().parents[2]
PORT = 8000


def _model_pod() -> client.V1Pod:
    server = [sys.executable, str(REPO / "tests/fixtures/openai_server.py")]
    probe = client.V1Probe(
        http_get=client.V1HTTPGetAction(path="/v1/models", port=PORT), period_seconds=1
    )
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name="model-0", labels={"app": "served-model"}),
        spec=client.V1PodSpec(
            node_selector={devcluster.EXECUTOR_LABEL: "true"},
            tolerations=[client.V1Toleration(key=devcluster.EXECUTOR_LABEL, operator="Exists")],
            containers=[
                client.V1Container(
                    name="server",
                    image=HOST_IMAGE,
                    command=[*server, "--host", "0.0.0.0", "--port", str(PORT), "--delay", "0.05"],
                    readiness_probe=probe,
                )
            ],
        ),
    )


def test_a_service_backed_model_is_evaluated_by_reference_with_a_judge(
    api: client.ApiClient, namespace: str, cluster: DevCluster
) -> None:
    core = client.CoreV1Api(api)
    local_tasks(core, namespace, LOCAL_TASKS, colortask.files("colors", 6, LOCAL_TASK_DIR))
    core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="model"),
            spec=client.V1ServiceSpec(
                selector={"app": "served-model"},
                ports=[client.V1ServicePort(port=PORT, target_port=PORT)],
            ),
        ),
    )
    endpoint = {"service": {"name": "model", "port": PORT}, "waitSeconds": 300}
    body = er.manifest(
        "served",
        er.EXECUTOR,
        model={"type": "openai", "endpoint": endpoint, "args": {"num_concurrent": "1"}},
        tasks=[],
        customTasks=[{"configMap": LOCAL_TASKS, "tasks": ["colors"]}],
        env=[{"name": "HF_HUB_OFFLINE", "value": "1"}],
        judge={"service": {"name": "model", "port": PORT}, "model": "local"},
        resources={"gpus": 1},
    )
    created = er.create(api, namespace, body)
    # No pod behind the Service yet: the run waits, holding nothing.
    run = er.wait_phase(api, namespace, "served", "Pending", reason="WaitingForModel")
    assert "Service 'model' has no ready endpoint" in run["status"]["message"]
    assert not er.jobs_of(api, namespace, created)
    core.create_namespaced_pod(namespace, _model_pod())
    run = er.wait_phase(api, namespace, "served", "Succeeded", timeout=300)
    url = f"http://model.{namespace}.svc:{PORT}/v1"
    (job,) = er.jobs_of(api, namespace, created)
    (runner,) = job.spec.template.spec.containers
    assert "nvidia.com/gpu" not in (runner.resources.requests or {})  # resources.gpus: 1
    env = {e.name: e.value for e in runner.env if e.value is not None}
    assert env["LMMS_MODEL_URL"] == url and env["OPENAI_API_URL"] == url
    assert env["MODEL_VERSION"] == "local" and env["API_TYPE"] == "openai"
    status = run["status"]
    (result,) = status["results"]
    assert (result["task"], result["value"]) == ("colors", 1.0)  # the fixture knows them all
    model = f"local@svc/model:{PORT}/v1"  # the served id, at the endpoint
    assert status["model"] == model
    cm = core.read_namespaced_config_map(status["resultsConfigMap"], namespace)
    provenance = json.loads(cm.data["results.json"])["provenance"]
    assert provenance["servedModel"] == "local" and provenance["endpoint"] == url
    assert provenance["judge"] == model
    board = wait_for(
        lambda: client.CustomObjectsApi(api).get_namespaced_custom_object(
            "eval.lmms.dev", "v1alpha1", namespace, "leaderboards", "default"
        ),
        timeout=30,
    )
    (entry,) = board["status"]["top"]
    assert entry["model"] == model
    assert entry["settings"] == f"judge={model} lmms-eval=0.7.3"
    # Where the executor has a pod network, the name led to the model pod's bridge address.
    subnet = _pod_network(cluster)
    pod_ip = core.read_namespaced_pod("model-0", namespace).status.pod_ip
    assert subnet is None or ipaddress.ip_address(pod_ip) in subnet, (pod_ip, subnet)
    print(f"the runner reached model.{namespace}.svc at {pod_ip} (pod network: {subnet})")
