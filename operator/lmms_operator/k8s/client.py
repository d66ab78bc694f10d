"""Requests to the API server: plain dicts in and out, errors as ``errors.ApiError``.

Requests are serialised by the client's ``ApiClient`` (configuration, credentials, TLS)
and answered as plain JSON: no generated API methods or models (see ``request``).
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
from urllib.parse import quote

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .. import errors
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


def current_namespace() -> str:
    """The namespace of the current kubeconfig context (``default`` when it names none)."""
    try:
        _, context = config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG"))
        return str((context or {}).get("context", {}).get("namespace") or "default")
    except (config.ConfigException, TypeError, OSError):
        return "default"


def _error(status: int, body: Any, reason: str | None) -> errors.ApiError:
    """The ApiError for an answer: the API server's own message (it names the field) and
    reason, not the HTTP dump."""
    try:
        doc = json.loads(body)
        message, why = str(doc.get("message") or reason), str(doc.get("reason") or "")
    except (TypeError, ValueError, AttributeError):
        message, why = str(reason), ""
    return errors.api_error(status, message, why)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turns the client library's exceptions into ``errors.ApiError``."""
    try:
        yield
    except ApiException as exc:
        raise _error(int(exc.status or 0), exc.body, exc.reason) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise errors.Unavailable(f"the API server did not answer: {type(exc).__name__}") from None


