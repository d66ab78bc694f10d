"""A model served by reference (spec.model.endpoint) and a judge (spec.judge) through the
real operator and API server: the run waits with no Job while the endpoint is not ready
(a Service without endpoints, a KServe InferenceService whose status the test writes as
KServe's controller would), fails naming the field past its wait, and gets a Job that
requests no GPU once it is ready; bad input ends Failed naming the field."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from lmms_devcluster.devcluster import DevCluster
from tests import evalruns as er
from tests.fixtures import kserve
from tests.helpers import wait_for

pytestmark = pytest.mark.usefixtures("operator_process")


def _run(name: str, endpoint: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return er.manifest(
        name,
        er.KWOK,
        model={"type": "openai", "endpoint": endpoint},
        resources={"gpus": 2},
        retries=0,
        **spec,
    )


def _env(job: client.V1Job) -> dict[str, str]:
    (runner,) = job.spec.template.spec.containers
    return {e.name: e.value for e in runner.env or [] if e.value is not None}


def test_a_missing_service_is_waited_for_with_no_job_then_fails_naming_the_field(
    api: client.ApiClient, namespace: str
) -> None:
    body = _run("absent", {"service": {"name": "absent", "port": 8000}, "waitSeconds": 8})
    created = er.create(api, namespace, body)
    run = er.wait_phase(api, namespace, "absent", "Pending", reason="WaitingForModel")
    message = run["status"]["message"]
    assert message.startswith("spec.model.endpoint.service.name: Service 'absent' not found;")
    assert not er.jobs_of(api, namespace, created)  # no Job, so no GPU held
    run = er.wait_phase(api, namespace, "absent", "Failed", timeout=60, reason="ModelNotReady")
    assert run["status"]["message"].startswith(
        "spec.model.endpoint.service.name: Service 'absent' not found after"
    )
    assert "waitSeconds: 8" in run["status"]["message"]
    assert not er.jobs_of(api, namespace, created)


def _crd_installed(api: client.ApiClient) -> bool:
    try:
        client.ApiextensionsV1Api(api).read_custom_resource_definition(
            kserve.CRD["metadata"]["name"]
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _install_crd(api: client.ApiClient, cluster: DevCluster) -> None:
    if not _crd_installed(api):
        client.ApiextensionsV1Api(api).create_custom_resource_definition(kserve.CRD)
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        f"crd/{kserve.CRD['metadata']['name']}",
        "--timeout=60s",
    )


def test_an_inference_service_is_followed_through_the_status_kserve_writes(
    api: client.ApiClient, namespace: str, cluster: DevCluster
) -> None:
    custom = client.CustomObjectsApi(api)
    body = _run("isvc", {"inferenceService": {"name": "llm"}, "waitSeconds": 600})
    if not _crd_installed(api):
        # Without KServe's API the run says so while it waits.
        created = er.create(api, namespace, body)
        run = er.wait_phase(api, namespace, "isvc", "Pending", reason="WaitingForModel")
        assert "serving.kserve.io/v1beta1) is not installed" in run["status"]["message"]
        _install_crd(api, cluster)
    else:
        created = er.create(api, namespace, body)

    def waiting_for(words: str) -> Any:
        def probe() -> Any:
            status = er.get(api, namespace, "isvc").get("status") or {}
            return status if words in str(status.get("message")) else None

        return wait_for(probe, timeout=30)

    status = waiting_for("InferenceService 'llm' not found")
    assert status["reason"] == "WaitingForModel"
    custom.create_namespaced_custom_object(
        kserve.GROUP, kserve.VERSION, namespace, kserve.PLURAL, kserve.inference_service("llm")
    )
    address = f"http://llm-predictor.{namespace}.svc.cluster.local"

    def write_status(ready: bool, url: str | None, reason: str = "") -> None:
        custom.patch_namespaced_custom_object_status(
            kserve.GROUP,
            kserve.VERSION,
            namespace,
            kserve.PLURAL,
            "llm",
            {"status": kserve.status(ready, url, reason)},
        )

    write_status(False, None, "PredictorNotReady")
    waiting_for("InferenceService 'llm' is not Ready (PredictorNotReady)")
    time.sleep(2)  # a few more looks: still no Job
    assert not er.jobs_of(api, namespace, created)
    write_status(True, address)
    (job,) = wait_for(lambda: er.jobs_of(api, namespace, created), timeout=30)
    env = _env(job)
    assert env["LMMS_MODEL_URL"] == f"{address}/openai/v1"  # address.url, not the external url
    assert env["LMMS_MODEL_WAIT_SECONDS"] == "600"
    (runner,) = job.spec.template.spec.containers
    assert "nvidia.com/gpu" not in (runner.resources.requests or {})  # resources.gpus: 2
    assert "nvidia.com/gpu" not in (runner.resources.limits or {})
    er.patch_spec(api, namespace, "isvc", {"cancel": True})


def test_bad_endpoint_input_ends_failed_naming_the_field(
    api: client.ApiClient, namespace: str
) -> None:
    # A URL the admin did not allow (the tests' operator allows none).
    er.create(api, namespace, _run("url", {"url": "https://llm.example.com/v1"}))
    run = er.wait_phase(api, namespace, "url", "Failed", reason="InvalidSpec")
    assert "spec.model.endpoint.url" in run["status"]["message"]
    assert "LMMS_ALLOWED_MODEL_URLS" in run["status"]["message"]
    # A judge's Secret without the usable-by-evalruns label: waited for, then failed.
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="judge-key"), string_data={"k": "v"}),
    )
    judge = {
        "service": {"name": "judge", "port": 8000},
        "model": "judge-model",
        "apiKey": {"secretKeyRef": {"name": "judge-key", "key": "k"}},
    }
    body = er.manifest("judged", er.KWOK, model={"type": "dummy", "pretrained": "x"}, judge=judge)
    er.create(api, namespace, body)
    run = er.wait_phase(api, namespace, "judged", "Pending", reason="WaitingForReferences")
    assert (
        "spec.judge.apiKey.secretKeyRef: Secret 'judge-key' is not usable"
        in run["status"]["message"]
    )
    run = er.wait_phase(api, namespace, "judged", "Failed", timeout=60, reason="ReferencesNotFound")
    assert "spec.judge.apiKey.secretKeyRef" in run["status"]["message"]
