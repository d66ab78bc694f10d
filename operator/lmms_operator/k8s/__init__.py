"""The only layer that talks to the API server.

Plain dicts in and out (``_preload_content=False``: no model round trips), "already
exists" counts as success, "not found" on delete counts as success.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from ..api import GROUP, VERSION

log = logging.getLogger("lmms.k8s")

_lock = threading.Lock()
_api: client.ApiClient | None = None


def api() -> client.ApiClient:
    """One shared client, from the in-cluster account or the current kubeconfig."""
    global _api
    with _lock:
        if _api is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                # Read $KUBECONFIG now, not when the kubernetes package was imported.
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
            cfg = client.Configuration.get_default_copy()
            cfg.connection_pool_maxsize = 32
            _api = client.ApiClient(cfg)
        return _api


def _json(resp: Any) -> dict[str, Any]:
    return dict(json.loads(resp.data))


def _release(resp: Any) -> None:
    """Reads a response whose body is not needed, so that its connection goes back to
    the pool: an unread response keeps its connection, and the next request would open
    (and TLS-handshake) a new one."""
    try:
        resp.data  # noqa: B018 - reading is the point
    finally:
        resp.release_conn()


def is_status(exc: BaseException, *codes: int) -> bool:
    return isinstance(exc, ApiException) and exc.status in codes


def api_message(exc: ApiException) -> str:
    """The API server's own message (it names the field), not the whole HTTP dump."""
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)


# -- EvalRuns ------------------------------------------------------------------------
def get_evalrun(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _json(
            client.CustomObjectsApi(api()).get_namespaced_custom_object(
                GROUP, VERSION, namespace, "evalruns", name, _preload_content=False
            )
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def patch_evalrun_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    try:
        _release(
            client.CustomObjectsApi(api()).patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                "evalruns",
                name,
                {"status": status},
                _preload_content=False,
            )
        )
    except ApiException as exc:
        if exc.status != 404:  # deleted meanwhile: nothing to report on
            raise


def list_evalruns(namespace: str | None = None) -> list[dict[str, Any]]:
    co = client.CustomObjectsApi(api())
    if namespace:
        resp = co.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "evalruns", _preload_content=False
        )
    else:
        resp = co.list_cluster_custom_object(GROUP, VERSION, "evalruns", _preload_content=False)
    return list(_json(resp).get("items", []))


# -- children ------------------------------------------------------------------------
def create(obj: dict[str, Any]) -> bool:
    """Creates a namespaced object; returns False when it already existed."""
    ns = obj["metadata"]["namespace"]
    kind = obj["kind"]
    try:
        if kind == "Job":
            resp = client.BatchV1Api(api()).create_namespaced_job(ns, obj, _preload_content=False)
        elif kind == "ConfigMap":
            resp = client.CoreV1Api(api()).create_namespaced_config_map(
                ns, obj, _preload_content=False
            )
        elif kind == "Secret":
            resp = client.CoreV1Api(api()).create_namespaced_secret(ns, obj, _preload_content=False)
        elif kind == "Service":
            resp = client.CoreV1Api(api()).create_namespaced_service(
                ns, obj, _preload_content=False
            )
        else:
            raise ValueError(f"cannot create {kind}")
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    _release(resp)
    return True


def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _json(
            client.BatchV1Api(api()).read_namespaced_job(name, namespace, _preload_content=False)
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def list_jobs(namespace: str, selector: str) -> list[dict[str, Any]]:
    resp = client.BatchV1Api(api()).list_namespaced_job(
        namespace, label_selector=selector, _preload_content=False
    )
    return list(_json(resp).get("items", []))


def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    resp = client.CoreV1Api(api()).list_namespaced_pod(
        namespace, label_selector=selector, _preload_content=False
    )
    return list(_json(resp).get("items", []))


def patch_job_suspend(namespace: str, name: str, suspend: bool) -> None:
    _release(
        client.BatchV1Api(api()).patch_namespaced_job(
            name, namespace, {"spec": {"suspend": suspend}}, _preload_content=False
        )
    )


def delete_run_children(namespace: str, selector: str) -> int:
    """Deletes the Jobs (with their pods and token Secrets), ConfigMaps and Services
    matching."""
    body = client.V1DeleteOptions(propagation_policy="Background")
    core, batch = client.CoreV1Api(api()), client.BatchV1Api(api())
    deleted = 0
    for job in list_jobs(namespace, selector):
        name = job["metadata"]["name"]
        try:
            _release(
                batch.delete_namespaced_job(name, namespace, body=body, _preload_content=False)
            )
            deleted += 1
        except ApiException as exc:
            if exc.status != 404:
                raise
        # By name: the operator may not list Secrets (least privilege). A token whose Job
        # is gone already is removed with the run (owner reference).
        delete_secret(namespace, f"{name}-token")
    for lister, deleter in (
        (core.list_namespaced_config_map, core.delete_namespaced_config_map),
        (core.list_namespaced_service, core.delete_namespaced_service),
    ):
        items = _json(lister(namespace, label_selector=selector, _preload_content=False))
        for item in items.get("items", []):
            try:
                _release(deleter(item["metadata"]["name"], namespace, _preload_content=False))
            except ApiException as exc:
                if exc.status != 404:
                    raise
    return deleted


def delete_secret(namespace: str, name: str) -> None:
    try:
        _release(
            client.CoreV1Api(api()).delete_namespaced_secret(
                name, namespace, _preload_content=False
            )
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


def config_map_exists(namespace: str, name: str) -> bool:
    try:
        _release(
            client.CoreV1Api(api()).read_namespaced_config_map(
                name, namespace, _preload_content=False
            )
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def pvc_exists(namespace: str, name: str) -> bool:
    try:
        _release(
            client.CoreV1Api(api()).read_namespaced_persistent_volume_claim(
                name, namespace, _preload_content=False
            )
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def read_secret(namespace: str, name: str) -> dict[str, str] | None:
    """The Secret's data, decoded (None when it does not exist). One read for all keys;
    the values are for the caller only: never log them."""
    try:
        secret = _json(
            client.CoreV1Api(api()).read_namespaced_secret(name, namespace, _preload_content=False)
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def secret_has_key(namespace: str, name: str, key: str) -> bool | None:
    """True/False when the Secret exists (with/without the key); None when it does not."""
    data = read_secret(namespace, name)
    return None if data is None else key in data


def read_secret_value(namespace: str, name: str, key: str) -> str | None:
    return (read_secret(namespace, name) or {}).get(key) or None


# -- events --------------------------------------------------------------------------
def event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Records a core/v1 Event about ``obj``; never fails the caller."""
    meta = obj["metadata"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{meta['name'][:200]}.",
            "namespace": meta["namespace"],
        },
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "source": {"component": "lmms-operator"},
        "reportingComponent": "lmms-operator",
        "reportingInstance": os.environ.get("POD_NAME", "lmms-operator"),
        "firstTimestamp": now[:19] + "Z",
        "lastTimestamp": now[:19] + "Z",
        "count": 1,
    }
    try:
        _release(
            client.CoreV1Api(api()).create_namespaced_event(
                meta["namespace"], body, _preload_content=False
            )
        )
    except Exception as exc:  # events are best effort
        log.warning("could not record event %s on %s: %s", reason, meta["name"], exc)
