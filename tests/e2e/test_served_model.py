"""A model served in the cluster, evaluated by reference: the loopback model server runs
as a pod behind a Service; an EvalRun names the Service (spec.model.endpoint) and the
same server as its judge (spec.judge), which a judged custom task asks through lmms-eval's
own judge client. Real operator, Job controller, EndpointSlice
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

#: A judged task: lmms-eval's own judge client (``lmms_eval.llm_judge``, configured only
#: by the variables the operator sets: API_TYPE, OPENAI_API_URL, OPENAI_API_KEY,
#: MODEL_VERSION) is shown the image and the model's answer; the score is whether the
#: judge, named as MODEL_VERSION says, gives the same colour.
JUDGED_UTILS = """

def judged_results(doc, results):
    import os

    from lmms_eval.llm_judge import Request, ServerConfig, get_server

    config = ServerConfig(model_name=os.environ["MODEL_VERSION"], num_retries=1, max_tokens=8)
    server = get_server(os.environ["API_TYPE"], config)
    answer = results[0].strip().lower()
    question = "The model says this image is " + answer + ". Which colour is it?"
    verdict = server.evaluate(
        Request(messages=[{"role": "user", "content": question}], images=doc_to_visual(doc))
    )
    agrees = verdict.success and verdict.model_used == os.environ["MODEL_VERSION"]
    return {"judge_agrees": 1.0 if agrees and verdict.content.lower() == answer else 0.0}
"""


def _task_files() -> dict[str, str]:
    """The colors task, and the judged task beside it (one utils.py for both)."""
    files = colortask.files("colors", 6, LOCAL_TASK_DIR)
    judged = colortask.files("judged", 4, LOCAL_TASK_DIR)
    yaml_ = judged.pop("judged.yaml").replace("utils.process_results", "utils.judged_results")
    yaml_ = yaml_.replace("metric: exact_match", "metric: judge_agrees")
    files.update({k: v for k, v in judged.items() if k != "utils.py"})
    files["judged.yaml"] = yaml_.replace(
        "  - metric: error_rate\n    aggregation: mean\n    higher_is_better: false\n", ""
    )
    files["utils.py"] += JUDGED_UTILS
    return files


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
    local_tasks(core, namespace, LOCAL_TASKS, _task_files())
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
        customTasks=[{"configMap": LOCAL_TASKS, "tasks": ["colors", "judged"]}],
        env=[{"name": "HF_HUB_OFFLINE", "value": "1"}],
        judge={"service": {"name": "model", "port": PORT}, "model": "local"},
        resources={"gpus": 2},  # ignored: the pod requests none, one process runs
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
    assert "nvidia.com/gpu" not in (runner.resources.requests or {})  # resources.gpus: 2
    env = {e.name: e.value for e in runner.env if e.value is not None}
    assert env["LMMS_MODEL_URL"] == url and env["OPENAI_API_URL"] == url
    assert env["MODEL_VERSION"] == "local" and env["API_TYPE"] == "openai"
    status = run["status"]
    scores = {(r["task"], r["metric"]): r["value"] for r in status["results"]}
    # The fixture knows every colour; as the judge it agrees with every answer.
    assert scores == {("colors", "exact_match"): 1.0, ("judged", "judge_agrees"): 1.0}
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
    entries = board["status"]["top"]
    assert sorted(e["task"] for e in entries) == ["colors", "judged"]
    for entry in entries:
        assert entry["model"] == model
        assert entry["settings"] == f"judge={model} lmms-eval=0.7.3"
    # Where the executor has a pod network, the name led to the model pod's bridge address.
    subnet = _pod_network(cluster)
    pod_ip = core.read_namespaced_pod("model-0", namespace).status.pod_ip
    assert subnet is None or ipaddress.ip_address(pod_ip) in subnet, (pod_ip, subnet)
    print(f"the runner reached model.{namespace}.svc at {pod_ip} (pod network: {subnet})")
