"""Helpers to write, read and wait for EvalRuns in tests."""

from __future__ import annotations

import copy
from typing import Any

from kubernetes import client

from lmms_devcluster import devcluster
from lmms_operator.api import GROUP, VERSION
from tests.helpers import LOCAL_TASKS, wait_for

EXECUTOR = {
    "nodeSelector": {devcluster.EXECUTOR_LABEL: "true"},
    "tolerations": [{"key": devcluster.EXECUTOR_LABEL, "operator": "Exists"}],
}
MANUAL = {
    "nodeSelector": {devcluster.MANUAL_LABEL: "true"},
    "tolerations": [{"key": devcluster.MANUAL_LABEL, "operator": "Exists"}],
}
KWOK = {"nodeSelector": {"type": "kwok"}}
#: The label that marks a Secret usable by EvalRuns.
USABLE = {"eval.lmms.dev/usable-by-evalruns": "true"}


def manifest(name: str, scheduling: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": {"model": {"type": "dummy", "pretrained": "local"}, "tasks": ["mme"]},
    }
    if scheduling is not None:
        body["spec"]["scheduling"] = copy.deepcopy(scheduling)
    body["spec"].update(spec)
    return body


def local_run(
    name: str, url: str, tasks: list[str], model: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    """A run on the executor's node of local tasks (ConfigMap ``LOCAL_TASKS``, as
    ``tests.helpers.local_task_cluster`` makes it) against the loopback model at ``url`` with
    the Secret ``model-key``, offline; ``model`` adds to the model (a version)."""
    return manifest(
        name,
        EXECUTOR,
        model={
            "type": "openai",
            "args": {"model_version": "local", "base_url": url, "num_concurrent": "1"},
            "apiKey": {"secretKeyRef": {"name": "model-key", "key": "key"}},
            **(model or {}),
        },
        tasks=[],
        customTasks=[{"configMap": LOCAL_TASKS, "tasks": tasks}],
        env=[{"name": "HF_HUB_OFFLINE", "value": "1"}],
        **spec,
    )


def create(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return dict(
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "evalruns", body
        )
    )


def get(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return dict(
        client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "evalruns", name
        )
    )


def patch_spec(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "evalruns", name, {"spec": spec}
    )


def delete(api: client.ApiClient, namespace: str, name: str) -> None:
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "evalruns", name
    )


def wait_phase(
    api: client.ApiClient,
    namespace: str,
    name: str,
    phase: str,
    timeout: float = 60,
    reason: str | None = None,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        run = get(api, namespace, name)
        status = run.get("status") or {}
        if status.get("phase") == phase and (reason is None or status.get("reason") == reason):
            return run
        return None

    try:
        return wait_for(probe, timeout=timeout)
    except AssertionError:
        status = get(api, namespace, name).get("status")
        raise AssertionError(f"{name} did not reach {phase}/{reason}: status={status}") from None


def condition(run: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in (run.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    raise AssertionError(f"no {ctype} condition in {run.get('status')}")


def event_reasons(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    events = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=EvalRun"
    )
    # Event timestamps have one-second resolution; the resourceVersion orders them.
    items = sorted(events.items, key=lambda e: int(e.metadata.resource_version))
    return [e.reason for e in items]


def wait_event(
    api: client.ApiClient, namespace: str, name: str, reason: str, timeout: float = 15
) -> list[str]:
    """The run's Event reasons, once one of them is ``reason``. The operator records an
    Event after the status change it explains, so a test that has just seen the status
    must wait for the Event rather than read the list once."""

    def recorded() -> list[str] | None:
        reasons = event_reasons(api, namespace, name)
        return reasons if reason in reasons else None

    return wait_for(recorded, timeout=timeout, message=f"for the Event {reason} on {name}")


def jobs_of(api: client.ApiClient, namespace: str, run: dict[str, Any]) -> list[client.V1Job]:
    uid = run["metadata"]["uid"]
    return list(
        client.BatchV1Api(api)
        .list_namespaced_job(namespace, label_selector=f"eval.lmms.dev/run-uid={uid}")
        .items
    )


def apply_corpus(
    api: client.ApiClient,
    namespace: str,
    corpus: list[tuple[str, dict[str, Any], str]],
    body: Any,
) -> dict[str, str]:
    """Creates each case's EvalRun (``body(name, overrides)``) as ``kubectl apply`` does,
    with strict field validation. A refusal must be a 400/422 naming the case's field;
    returns the cases the API server accepted (name -> field)."""
    import json

    co = client.CustomObjectsApi(api)
    accepted: dict[str, str] = {}
    for name, overrides, field in corpus:
        try:
            co.create_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                "evalruns",
                body(name, overrides),
                field_validation="Strict",
            )
        except client.ApiException as exc:
            assert exc.status in (400, 422), (name, exc.status, exc.body)
            message = json.loads(exc.body)["message"]
            assert field in message, f"{name}: {field!r} not in {message!r}"
        else:
            accepted[name] = field
    return accepted
