"""Informers: list, then watch from the list's resourceVersion, selected on the server.

Kopf lists and watches whole resources and filters in the process, so another tenant's
pods would be received, decoded and remembered. An informer here asks the API server
for the objects matching a label selector only (``labelSelector=``): what is not ours
never reaches the process. Each informer is one thread:

- the list is paged (``limit``), so a large result is never decoded at once;
- the watch starts at the list's resourceVersion with bookmarks, so a reconnect resumes
  where it stopped without a relist;
- ``410 Gone`` (the resourceVersion is too old) relists, and the sink is told which
  objects the new list holds, so that objects deleted meanwhile are dropped;
- any other error backs off (exponential with jitter, capped) and retries.

The informer keeps no copy of the objects: its sink decides what to keep, and how little.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client

from .. import errors
from ..api import GROUP, VERSION
from .client import api, translated

log = logging.getLogger("lmms.watch")


class Sink(Protocol):
    """Where an informer delivers what it sees. Called from the informer's thread."""

    def listed(self, scope: str | None, objects: list[dict[str, Any]], final: bool) -> None:
        """One page of a (re)list; ``final`` on the last page of it."""

    def event(self, type_: str, obj: dict[str, Any]) -> None:
        """ADDED, MODIFIED or DELETED, in the order the API server sent them."""


@dataclass(frozen=True)
class Resource:
    """A listable resource: how to list it in all namespaces and in one."""

    name: str
    list_all: Callable[..., Any]
    list_namespaced: Callable[..., Any]


def pods() -> Resource:
    core = client.CoreV1Api(api())
    return Resource("pods", core.list_pod_for_all_namespaces, core.list_namespaced_pod)


def jobs() -> Resource:
    batch = client.BatchV1Api(api())
    return Resource("jobs", batch.list_job_for_all_namespaces, batch.list_namespaced_job)


def evalruns() -> Resource:
    co = client.CustomObjectsApi(api())

    def all_(**kw: Any) -> Any:
        return co.list_cluster_custom_object(GROUP, VERSION, "evalruns", **kw)

    def namespaced(namespace: str, **kw: Any) -> Any:
        return co.list_namespaced_custom_object(GROUP, VERSION, namespace, "evalruns", **kw)

    return Resource("evalruns", all_, namespaced)


class Informer:
    """Keeps ``sink`` told about every object of ``resource`` (in ``namespace``, or all)
    that matches ``label_selector``."""

    PAGE = 250
    WATCH_TIMEOUT = 300  # server-side; the client gives it 30 s more before giving up
    BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0

    def __init__(
        self,
        resource: Resource,
        sink: Sink,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> None:
        self.resource = resource
        self.sink = sink
        self.namespace = namespace
        self.label_selector = label_selector
        self.synced = threading.Event()  # set once the first list is delivered
        self.last_contact = 0.0  # monotonic time of the last answer from the API server
        self.relists = 0
        #: Where the watch resumes; None: list first.
        self.version: str | None = None
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"informer-{resource.name}-{namespace or 'all'}", daemon=True
        )

    def __repr__(self) -> str:
        return f"Informer({self.resource.name}, {self.namespace or '*'}, {self.label_selector!r})"

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()  # urllib3 2: unblocks a read in progress
            except Exception:
                response.close()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- the loop ------------------------------------------------------------------------
    def _call(self, **kwargs: Any) -> Any:
        if self.label_selector:
            kwargs["label_selector"] = self.label_selector
        if self.namespace:
            return self.resource.list_namespaced(self.namespace, _preload_content=False, **kwargs)
        return self.resource.list_all(_preload_content=False, **kwargs)

    def _run(self) -> None:
        backoff = self.BACKOFF_MIN
        while not self._stop.is_set():
            try:
                if self.version is None:
                    self.version = self._list()
                    self.relists += 1
                    self.synced.set()
                self.version = self._watch(self.version)
                backoff = self.BACKOFF_MIN
            except errors.Gone:
                log.info("%r: resourceVersion %s expired; relisting", self, self.version)
                self.version = None
            except Exception as exc:
                if self._stop.is_set():
                    return
                delay = backoff * (0.5 + random.random())
                log.warning("%r failed (%s); retrying in %.1fs", self, _describe(exc), delay)
                self._stop.wait(delay)
                backoff = min(self.BACKOFF_MAX, backoff * 2)

    def _list(self) -> str:
        """Lists page by page, delivering each page; returns the list's resourceVersion."""
        cont: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.PAGE, "_request_timeout": (30, 120)}
            if cont:
                kwargs["_continue"] = cont
            with translated():
                response = self._call(**kwargs)
                try:
                    page = json.loads(response.data)
                finally:
                    response.release_conn()
            self.last_contact = time.monotonic()
            meta = page.get("metadata") or {}
            cont = meta.get("continue") or None
            items = page.get("items") or []
            # A list's items carry no kind: set it, the sink may rely on it.
            kind = str(page.get("kind", "")).removesuffix("List")
            for item in items:
                item.setdefault("kind", kind)
            del page
            self.sink.listed(self.namespace, items, final=cont is None)
            if cont is None:
                return str(meta.get("resourceVersion") or "")

    def _watch(self, version: str) -> str:
        """Watches from ``version`` until the server ends the stream; returns the last
        resourceVersion seen. Raises errors.Gone when ``version`` is too old."""
        with translated():
            response = self._call(
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=self.WATCH_TIMEOUT,
                _request_timeout=(30, self.WATCH_TIMEOUT + 30),
            )
        self._response = response
        self.last_contact = time.monotonic()
        try:
            for line in _lines(response):
                if self._stop.is_set():
                    break
                self.last_contact = time.monotonic()
                event = json.loads(line)
                type_, obj = event.get("type"), event.get("object") or {}
                if type_ == "ERROR":
                    code = int(obj.get("code") or 0)
                    raise errors.api_error(code, str(obj.get("message") or "watch error"))
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if type_ in ("ADDED", "MODIFIED", "DELETED"):
                    self.sink.event(type_, obj)
                if rv:
                    version = str(rv)
        finally:
            self._response = None
            response.release_conn()
        return version


def _lines(response: Any) -> Iterator[bytes]:
    """The lines of a streamed response, as they arrive."""
    buffer = b""
    for chunk in response.stream(64 * 1024, decode_content=True):
        buffer += chunk
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            line, buffer = buffer[:newline], buffer[newline + 1 :]
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _describe(exc: BaseException) -> str:
    if isinstance(exc, errors.ApiError):
        return f"{type(exc).__name__} {exc.status}: {exc.message}"
    return type(exc).__name__