def request(
    method: str,
    path: str,
    *,
    query: Mapping[str, Any] | None = None,
    body: Any = None,
    content_type: str = "application/json",
    timeout: float | tuple[float, float] | None = 60,
) -> Any:
    """One request; returns the urllib3 response, body unread (the caller reads or
    streams it, then releases the connection). Raises ``errors.ApiError`` for any answer
    but 2xx.

    The generated API methods are not used: each validates its arguments with pydantic,
    which builds the schemas of the whole generated model tree on first use (measured:
    +110 MiB of RSS for one pod list).
    """
    client_ = api()
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    params = [(k, v) for k, v in (query or {}).items() if v is not None]
    with translated():
        serialized = client_.param_serialize(
            method=method,
            resource_path=path,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = client_.call_api(*serialized, _request_timeout=timeout).response
    if not 200 <= response.status < 300:
        try:
            raw = response.data
        finally:
            response.release_conn()
        raise _error(int(response.status), raw, response.reason)
    return response


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


def call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """A request whose JSON answer is returned."""
    return _json(request(method, path, **kwargs))


def _get(path: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        return call("GET", path)
    except errors.NotFound:
        return None


def _exists(path: str) -> bool:
    try:
        _release(request("GET", path))
    except errors.NotFound:
        return False
    return True


def _delete(path: str, **query: Any) -> bool:
    """Deletes; False when it was not there."""
    try:
        _release(request("DELETE", path, query=query))
    except errors.NotFound:
        return False
    return True


def _create(path: str, body: Mapping[str, Any]) -> bool:
    """Creates; False when it existed already."""
    try:
        _release(request("POST", path, body=dict(body)))
    except errors.Conflict:
        return False
    return True


#: Paths of the resources the operator uses, by kind (namespaced collection).
_CORE = "/api/v1/namespaces/{ns}/{plural}"
_PLURALS = {
    "ConfigMap": (_CORE, "configmaps"),
    "Secret": (_CORE, "secrets"),
    "Service": (_CORE, "services"),
    "Pod": (_CORE, "pods"),
    "PersistentVolumeClaim": (_CORE, "persistentvolumeclaims"),
    "Event": (_CORE, "events"),
    "Job": ("/apis/batch/v1/namespaces/{ns}/{plural}", "jobs"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1/namespaces/{ns}/{plural}", "networkpolicies"),
    "EvalRun": (f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{{plural}}", "evalruns"),
    "Leaderboard": (f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{{plural}}", "leaderboards"),
}


def path(kind: str, namespace: str | None, name: str | None = None, sub: str = "") -> str:
    """The API path of a collection (``name`` None) or an object, in a namespace or, for
    a collection, in all namespaces (``namespace`` None)."""
    template, plural = _PLURALS[kind]
    if namespace is None:
        base = template.split("/namespaces/")[0] + f"/{plural}"
    else:
        base = template.format(ns=quote(namespace, safe=""), plural=plural)
    if name is not None:
        base += "/" + quote(name, safe="")
    return base + (f"/{sub}" if sub else "")


MERGE_PATCH = "application/merge-patch+json"


# -- EvalRuns and Leaderboards ------------------------------------------------------------
def get_evalrun(namespace: str, name: str) -> dict[str, Any] | None:
    return _get(path("EvalRun", namespace, name))


def _patch_status(kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
    """Merge-patches the status subresource; False when the object is gone."""
    try:
        _release(
            request(
                "PATCH",
                path(kind, namespace, name, "status"),
                body={"status": dict(status)},
                content_type=MERGE_PATCH,
            )
        )
    except errors.NotFound:
        return False  # deleted meanwhile: nothing to report on
    return True


def patch_evalrun_status(namespace: str, name: str, status: Mapping[str, Any]) -> bool:
    return _patch_status("EvalRun", namespace, name, status)


def list_evalruns(namespace: str | None = None) -> list[dict[str, Any]]:
    return list(call("GET", path("EvalRun", namespace)).get("items", []))


def get_leaderboard(namespace: str, name: str) -> dict[str, Any] | None:
    return _get(path("Leaderboard", namespace, name))


def create_leaderboard(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """Creates a Leaderboard; None when one of that name exists already."""
    try:
        return call("POST", path("Leaderboard", body["metadata"]["namespace"]), body=dict(body))
    except errors.Conflict:
        return None


def patch_leaderboard_status(namespace: str, name: str, status: Mapping[str, Any]) -> bool:
    return _patch_status("Leaderboard", namespace, name, status)


# -- children ------------------------------------------------------------------------------
def create(obj: Mapping[str, Any]) -> bool:
    """Creates a namespaced Job, ConfigMap, Secret, Service or NetworkPolicy; False when
    it existed."""
    kind = obj["kind"]
    if kind not in ("Job", "ConfigMap", "Secret", "Service", "NetworkPolicy"):
        raise ValueError(f"cannot create {kind}")
    return _create(path(kind, obj["metadata"]["namespace"]), obj)


def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    return _get(path("Job", namespace, name))


def _list(kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
    return list(
        call("GET", path(kind, namespace), query={"labelSelector": selector}).get("items", [])
    )


def list_jobs(namespace: str, selector: str) -> list[dict[str, Any]]:
    return _list("Job", namespace, selector)


def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    return _list("Pod", namespace, selector)


def patch_job_suspend(namespace: str, name: str, suspend: bool) -> None:
    _release(
        request(
            "PATCH",
            path("Job", namespace, name),
            body={"spec": {"suspend": suspend}},
            content_type=MERGE_PATCH,
        )
    )


def delete_run_children(namespace: str, selector: str) -> int:
    """Deletes the Jobs (with their pods and token Secrets), ConfigMaps, Services and
    NetworkPolicies matching ``selector``; returns how many Jobs were deleted."""
    deleted = 0
    for job in list_jobs(namespace, selector):
        name = job["metadata"]["name"]
        deleted += _delete(path("Job", namespace, name), propagationPolicy="Background")
        # By name: the operator may not list Secrets (least privilege). A token whose Job
        # is gone already is removed with the run (owner reference).
        delete_secret(namespace, f"{name}-token")
    for kind in ("ConfigMap", "Service", "NetworkPolicy"):
        for item in _list(kind, namespace, selector):
            _delete(path(kind, namespace, item["metadata"]["name"]))
    return deleted


def delete_secret(namespace: str, name: str) -> None:
    _delete(path("Secret", namespace, name))


# -- ConfigMaps ------------------------------------------------------------------------------
def read_config_map(namespace: str, name: str) -> dict[str, Any] | None:
    return _get(path("ConfigMap", namespace, name))


def list_config_maps(namespace: str, selector: str) -> list[dict[str, Any]]:
    return _list("ConfigMap", namespace, selector)


def config_map_exists(namespace: str, name: str) -> bool:
    return _exists(path("ConfigMap", namespace, name))


def create_config_map(namespace: str, body: Mapping[str, Any]) -> None:
    """Creates a ConfigMap; raises ``errors.Conflict`` when it exists."""
    _release(request("POST", path("ConfigMap", namespace), body=dict(body)))


def replace_config_map(namespace: str, name: str, body: Mapping[str, Any]) -> None:
    """Replaces a ConfigMap; with ``metadata.resourceVersion`` set, raises
    ``errors.Conflict`` when another writer replaced it first."""
    _release(request("PUT", path("ConfigMap", namespace, name), body=dict(body)))


def delete_config_map(namespace: str, name: str) -> None:
    _delete(path("ConfigMap", namespace, name))


def pvc_exists(namespace: str, name: str) -> bool:
    return _exists(path("PersistentVolumeClaim", namespace, name))


# -- Secrets (read by name only) -------------------------------------------------------------
def read_secret(namespace: str, name: str) -> dict[str, str] | None:
    """The Secret's data, decoded (None when it does not exist). One read for all keys;
    the values are for the caller only: never log them. A value that is not UTF-8 text
    is left out (a token or key is text)."""
    secret = _get(path("Secret", namespace, name))
    if secret is None:
        return None
    out: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            continue
    return out


#: The label by which a namespace's owners mark a Secret usable by EvalRuns.
USABLE_LABEL = "eval.lmms.dev/usable-by-evalruns"


def read_tenant_secret(namespace: str, name: str) -> dict[str, bytes] | None:
    """The raw values of a Secret that a tenant's resource names, or None when it is not
    usable: missing, or not labelled ``eval.lmms.dev/usable-by-evalruns: "true"``. The
    two cases read alike, so that a run learns nothing about Secrets it may not use."""
    secret = _get(path("Secret", namespace, name))
    labels = ((secret or {}).get("metadata") or {}).get("labels") or {}
    if secret is None or labels.get(USABLE_LABEL) != "true":
        return None
    out: dict[str, bytes] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value)
        except (binascii.Error, TypeError):
            continue
    return out


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
        _release(request("POST", path("Event", meta["namespace"]), body=body))
    except errors.ApiError as exc:  # events are best effort
        log.warning("could not record event %s on %s: %s", reason, meta["name"], exc)
