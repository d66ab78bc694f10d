"""What the operator remembers about runs: the *active* runs only (not finished, or
finished but edited since), and the Jobs and pods of those runs, each trimmed to the
fields the code reads. A finished run is dropped as soon as the watch shows it finished:
it costs a phase count in the metrics and no periodic work. What is remembered per run
(``RunMemory``: what this process wrote, its token, scrape timing, tries) goes with it.

Informers (``k8s.Informer``) fill the store from their threads: EvalRuns, and the Jobs
and pods carrying the operator's managed-by label, selected on the API server, so that
another tenant's objects never reach the process. ``on_run(uid, observe_only)`` is told
of every change that may need a pass.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import errors, k8s, leaderboards
from .metrics import Metrics
from .reconcile import job as jobs
from .reconcile import reasons as R

MANAGED_SELECTOR = f"{jobs.LABEL_MANAGED_BY}={jobs.MANAGED_BY}"
log = logging.getLogger("lmms.store")


# -- trimming: what the code reads of each object ------------------------------------------
def _fields(obj: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """Those of the object's metadata fields that it has."""
    meta = obj.get("metadata") or {}
    return {k: meta[k] for k in keys if k in meta}


def trim_run(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An active EvalRun without managedFields and annotations."""
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": "EvalRun",
        "metadata": _fields(
            obj,
            "name",
            "namespace",
            "uid",
            "generation",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "labels",
        ),
        "spec": obj.get("spec") or {},
        "status": obj.get("status") or {},
    }


def trim_job(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A Job: its name, labels, whether it is suspended, its status."""
    return {
        "kind": "Job",
        "metadata": _fields(
            obj, "name", "namespace", "uid", "labels", "creationTimestamp", "ownerReferences"
        ),
        "spec": {"suspend": (obj.get("spec") or {}).get("suspend")},
        "status": obj.get("status") or {},
    }


def trim_pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A pod: its name, labels, node, container images and status."""
    spec = obj.get("spec") or {}
    return {
        "kind": "Pod",
        "metadata": _fields(obj, "name", "namespace", "uid", "labels", "creationTimestamp"),
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": [
                {"name": c.get("name"), "image": c.get("image")}
                for c in spec.get("containers") or []
            ],
        },
        "status": obj.get("status") or {},
    }


def keep(run: Mapping[str, Any]) -> bool:
    """Whether a run needs the operator: not finished, or its spec changed since.
    A finished run is a record; the operator holds nothing for it."""
    pending = _pending_spec(run)
    if pending is not None:
        return pending
    return (run.get("status") or {}).get("phase") not in R.TERMINAL


def _pending_spec(run: Mapping[str, Any]) -> bool | None:
    """False for a run being deleted; True when the status does not reflect the spec's
    generation; None otherwise."""
    meta = run.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    status = run.get("status") or {}
    return True if status.get("observedGeneration") != meta.get("generation", 1) else None


# -- the store --------------------------------------------------------------------------------
@dataclass
class RunMemory:
    """What this process remembers about one active run; it goes with the run."""

    body: dict[str, Any]
    written: dict[str, Any] = field(default_factory=dict)  # fresher than the watch
    written_generation: int | None = None
    waiting: tuple[int, float] | None = None  # (generation, since) waiting for references
    token: str | None = None  # the runner's token, once read (for /results and /ack)
    unanswered_since: float | None = None  # monotonic time of the first failed scrape
    next_scrape: float = 0.0  # monotonic time the next scrape is due
    follow_ups: int = 0  # follow-up scrapes in a row (progress.follow_up)
    publish_failures: int = 0  # Leaderboard publishes that failed in a row


class Store:
    """Active runs and their children; fed by the informers (from their threads)."""

    REPORTED = 4096  # undecodable objects remembered as told (bounded)

    def __init__(
        self,
        metrics: Metrics,
        on_run: Callable[[str, bool], None],
        on_gone: Callable[[str], None] = lambda _uid: None,
        on_undecodable: Callable[[str, dict[str, Any], str], None] = lambda *_: None,
    ) -> None:
        self._lock = threading.RLock()
        self.runs: dict[str, RunMemory] = {}
        # run uid -> kind ("jobs", "pods") -> name -> trimmed object
        self.children: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        self.metrics = metrics
        self._on_run = on_run  # (uid, observe_only) -> schedule work
        self._on_gone = on_gone  # uid -> nothing is held for the run any longer
        # (kind, metadata, why) -> an object that cannot be read was skipped
        self._on_undecodable = on_undecodable
        self._reported: dict[tuple[str, str, object], None] = {}  # told already, in order
        self._listing: dict[tuple[str, str | None], set[Any]] = {}

    def run_sink(self) -> _Sink:
        return _Sink(self, "evalruns")

    def child_sink(self, kind: str) -> _Sink:
        return _Sink(self, kind)

    # -- EvalRuns ---------------------------------------------------------------------------
    def _run_seen(self, obj: Mapping[str, Any]) -> str | None:
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if not uid:
            return None
        status = obj.get("status") or {}
        self.metrics.seen(uid, str(meta.get("namespace") or ""), status.get("phase"))
        with self._lock:
            if keep(obj):
                entry = self.runs.get(uid)
                if entry is None:
                    self.runs[uid] = RunMemory(trim_run(obj))
                else:
                    entry.body = trim_run(obj)
                return uid
            self._forget(uid)
        return None

    def _run_deleted(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        entry = self.entry(uid)
        if entry is not None and (entry.body.get("status") or {}).get("phase") in R.ACTIVE:
            # Deleted while active: its pods held GPUs all the same.
            job_name = (entry.body.get("status") or {}).get("jobName")
            pods = self.pods_of(uid, job_name) if job_name else []
            self.metrics.count_gpu_seconds(entry.body, pods)
        self.metrics.deleted(uid, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        with self._lock:
            self._forget(uid)

    def _forget(self, uid: str) -> None:
        """Everything held for a run goes: its body, caches and children."""
        self.runs.pop(uid, None)
        self.children.pop(uid, None)
        self._on_gone(uid)

    def get(self, uid: str) -> dict[str, Any] | None:
        """The run with what this process wrote since the watch last showed it; marked
        ``_stale`` when the watch lags behind a generation already handled."""
        with self._lock:
            entry = self.runs.get(uid)
            if entry is None:
                return None
            run = dict(entry.body)
            written = dict(entry.written)
            generation = entry.written_generation
        meta = run["metadata"]
        if generation is not None and generation > meta.get("generation", 1):
            run["_stale"] = True
        if generation == meta.get("generation", 1) and written:
            status = dict(run.get("status") or {})
            status.update(written)
            run["status"] = {k: v for k, v in status.items() if v is not None}
        return run

    def remember(self, uid: str, generation: int, fields: Mapping[str, Any]) -> None:
        with self._lock:
            entry = self.runs.get(uid)
            if entry is None:
                return
            if entry.written_generation != generation:
                entry.written = {}
                entry.written_generation = generation
            entry.written.update(fields)

    def uids(self) -> list[str]:
        with self._lock:
            return list(self.runs)

    def entry(self, uid: str) -> RunMemory | None:
        with self._lock:
            return self.runs.get(uid)

    # -- children ------------------------------------------------------------------------------
    @staticmethod
    def _owner_uid(obj: Mapping[str, Any]) -> str:
        return str(((obj.get("metadata") or {}).get("labels") or {}).get(jobs.LABEL_RUN_UID, ""))

    def _child_seen(self, kind: str, obj: Mapping[str, Any]) -> str | None:
        uid = self._owner_uid(obj)
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        with self._lock:
            entry = self.runs.get(uid)
            if entry is None:
                return None  # a finished run's child: nothing to decide about it
            if not _belongs(obj, entry.body, kind):
                return None  # labels anyone can write; the namespace and owner are checked
            trimmed = trim_job(obj) if kind == "jobs" else trim_pod(obj)
            self.children.setdefault(uid, {}).setdefault(kind, {})[name] = trimmed
            return uid

    def _child_deleted(self, kind: str, obj: Mapping[str, Any]) -> str | None:
        uid = self._owner_uid(obj)
        name = (obj.get("metadata") or {}).get("name", "")
        with self._lock:
            (self.children.get(uid) or {}).get(kind, {}).pop(name, None)
            return uid if uid in self.runs else None

    def job(self, uid: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return (self.children.get(uid) or {}).get("jobs", {}).get(name)

    def pods_of(self, uid: str, job_name: str) -> list[dict[str, Any]]:
        with self._lock:
            pods = list((self.children.get(uid) or {}).get("pods", {}).values())
        return [p for p in pods if p["metadata"].get("labels", {}).get("job-name") == job_name]

    # -- relists: what a new list does not hold is gone ------------------------------------
    def relisting(self, kind: str, scope: str | None) -> None:
        self._listing[(kind, scope)] = set()

    def listed(
        self, kind: str, scope: str | None, objects: list[dict[str, Any]], final: bool
    ) -> None:
        seen = self._listing.setdefault((kind, scope), set())
        touched: list[tuple[str, bool]] = []
        for obj in objects:
            meta = obj.get("metadata") or {}
            try:
                uid = self._run_seen(obj) if kind == "evalruns" else self._child_seen(kind, obj)
            except Exception as exc:  # one object's fault: the page goes on without it
                self.undecodable(kind, _meta_fields(meta), f"cannot be read ({exc!r:.200})")
                continue
            seen.add(meta.get("uid"))
            if uid:
                touched.append((uid, kind != "evalruns"))
        if final:
            self._prune(kind, scope, self._listing.pop((kind, scope), set()))
        for uid, observe_only in touched:
            try:  # one run's fault does not leave the others of the page unscheduled
                self._on_run(uid, observe_only)
            except Exception as exc:
                log.error("scheduling run %s failed: %s", uid, type(exc).__name__)

    def _prune(self, kind: str, scope: str | None, seen: set[Any]) -> None:
        def in_scope(obj: Mapping[str, Any]) -> bool:
            return scope is None or obj["metadata"].get("namespace") == scope

        with self._lock:
            if kind == "evalruns":
                self.metrics.retain(scope, {u for u in seen if u})
                gone = [u for u, e in self.runs.items() if u not in seen and in_scope(e.body)]
                for uid in gone:
                    self._forget(uid)
                return
            for kinds in self.children.values():
                objects = kinds.get(kind, {})
                uids = {n: o["metadata"].get("uid") for n, o in objects.items() if in_scope(o)}
                for name in [n for n, uid in uids.items() if uid not in seen]:
                    del objects[name]

    def event(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        if kind == "evalruns":
            if type_ == "DELETED":
                self._run_deleted(obj)
                return
            uid = self._run_seen(obj)
            if uid:
                self._on_run(uid, False)
            return
        uid = self._child_deleted(kind, obj) if type_ == "DELETED" else self._child_seen(kind, obj)
        if uid:
            self._on_run(uid, True)

    def undecodable(self, kind: str, meta: dict[str, Any], reason: str) -> None:
        """An object that cannot be read was skipped: what is held for it goes (its spec is
        no longer known); it is counted and ``on_undecodable`` told once per generation
        (a status written about it comes back as an event, undecodable again)."""
        uid = str(meta.get("uid") or "")
        key = (kind, uid, meta.get("generation"))
        with self._lock:
            if kind == "evalruns" and uid:
                self._forget(uid)
            if key in self._reported:
                return
            self._reported[key] = None
            while len(self._reported) > self.REPORTED:  # the oldest go first
                del self._reported[next(iter(self._reported))]
        self.metrics.undecodable.labels(kind).inc()
        self._on_undecodable(kind, meta, reason)

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {
                "runs": len(self.runs),
                "jobs": sum(len(c.get("jobs", {})) for c in self.children.values()),
                "pods": sum(len(c.get("pods", {})) for c in self.children.values()),
            }


def _belongs(obj: Mapping[str, Any], run: Mapping[str, Any], kind: str) -> bool:
    """Whether a labelled Job or pod is really the run's: in the run's namespace (labels
    can be written by anyone who creates a pod; another tenant's pod claiming a run's uid
    must not be scraped for it), and a Job controlled by the run."""
    meta = obj.get("metadata") or {}
    run_meta = run.get("metadata") or {}
    if meta.get("namespace") != run_meta.get("namespace"):
        return False
    if kind == "jobs":
        return any(
            ref.get("controller") and ref.get("uid") == run_meta.get("uid")
            for ref in meta.get("ownerReferences") or []
        )
    return True


class _Sink:
    def __init__(self, store: Store, kind: str) -> None:
        self.store, self.kind = store, kind

    def relisting(self, scope: str | None) -> None:
        self.store.relisting(self.kind, scope)

    def listed(self, scope: str | None, objects: list[dict[str, Any]], final: bool) -> None:
        self.store.listed(self.kind, scope, objects, final)

    def event(self, type_: str, obj: dict[str, Any]) -> None:
        self.store.event(self.kind, type_, obj)

    def undecodable(self, kind: str, meta: dict[str, Any], reason: str) -> None:
        self.store.undecodable(self.kind, meta, reason)


def _meta_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata an unreadable object is reported with."""
    keys = ("name", "namespace", "uid", "generation", "resourceVersion")
    return {k: meta[k] for k in keys if isinstance(meta.get(k), str | int)}


def needs_spec(run: Mapping[str, Any]) -> bool:
    """Whether the status does not reflect the spec yet (new, edited, or waiting for a
    referenced object or a served model)."""
    pending = _pending_spec(run)
    if pending is not None:
        return pending
    return (run.get("status") or {}).get("reason") in R.ADMISSION_WAITS


class BoardSink:
    """Leaderboards: their score series are rebuilt from their tables when listed (an
    operator restart keeps the score gauges), a spec edit (rankBy, top) re-renders the
    table at once, and the series of one deleted (or no longer listed) go. The work runs
    on ``submit`` (the runtime's threads), never on the informer's."""

    def __init__(
        self,
        metrics: Metrics,
        submit: Callable[..., None],
        rebuild: Callable[[Mapping[str, Any]], None],
        rerender: Callable[[str, str], Any],
        on_undecodable: Callable[[str, dict[str, Any], str], None] = lambda *_: None,
    ) -> None:
        self.metrics = metrics
        self._on_undecodable = on_undecodable
        self._reported: dict[tuple[str, str, object], None] = {}  # told already, in order
        self._submit = submit
        self._rebuild, self._rerender = rebuild, rerender
        self._listing: set[tuple[str, str]] = set()

    def relisting(self, scope: str | None) -> None:
        self._listing = set()

    def listed(self, scope: str | None, objects: list[dict[str, Any]], final: bool) -> None:
        self._listing |= {board_key(o) for o in objects}
        for board in objects:
            self._submit(self._rebuild, board)
        if final:
            self.metrics.retain_leaderboards(scope, set(self._listing))

    def event(self, type_: str, obj: dict[str, Any]) -> None:
        if type_ == "DELETED":
            self.metrics.leaderboard_gone(*board_key(obj))
            return
        meta = obj.get("metadata") or {}
        seen = (obj.get("status") or {}).get("observedGeneration")
        if seen is not None and meta.get("generation") != seen:
            self._submit(self._rerender, *board_key(obj))

    def undecodable(self, kind: str, meta: dict[str, Any], reason: str) -> None:
        self._on_undecodable("leaderboards", meta, reason)


def board_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def rebuild_scores(api: k8s.Api, metrics: Metrics, board: Mapping[str, Any]) -> None:
    """A listed Leaderboard's score series, from its table (an operator restart keeps them)."""
    namespace, name = board_key(board)
    try:
        entries, _ = leaderboards.read(api, namespace, board)
    except errors.OperatorError as exc:
        log.warning("score series of leaderboard %s/%s not rebuilt: %s", namespace, name, exc)
        return
    metrics.rebuild_scores(namespace, name, entries)
