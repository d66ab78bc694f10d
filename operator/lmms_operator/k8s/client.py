"""Requests to the API server: plain dicts in and out, errors as ``errors.ApiError``.

``_preload_content=False`` everywhere: no round trips through the generated models.
"Already exists" on create and "not found" on delete count as success.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .. import errors
from ..api import GROUP, VERSION

log = logging.getLogger("lmms.k8s")

_lock = threading.Lock()
_api: client.ApiClient | None = None
_namespace: str | None = None


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


def current_namespace() -> str:
    """The namespace of the current kubeconfig context (``default`` when it names none)."""
    try:
        _, context = config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG"))
        return str((context or {}).get("context", {}).get("namespace") or "default")
    except (config.ConfigException, TypeError, OSError):
        return "default"


def _message(exc: ApiException) -> tuple[str, str]:
    """The API server's own message (it names the field) and reason, not the HTTP dump."""
    try:
        body = json.loads(exc.body)
        return str(body.get("message") or exc.reason), str(body.get("reason") or "")
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason), ""


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turns the client library's exceptions into ``errors.ApiError``."""
    try:
        yield
    except ApiException as exc:
        message, reason = _message(exc)
        raise errors.api_error(int(exc.status or 0), message, reason) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise errors.Unavailable(f"the API server did not answer: {type(exc).__name__}") from None


def _json(resp: Any) -> dict[str, Any]:
    try:
        return dict(json.loads(resp.data))
    finally:
        resp.release_conn()


def _release(resp: Any) -> None:
    """Reads a response whose body is not needed, so that its connection goes back to
    the pool: an unread response keeps its connection, and the next request would open
    (and TLS-handshake) a new one."""
    try:
        resp.data  # noqa: B018 - reading is the point
    finally:
        resp.release_conn()


def _get(call: Any, *args: Any) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        with translated():
            return _json(call(*args, _preload_content=False))
    except errors.NotFound:
        return None


def _exists(call: Any, *args: Any) -> bool:
    try:
        with translated():
            _release(call(*args, _preload_content=False))
    except errors.NotFound:
        return False
    return True


def _delete(call: Any, *args: Any, **kwargs: Any) -> bool:
    """Deletes; False when it was not there."""
    try:
        with translated():
            _release(call(*args, _preload_content=False, **kwargs))
    except errors.NotFound:
        return False
    return True


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api())


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(api())


def _batch() -> client.BatchV1Api:
    return client.BatchV1Api(api())


# -- EvalRuns and Leaderboards ------------------------------------------------------------
def get_evalrun(namespace: str, name: str) -> dict[str, Any] | None:
    return _get(_custom().get_namespaced_custom_object, GROUP, VERSION, namespace, "evalruns", name)


def _patch_status(plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
    """Merge-patches the status subresource; False when the object is gone."""
    try:
        with translated():
            _release(
                _custom().patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    name,
                    {"status": dict(status)},
                    _preload_content=False,
                )
            )
    except errors.NotFound:
        return False  # deleted meanwhile: nothing to report on
    return True


def patch_evalrun_status(namespace: str, name: str, status: Mapping[str, Any]) -> bool:
    return _patch_status("evalruns", namespace, name, status)


def list_evalruns(namespace: str | None = None) -> list[dict[str, Any]]:
    co = _custom()
    with translated():
        if namespace:
            resp = co.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "evalruns", _preload_content=False
            )
        else:
            resp = co.list_cluster_custom_object(GROUP, VERSION, "evalruns", _preload_content=False)
        return list(_json(resp).get("items", []))


def get_leaderboard(namespace: str, name: str) -> dict[str, Any] | None:
    return _get(
        _custom().get_namespaced_custom_object, GROUP, VERSION, namespace, "leaderboards", name
    )


