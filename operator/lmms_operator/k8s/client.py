"""Requests to the API server: plain dicts in and out, errors as ``errors.ApiError``.

Requests are serialised by the client's ``ApiClient`` (configuration, credentials, TLS)
and answered as plain JSON: no generated API methods or models (see ``request``).
"Already exists" on create and "not found" on delete count as success.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from types import EllipsisType
from typing import Any
from urllib.parse import quote

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .. import errors
from ..api import GROUP, VERSION

log = logging.getLogger("lmms.k8s")


#: The namespace of the pod's service account, where a command runs in a pod.
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def current_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig's current context (or of ``context``), as kubectl
    picks it: ``default`` when the context names none; the pod's own namespace where
    there is no kubeconfig and the command runs in a pod."""
    try:
        contexts, current = config.list_kube_config_contexts(
            config_file=kubeconfig or os.environ.get("KUBECONFIG")
        )
    except (config.ConfigException, OSError, yaml.YAMLError, TypeError, ValueError, KeyError):
        try:
            with open(IN_CLUSTER_NAMESPACE) as fh:
                return fh.read().strip() or "default"
        except OSError:
            return "default"
    if context is not None:
        current = next((c for c in contexts or [] if c.get("name") == context), None)
    try:
        return str((current or {}).get("context", {}).get("namespace") or "default")
    except AttributeError:
        return "default"


#: The namespace of the pod's service account (in a cluster).
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def own_namespace() -> str:
    """Where this process runs: ``$POD_NAMESPACE``, else its service account's namespace
    (in a cluster), else the current kubeconfig context's."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            found = f.read().strip()
    except OSError:
        found = ""
    return found or current_namespace()


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
        raise errors.Unavailable(f"the API server did not answer: {_why(exc)}") from None


def _why(exc: BaseException) -> str:
    """Why a request got no answer, in one line: the error's type and, for a refused or
    failed connection, the system's words (``[Errno 111] Connection refused``)."""
    cause = getattr(exc, "reason", None) or exc
    words = str(cause).rsplit("Failed to establish a new connection: ", 1)
    detail = f" ({words[1]})" if len(words) == 2 else ""
    return " ".join(f"{type(exc).__name__}{detail}".split())[:300]


def _json(resp: Any) -> dict[str, Any]:
    try:
        return dict(json.loads(resp.data))
    finally:
        resp.release_conn()


