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
- any other error backs off (exponential with jitter, capped) and retries; the backoff
  starts over once the API server has answered again (a new outage);
- pages and events are decoded item by item when they must be (``jsonsplit``): an
  object that cannot be decoded (nested deeper than the decoder recurses) fails only
  itself. It is skipped, and the sink is told what its metadata says (``undecodable``);
- a sink that fails on one event (or one page) fails only that: it is logged (the
  object's kind and identity, never its content) and the informer goes on past it,
  rather than replaying it for ever.

The informer keeps no copy of the objects: its sink decides what to keep, and how little.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .. import errors
from . import jsonsplit
from .client import path

log = logging.getLogger("lmms.watch")


class Sink(Protocol):
    """Where an informer delivers what it sees. Called from the informer's thread."""

    def relisting(self, scope: str | None) -> None:
        """A (re)list of ``scope`` (a namespace, or None: all) begins."""

    def listed(self, scope: str | None, objects: list[dict[str, Any]], final: bool) -> None:
        """One page of a (re)list; ``final`` on the last page of it."""

    def event(self, type_: str, obj: dict[str, Any]) -> None:
        """ADDED, MODIFIED or DELETED, in the order the API server sent them."""

    def undecodable(self, kind: str, meta: dict[str, Any], reason: str) -> None:
        """An object of ``kind`` that cannot be decoded was skipped: ``meta`` holds what
        could be read of its metadata (``jsonsplit.META_FIELDS``, possibly none)."""


class Informer:
    """Keeps ``sink`` told about every object of ``kind`` (in ``namespace``, or all) that
    matches ``label_selector``. ``fetch`` makes the requests (``k8s.Api.request``)."""

    PAGE = 250
    WATCH_TIMEOUT = 300  # server-side; the client gives it 30 s more before giving up
    BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0

    def __init__(
        self,
        kind: str,
        sink: Sink,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        fetch: Callable[..., Any],
    ) -> None:
        self.kind = kind
        self.fetch = fetch
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
            target=self._run, name=f"informer-{kind}-{namespace or 'all'}", daemon=True
        )

    def __repr__(self) -> str:
        return f"Informer({self.kind}, {self.namespace or '*'}, {self.label_selector!r})"

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
    def _call(self, query: dict[str, Any], timeout: tuple[float, float]) -> Any:
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        return self.fetch("GET", path(self.kind, self.namespace), query=query, timeout=timeout)

    def _run(self) -> None:
        backoff = self.BACKOFF_MIN
        while not self._stop.is_set():
            answered = self.last_contact
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
                if self.last_contact != answered:
                    # The API server answered since the last failure: this is a new
                    # outage, and its backoff starts over. (Else, after a few restarts
                    # of the API server, the informer would stay blind for up to
                    # BACKOFF_MAX after each one is back.)
                    backoff = self.BACKOFF_MIN
                delay = backoff * (0.5 + random.random())
                log.warning("%r failed (%s); retrying in %.1fs", self, _describe(exc), delay)
                self._stop.wait(delay)
                backoff = min(self.BACKOFF_MAX, backoff * 2)

    def _list(self) -> str:
        """Lists page by page, delivering each page; returns the list's resourceVersion."""
        cont: str | None = None
        self._deliver("a relist", {}, self.sink.relisting, self.namespace)
        while True:
            query: dict[str, Any] = {"limit": self.PAGE}
            if cont:
                query["continue"] = cont
            response = self._call(query, (30, 120))
            try:
                page = jsonsplit.page(response.data)
            finally:
                response.release_conn()
            self.last_contact = time.monotonic()
            cont = page.meta.get("continue") or None
            # A list's items carry no kind: set it, the sink may rely on it.
            kind = page.kind.removesuffix("List") or self.kind
            for item in page.items:
                item.setdefault("kind", kind)
            for bad in page.undecodable:
                self._undecodable(bad)
            self._deliver("a page", {}, self.sink.listed, self.namespace, page.items, cont is None)
            meta = page.meta
            del page
            if cont is None:
                return str(meta.get("resourceVersion") or "")

    def _watch(self, version: str) -> str:
        """Watches from ``version`` until the server ends the stream; returns the last
        resourceVersion seen. Raises errors.Gone when ``version`` is too old."""
        query = {
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": self.WATCH_TIMEOUT,
        }
        response = self._call(query, (30, self.WATCH_TIMEOUT + 30))
        self._response = response
        self.last_contact = time.monotonic()
        try:
            for line in _lines(response):
                if self._stop.is_set():
                    break
                self.last_contact = time.monotonic()
                version = self._event(line, version)
        finally:
            self._response = None
            response.release_conn()
        return version

    def _event(self, line: bytes, version: str) -> str:
        """Delivers one watch event; returns the resourceVersion to resume from. A line
        that cannot be decoded is skipped (and an undecodable object reported): the watch
        goes on."""
        try:
            type_, obj = jsonsplit.event(line)
        except ValueError as exc:
            log.warning("%r: skipped a watch line that is not an event: %s", self, exc)
            return version
        if isinstance(obj, jsonsplit.Undecodable):
            if type_ == "DELETED":  # what the sink needs of a deleted object: its metadata
                gone = {"kind": self.kind, "metadata": dict(obj.meta)}
                self._deliver(type_, obj.meta, self.sink.event, type_, gone)
            elif type_ in ("ADDED", "MODIFIED"):
                self._undecodable(obj, type_)
            rv = obj.meta.get("resourceVersion")
        else:
            if type_ == "ERROR":
                code = int(obj.get("code") or 0)
                raise errors.api_error(code, str(obj.get("message") or "watch error"))
            meta = obj.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            rv = meta.get("resourceVersion")
            if type_ in ("ADDED", "MODIFIED", "DELETED"):
                self._deliver(type_, meta, self.sink.event, type_, obj)
        if rv:
            # Kept as it goes: a watch that breaks resumes from here.
            version = self.version = str(rv)
        return version

    def _deliver(self, what: str, meta: Any, call: Callable[..., None], *args: Any) -> None:
        """``call(*args)`` into the sink; a failure is logged and passed over, so that
        the informer does not replay what made it fail for ever (its resourceVersion
        would advance only after). The log names the object, never its content."""
        try:
            call(*args)
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            log.error(
                "%r: the sink failed on %s %s/%s (uid %s): %s at %s:%s; going on without it",
                self,
                what,
                *(_ident(meta.get(key)) for key in ("namespace", "name", "uid")),
                type(exc).__name__,  # not its message, which may quote the object
                where.filename.rpartition("/")[2],
                where.lineno,
            )

    def _undecodable(self, bad: jsonsplit.Undecodable, type_: str = "LISTED") -> None:
        meta = bad.meta
        log.warning(
            "%r: skipped %s %s/%s (uid %s): %s",
            self,
            type_,
            meta.get("namespace", "?"),
            meta.get("name", "?"),
            meta.get("uid", "?"),
            bad.reason,
        )
        try:
            self.sink.undecodable(self.kind, dict(meta), bad.reason)
        except Exception:
            log.exception("%r: the sink failed on an undecodable object", self)


def _lines(response: Any) -> Iterator[bytes]:
    """The lines of a streamed response, as they arrive. Linear in the stream: a long
    line is kept as a list of chunks and joined once, when its end arrives."""
    parts: list[bytes] = []
    for chunk in response.stream(64 * 1024, decode_content=True):
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                break
            line = b"".join([*parts, chunk[start:newline]])
            parts = []
            start = newline + 1
            if line.strip():
                yield line
        if start < len(chunk):
            parts.append(chunk[start:])
    rest = b"".join(parts)
    if rest.strip():
        yield rest


def _ident(value: Any) -> str:
    """A name, namespace or uid as it may be logged: a short string, nothing else."""
    return str(value)[:253] if isinstance(value, str | int) else "?"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, errors.ApiError):
        return f"{type(exc).__name__} {exc.status}: {exc.message}"
    return type(exc).__name__