def create_leaderboard(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """Creates a Leaderboard; None when one of that name exists already."""
    namespace = body["metadata"]["namespace"]
    try:
        with translated():
            return _json(
                _custom().create_namespaced_custom_object(
                    GROUP, VERSION, namespace, "leaderboards", dict(body), _preload_content=False
                )
            )
    except errors.Conflict:
        return None


def patch_leaderboard_status(namespace: str, name: str, status: Mapping[str, Any]) -> bool:
    return _patch_status("leaderboards", namespace, name, status)


# -- children ------------------------------------------------------------------------------
def create(obj: Mapping[str, Any]) -> bool:
    """Creates a namespaced Job, ConfigMap, Secret or Service; False when it existed."""
    ns = obj["metadata"]["namespace"]
    kind = obj["kind"]
    body = dict(obj)
    creators = {
        "Job": _batch().create_namespaced_job,
        "ConfigMap": _core().create_namespaced_config_map,
        "Secret": _core().create_namespaced_secret,
        "Service": _core().create_namespaced_service,
    }
    if kind not in creators:
        raise ValueError(f"cannot create {kind}")
    try:
        with translated():
            _release(creators[kind](ns, body, _preload_content=False))
    except errors.Conflict:
        return False
    return True


def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    return _get(_batch().read_namespaced_job, name, namespace)


def list_jobs(namespace: str, selector: str) -> list[dict[str, Any]]:
    with translated():
        resp = _batch().list_namespaced_job(
            namespace, label_selector=selector, _preload_content=False
        )
        return list(_json(resp).get("items", []))


def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    with translated():
        resp = _core().list_namespaced_pod(
            namespace, label_selector=selector, _preload_content=False
        )
        return list(_json(resp).get("items", []))


def patch_job_suspend(namespace: str, name: str, suspend: bool) -> None:
    with translated():
        _release(
            _batch().patch_namespaced_job(
                name, namespace, {"spec": {"suspend": suspend}}, _preload_content=False
            )
        )


def delete_run_children(namespace: str, selector: str) -> int:
    """Deletes the Jobs (with their pods and token Secrets), ConfigMaps and Services
    matching ``selector``; returns how many Jobs were deleted."""
    body = client.V1DeleteOptions(propagation_policy="Background")
    core, batch = _core(), _batch()
    deleted = 0
    for job in list_jobs(namespace, selector):
        name = job["metadata"]["name"]
        deleted += _delete(batch.delete_namespaced_job, name, namespace, body=body)
        # By name: the operator may not list Secrets (least privilege). A token whose Job
        # is gone already is removed with the run (owner reference).
        delete_secret(namespace, f"{name}-token")
    for lister, deleter in (
        (core.list_namespaced_config_map, core.delete_namespaced_config_map),
        (core.list_namespaced_service, core.delete_namespaced_service),
    ):
        with translated():
            items = _json(lister(namespace, label_selector=selector, _preload_content=False))
        for item in items.get("items", []):
            _delete(deleter, item["metadata"]["name"], namespace)
    return deleted


def delete_secret(namespace: str, name: str) -> None:
    _delete(_core().delete_namespaced_secret, name, namespace)


# -- ConfigMaps ------------------------------------------------------------------------------
def read_config_map(namespace: str, name: str) -> dict[str, Any] | None:
    return _get(_core().read_namespaced_config_map, name, namespace)


def config_map_exists(namespace: str, name: str) -> bool:
    return _exists(_core().read_namespaced_config_map, name, namespace)


def create_config_map(namespace: str, body: Mapping[str, Any]) -> None:
    """Creates a ConfigMap; raises ``errors.Conflict`` when it exists."""
    with translated():
        _release(
            _core().create_namespaced_config_map(namespace, dict(body), _preload_content=False)
        )


def replace_config_map(namespace: str, name: str, body: Mapping[str, Any]) -> None:
    """Replaces a ConfigMap; with ``metadata.resourceVersion`` set, raises
    ``errors.Conflict`` when another writer replaced it first."""
    with translated():
        _release(
            _core().replace_namespaced_config_map(
                name, namespace, dict(body), _preload_content=False
            )
        )


def delete_config_map(namespace: str, name: str) -> None:
    _delete(_core().delete_namespaced_config_map, name, namespace)


def pvc_exists(namespace: str, name: str) -> bool:
    return _exists(_core().read_namespaced_persistent_volume_claim, name, namespace)


# -- Secrets (read by name only) -------------------------------------------------------------
def read_secret(namespace: str, name: str) -> dict[str, str] | None:
    """The Secret's data, decoded (None when it does not exist). One read for all keys;
    the values are for the caller only: never log them. A value that is not UTF-8 text
    is left out (a token or key is text)."""
    secret = _get(_core().read_namespaced_secret, name, namespace)
    if secret is None:
        return None
    out: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            continue
    return out


def secret_has_key(namespace: str, name: str, key: str) -> bool | None:
    """True/False when the Secret exists (with/without the key); None when it does not."""
    data = read_secret(namespace, name)
    return None if data is None else key in data


def read_secret_value(namespace: str, name: str, key: str) -> str | None:
    return (read_secret(namespace, name) or {}).get(key) or None


# -- Events ------------------------------------------------------------------------------------
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
        with translated():
            _release(
                _core().create_namespaced_event(meta["namespace"], body, _preload_content=False)
            )
    except errors.ApiError as exc:  # events are best effort
        log.warning("could not record event %s on %s: %s", reason, meta["name"], exc)