def release(resp: Any) -> None:
    """Reads a response whose body is not needed, so that its connection goes back to
    the pool: an unread response keeps its connection, and the next request would open
    (and TLS-handshake) a new one."""
    try:
        resp.data  # noqa: B018 - reading is the point
    finally:
        resp.release_conn()


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
    "Lease": ("/apis/coordination.k8s.io/v1/namespaces/{ns}/{plural}", "leases"),
    "EvalRun": (f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{{plural}}", "evalruns"),
    "Leaderboard": (f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{{plural}}", "leaderboards"),
    "Workload": ("/apis/kueue.x-k8s.io/v1beta2/namespaces/{ns}/{plural}", "workloads"),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1/namespaces/{ns}/{plural}", "endpointslices"),
    "InferenceService": (
        "/apis/serving.kserve.io/v1beta1/namespaces/{ns}/{plural}",
        "inferenceservices",
    ),
}

#: The label Kueue puts on the Workload of a Job: the Job's uid.
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


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


#: The label by which a namespace's owners mark a Secret usable by EvalRuns.
USABLE_LABEL = "eval.lmms.dev/usable-by-evalruns"


class Api:
    """The operator's connection to the API server: one client (from the in-cluster
    account or the current kubeconfig, made on first use) and the requests the operator
    reads with. Made once per process and passed to what reads; ``k8s.writes.Writer``
    writes through it."""

    def __init__(
        self,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        kubeconfig_first: bool = False,
        timeout: float | tuple[float, float] = 60,
    ) -> None:
        """``kubeconfig_first`` (a command line, as kubectl): the kubeconfig (``kubeconfig``
        or ``$KUBECONFIG`` or ``~/.kube/config``, its ``context`` or current context),
        else the in-cluster account; otherwise (the operator) the in-cluster account
        first. ``timeout``: of each request (connect, read)."""
        self._lock = threading.Lock()
        self._client: client.ApiClient | None = None
        self._kubeconfig, self._context = kubeconfig, context
        self._kubeconfig_first = kubeconfig_first or kubeconfig is not None or context is not None
        self.timeout = timeout

    def client(self) -> client.ApiClient:
        """The client, made on first use (``$KUBECONFIG`` is read then, not at import).
        Raises ``errors.KubeconfigError`` when there is no cluster to talk to."""
        with self._lock:
            if self._client is None:
                if self._kubeconfig_first:
                    self._client = client.ApiClient(self._from_kubeconfig())
                    return self._client
                try:
                    config.load_incluster_config()
                except config.ConfigException:
                    config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
                cfg = client.Configuration.get_default_copy()
                cfg.connection_pool_maxsize = 32
                self._client = client.ApiClient(cfg)
            return self._client

    def _from_kubeconfig(self) -> Any:  # (a client.Configuration)
        cfg = type.__call__(client.Configuration)  # (a new one, not a copy of the default)
        path = self._kubeconfig or os.environ.get("KUBECONFIG")
        try:
            config.load_kube_config(
                config_file=path,
                context=self._context,
                client_configuration=cfg,
                persist_config=False,
            )
            return cfg
        except config.ConfigException as exc:
            problem = str(exc)
        except (OSError, yaml.YAMLError, TypeError, ValueError, AttributeError, KeyError) as exc:
            problem = f"{type(exc).__name__}: {exc}"  # unreadable, or not a kubeconfig
        if self._kubeconfig is None and self._context is None:
            try:  # no kubeconfig: the pod's own account, as kubectl does
                config.load_incluster_config(client_configuration=cfg)
                return cfg
            except config.ConfigException:
                pass
        where = path or "~/.kube/config"
        problem = " ".join(problem.split())
        raise errors.KubeconfigError(f"cannot use the kubeconfig {where}: {problem}")

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] | EllipsisType | None = ...,
    ) -> Any:
        """One request; returns the urllib3 response, body unread (the caller reads or
        streams it, then releases the connection). Raises ``errors.ApiError`` for any answer
        but 2xx. ``timeout``: of this request (default: the Api's).

        The generated API methods are not used: each validates its arguments with pydantic,
        which builds the schemas of the whole generated model tree on first use (measured:
        +110 MiB of RSS for one pod list).
        """
        client_ = self.client()
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
            response = client_.call_api(
                *serialized, _request_timeout=self.timeout if timeout is ... else timeout
            ).response
        if not 200 <= response.status < 300:
            try:
                raw = response.data
            finally:
                response.release_conn()
            raise _error(int(response.status), raw, response.reason)
        return response

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A request whose JSON answer is returned."""
        return _json(self.request(method, path, **kwargs))

    def _get(self, path: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.call("GET", path)
        except errors.NotFound:
            return None

    def _exists(self, path: str) -> bool:
        try:
            release(self.request("GET", path))
        except errors.NotFound:
            return False
        return True

    def get_evalrun(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(path("EvalRun", namespace, name))

    def list_evalruns(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return list(self.call("GET", path("EvalRun", namespace)).get("items", []))

    def get_leaderboard(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(path("Leaderboard", namespace, name))

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(path("Job", namespace, name))

    def get_lease(
        self, namespace: str, name: str, timeout: float | None = 60
    ) -> dict[str, Any] | None:
        try:
            return self.call("GET", path("Lease", namespace, name), timeout=timeout)
        except errors.NotFound:
            return None

    def list_objects(
        self, kind: str, namespace: str, selector: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The objects the selector finds (the first ``limit`` of them, where given)."""
        query = {"labelSelector": selector, "limit": limit}
        return list(self.call("GET", path(kind, namespace), query=query).get("items", []))

    def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self.list_objects("Job", namespace, selector)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self.list_objects("Pod", namespace, selector)

    def workload_of_job(
        self, namespace: str, job_uid: str, names: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        """The Kueue Workload of a Job (owned by the Job), or None: none yet, or Kueue's
        CRDs are not installed (404), or the operator may not read Workloads (403; the
        chart grants it). Read by the ``names`` Kueue gives it first (one object each),
        else selected by Kueue's job-uid label (a list: every Workload in the namespace
        is read on the server, so not the first choice where hundreds wait)."""

        def owned(item: dict[str, Any] | None) -> bool:
            refs = ((item or {}).get("metadata") or {}).get("ownerReferences") or []
            return any(r.get("uid") == job_uid for r in refs)

        try:
            for name in names:
                item = self._get(path("Workload", namespace, name))
                if item is not None and owned(item):
                    return item
            items = self.list_objects("Workload", namespace, f"{KUEUE_JOB_UID_LABEL}={job_uid}")
        except (errors.NotFound, errors.Forbidden):
            return None
        return next((item for item in items if owned(item)), None)

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(path("Service", namespace, name))

    def get_inference_service(
        self, namespace: str, name: str
    ) -> tuple[dict[str, Any] | None, str | None]:
        """A KServe InferenceService, or None with why it cannot be read: its API is not
        installed (the API server knows no such resource), or the operator may not read
        it (403: the chart grants it). None, None: it does not exist (yet)."""
        try:
            return self.call("GET", path("InferenceService", namespace, name)), None
        except errors.Forbidden:
            return None, "the operator may not read InferenceServices (see the chart's ClusterRole)"
        except errors.NotFound:
            pass
        try:  # a missing object, or a missing API: the group's discovery document tells
            release(self.request("GET", "/apis/serving.kserve.io/v1beta1"))
        except errors.NotFound:
            return None, "the InferenceService API (serving.kserve.io/v1beta1) is not installed"
        return None, None

    def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(path("ConfigMap", namespace, name))

    def list_config_maps(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self.list_objects("ConfigMap", namespace, selector)

    def config_map_exists(self, namespace: str, name: str) -> bool:
        return self._exists(path("ConfigMap", namespace, name))

    def pvc_exists(self, namespace: str, name: str) -> bool:
        return self._exists(path("PersistentVolumeClaim", namespace, name))

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data, decoded (None when it does not exist). One read for all keys;
        the values are for the caller only: never log them. A value that is not UTF-8 text
        is left out (a token or key is text)."""
        secret = self._get(path("Secret", namespace, name))
        if secret is None:
            return None
        out: dict[str, str] = {}
        for key, value in (secret.get("data") or {}).items():
            try:
                out[key] = base64.b64decode(value).decode()
            except (binascii.Error, UnicodeDecodeError, TypeError):
                continue
        return out

    def read_tenant_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """The raw values of a Secret that a tenant's resource names, or None when it is not
        usable: missing, or not labelled ``eval.lmms.dev/usable-by-evalruns: "true"``. The
        two cases read alike, so that a run learns nothing about Secrets it may not use."""
        secret = self._get(path("Secret", namespace, name))
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

    def read_secret_value(self, namespace: str, name: str, key: str) -> str | None:
        return (self.read_secret(namespace, name) or {}).get(key) or None
