"""The operator's state machinery, in one place: what it remembers about runs, and when
it works on them.

- **The store** holds the *active* runs only (not finished, or finished but edited since),
  and the Jobs and pods of those runs, each trimmed to the fields the code reads. A
  finished run is dropped as soon as the watch shows it finished: it costs a phase count
  in the metrics and no periodic work. Nothing else is kept per object: the status
  cache, the token cache and the backoff entries of a run go when the run leaves.
- **Informers** (``k8s.Informer``) fill it: EvalRuns, and the Jobs and pods carrying the
  operator's managed-by label, selected on the API server, so another tenant's objects
  never reach the process.
- **Per-run serialisation**: one writer per run at a time (a fixed set of locks, hashed by
  run: the set never grows), so compute-then-write never interleaves.
- **Debounce**: a burst of Job and pod events becomes one observation (``observe_delay``).
- **Threads**: new and edited runs are admitted on threads of their own (``workers``),
  never behind the status updates of runs already going.
- **Backoff**: a failed reconciliation is retried by the resync loop when due.
- **Loops**: one resync loop and one scrape loop over the active runs (no per-object
  timers, no work for finished runs). Each run is scraped when it is due: every
  ``scrape_interval``, and sooner, a few times, when its runner is about to finish
  (``scrape.follow_up``), so that a finished runner's results (and its GPUs) wait
  less than a second to be collected instead of half an interval on average.

The decisions are the controller's (``controller.ensure``, ``observe``, ``progress_plan``,
``reachability``) and, for results, ``publishing``'s (``collect_shard``,
``publish_results``): they read, compute a ``Plan`` with the pure functions of
``reconcile/``, and ``controller.apply`` carries it out through ``k8s``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import controller, errors, k8s, leaderboards, metrics, objectstore, publishing
from .api.runner import ResultsSummary, RunnerProgress
from .config import Settings
from .reconcile import job as jobs
from .reconcile import reasons as R
from .reconcile import status as st
from .reconcile.plan import Plan
from .scrape import FOLLOW_UP, Scraper, follow_up, near_end, results_wait

log = logging.getLogger("lmms.runtime")

MANAGED_SELECTOR = f"{jobs.LABEL_MANAGED_BY}={jobs.MANAGED_BY}"
#: Seconds a runner may go unanswered (every scrape failing) before RunnerReachable
#: turns False: a runner that has just started may not listen yet, and a slow answer or
#: two is not an outage.
UNREACHABLE_AFTER = 60.0


# -- trimming: what the code reads of each object ------------------------------------------
def _meta(obj: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {k: meta[k] for k in keys if k in meta}


def trim_run(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An active EvalRun without managedFields and annotations."""
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": "EvalRun",
        "metadata": _meta(
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
        "metadata": _meta(
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
        "metadata": _meta(obj, "name", "namespace", "uid", "labels", "creationTimestamp"),
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
    return (run.get("status") or {}).get("phase") not in st.TERMINAL


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
class _Run:
    body: dict[str, Any]
    written: dict[str, Any] = field(default_factory=dict)  # fresher than the watch
    written_generation: int | None = None
    retry: tuple[int, float] | None = None  # (generation, when) while backing off
    waiting: tuple[int, float] | None = None  # (generation, since) waiting for references
    token: str | None = None  # the runner's token, once read (for /results and /ack)
    unanswered_since: float | None = None  # monotonic time of the first failed scrape
    next_scrape: float = 0.0  # monotonic time the next scrape is due
    follow_ups: int = 0  # follow-up scrapes in a row (scrape.follow_up)


class Store:
    """Active runs and their children; fed by the informers (from their threads)."""

    def __init__(self, on_run: Callable[[str, bool], None]) -> None:
        self._lock = threading.RLock()
        self.runs: dict[str, _Run] = {}
        # run uid -> kind ("jobs", "pods") -> name -> trimmed object
        self.children: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        self._on_run = on_run  # (uid, observe_only) -> schedule work
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
        metrics.seen(uid, str(meta.get("namespace") or ""), status.get("phase"))
        with self._lock:
            if keep(obj):
                entry = self.runs.get(uid)
                if entry is None:
                    self.runs[uid] = _Run(trim_run(obj))
                else:
                    entry.body = trim_run(obj)
                return uid
            self._forget(uid)
        return None

    def _run_deleted(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        entry = self.entry(uid)
        if entry is not None and (entry.body.get("status") or {}).get("phase") in st.ACTIVE:
            # Deleted while active: its pods held GPUs all the same.
            job_name = (entry.body.get("status") or {}).get("jobName")
            pods = self.pods_of(uid, job_name) if job_name else []
            metrics.count_gpu_seconds(entry.body, pods)
        metrics.deleted(uid, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        publishing.forget(str(meta.get("namespace") or ""), uid)
        with self._lock:
            self._forget(uid)

    def _forget(self, uid: str) -> None:
        """Everything held for a run goes: its body, caches and children."""
        self.runs.pop(uid, None)
        self.children.pop(uid, None)

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

    def entry(self, uid: str) -> _Run | None:
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
            if kind == "evalruns":
                seen.add(meta.get("uid"))
                uid = self._run_seen(obj)
                if uid:
                    touched.append((uid, False))
            else:
                seen.add(meta.get("uid"))
                uid = self._child_seen(kind, obj)
                if uid:
                    touched.append((uid, True))
        if final:
            self._prune(kind, scope, self._listing.pop((kind, scope), set()))
        for uid, observe_only in touched:
            self._on_run(uid, observe_only)

    def _prune(self, kind: str, scope: str | None, seen: set[Any]) -> None:
        def in_scope(obj: Mapping[str, Any]) -> bool:
            return scope is None or obj["metadata"].get("namespace") == scope

        with self._lock:
            if kind == "evalruns":
                metrics.retain(scope, {u for u in seen if u})
                gone = [u for u, e in self.runs.items() if u not in seen and in_scope(e.body)]
                for uid in gone:
                    self._forget(uid)
                return
            for kinds in self.children.values():
                objects = kinds.get(kind, {})
                for name in [
                    n
                    for n, o in objects.items()
                    if o["metadata"].get("uid") not in seen and in_scope(o)
                ]:
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


def needs_spec(run: Mapping[str, Any]) -> bool:
    """Whether the status does not reflect the spec yet (new, edited, or waiting for a
    referenced object)."""
    pending = _pending_spec(run)
    if pending is not None:
        return pending
    return (run.get("status") or {}).get("reason") == R.WAITING_FOR_REFERENCES


# -- the runtime --------------------------------------------------------------------------------
class _BoardSink:
    """Leaderboards: their score series are rebuilt from their tables when listed (an
    operator restart keeps the score gauges), a spec edit (rankBy, top) re-renders the
    table at once, and the series of one deleted (or no longer listed) go. The work runs
    on ``submit`` (the runtime's threads), never on the informer's."""

    def __init__(self, submit: Callable[..., None]) -> None:
        self._submit = submit
        self._listing: set[tuple[str, str]] = set()

    def relisting(self, scope: str | None) -> None:
        self._listing = set()

    def listed(self, scope: str | None, objects: list[dict[str, Any]], final: bool) -> None:
        self._listing |= {_board_key(o) for o in objects}
        for board in objects:
            self._submit(_rebuild_scores, board)
        if final:
            metrics.retain_leaderboards(scope, set(self._listing))

    def event(self, type_: str, obj: dict[str, Any]) -> None:
        if type_ == "DELETED":
            metrics.leaderboard_gone(*_board_key(obj))
            return
        meta = obj.get("metadata") or {}
        seen = (obj.get("status") or {}).get("observedGeneration")
        if seen is not None and meta.get("generation") != seen:
            self._submit(leaderboards.rerender, *_board_key(obj))


def _rebuild_scores(board: Mapping[str, Any]) -> None:
    namespace, name = _board_key(board)
    try:
        entries, _ = leaderboards.read(namespace, board)
    except errors.OperatorError as exc:
        log.warning("score series of leaderboard %s/%s not rebuilt: %s", namespace, name, exc)
        return
    metrics.rebuild_scores(namespace, name, entries)


def _board_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class Runtime:
    """Informers, store, workers and loops of one operator process."""

    LOCKS = 256

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        objectstore.configure(settings.store_policy)
        self.store = Store(self._wake)
        self._locks = tuple(threading.Lock() for _ in range(self.LOCKS))
        self._pending: set[str] = set()
        self._resyncing: set[str] = set()
        self._pending_lock = threading.Lock()
        self._children_synced = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # New and edited runs have threads of their own: admitting a run (its Job) never
        # waits behind the status updates of runs already going.
        self._spec_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="spec"
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(2, settings.workers // 2), thread_name_prefix="observe"
        )
        self._tasks: set[asyncio.Future[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self.informers: list[k8s.Informer] = []
        self._scraper: Scraper | None = None
        self._scraping: dict[str, asyncio.Task[None]] = {}  # runs with a scrape in flight

    # -- start and stop -------------------------------------------------------------------------
    async def start(self) -> None:
        """EvalRuns are listed first, so that the children informers know which runs are
        active; observations wait for the children's first list, spec work does not."""
        self._loop = asyncio.get_running_loop()
        scopes: Iterable[str | None] = self.settings.namespaces or (None,)
        runs = [k8s.Informer("EvalRun", self.store.run_sink(), namespace=ns) for ns in scopes]
        self.informers += [i.start() for i in runs]
        await self._synced(runs)
        children = [
            k8s.Informer(
                api_kind,
                self.store.child_sink(kind),
                namespace=ns,
                label_selector=MANAGED_SELECTOR,
            )
            for kind, api_kind in (("jobs", "Job"), ("pods", "Pod"))
            for ns in scopes
        ]
        # Leaderboards are few: watched whole, so that the score series of a deleted
        # Leaderboard go with it.
        children += [
            k8s.Informer("Leaderboard", _BoardSink(self._submit), namespace=ns) for ns in scopes
        ]
        self.informers += [i.start() for i in children]
        await self._synced(children)
        self._children_synced.set()
        for uid in self.store.uids():
            self._wake(uid, True)
        self._loops.append(
            asyncio.create_task(self._every(self.settings.resync_interval, self.resync))
        )
        # The scrape loop ticks often and scrapes the runs that are due (``_Run.next_scrape``).
        self._loops.append(
            asyncio.create_task(
                self._every(min(FOLLOW_UP / 2, self.settings.scrape_interval), self.scrape)
            )
        )
        log.info("watching %s", ", ".join(map(repr, self.informers)))

    async def _synced(self, informers: list[k8s.Informer]) -> None:
        while not all(i.synced.is_set() for i in informers):
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for task in [*self._loops, *self._scraping.values()]:
            task.cancel()
        for informer in self.informers:
            informer.stop()
        if self._scraper is not None:
            await self._scraper.close()
        for executor in (self._spec_executor, self._executor):
            executor.shutdown(wait=False, cancel_futures=True)

    def health(self) -> dict[str, Any]:
        """For the liveness probe: every informer has heard from the API server lately."""
        now = time.monotonic()
        silent = [
            repr(i)
            for i in self.informers
            if i.synced.is_set() and now - i.last_contact > 2 * (i.WATCH_TIMEOUT + 30)
        ]
        if silent:
            raise RuntimeError(f"no answer from the API server for: {', '.join(silent)}")
        return {"informers": len(self.informers), **self.store.sizes()}

    # -- scheduling -----------------------------------------------------------------------------
    def _lock(self, uid: str) -> threading.Lock:
        return self._locks[hash(uid) % self.LOCKS]

    def _wake(self, uid: str, observe_only: bool) -> None:
        """Called from informer threads: work on the run soon. An EvalRun event is work
        only when the status does not reflect the spec (most are the echo of our own
        status writes); a Job or pod event is an observation, debounced, once the
        children caches are complete."""
        if not observe_only:
            run = self.store.get(uid)
            if run is None or not needs_spec(run):
                return
        elif not self._children_synced.is_set():
            return
        loop = self._loop
        if loop is None:
            return
        delay = self.settings.observe_delay if observe_only else 0.0
        loop.call_soon_threadsafe(self._schedule, uid, delay)

    def _schedule(self, uid: str, delay: float) -> None:
        with self._pending_lock:
            if uid in self._pending:
                return  # the pass already scheduled will see this change too
            self._pending.add(uid)
        assert self._loop is not None
        self._loop.call_later(delay, self._spawn, uid)

    def _spawn(self, uid: str) -> None:
        assert self._loop is not None
        run = self.store.get(uid)
        spec = run is not None and needs_spec(run)
        executor = self._spec_executor if spec else self._executor
        future = self._loop.run_in_executor(executor, self._sync, uid)
        self._tasks.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[Any]) -> None:
        self._tasks.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("reconciling failed: %s", future.exception())

    def _sync(self, uid: str, *, resync: bool = False) -> None:
        """One pass over one run: its spec if the status does not reflect it yet, else
        what its Job and pods show."""
        with self._pending_lock:
            self._pending.discard(uid)
        with self._lock(uid):
            run = self.store.get(uid)
            if run is None or run.get("_stale"):
                return
            if needs_spec(run):
                self._sync_spec(uid, run, resync)
            elif run.get("status", {}).get("phase") in st.ACTIVE and self._children_synced.is_set():
                self._observe(uid, run, "evalrun_resync" if resync else "observe")

    def _sync_spec(self, uid: str, run: dict[str, Any], resync: bool) -> None:
        entry = self.store.entry(uid)
        if entry is None:
            return
        generation = run["metadata"].get("generation", 1)
        backing_off = entry.retry is not None and entry.retry[0] == generation
        if backing_off and (not resync or (entry.retry or (0, 0.0))[1] > time.monotonic()):
            return  # backing off: the resync loop retries when it is due
        meta = run["metadata"]
        try:
            with metrics.timed_handler("evalrun_spec"):
                now = time.monotonic()
                if entry.waiting is None or entry.waiting[0] != generation:
                    entry.waiting = (generation, now)
                plan = controller.ensure(run, self.settings, waited=now - entry.waiting[1])
                self._apply(run, plan)
                if plan.retry_after is not None:
                    entry.retry = (generation, now + plan.retry_after)
                else:
                    entry.retry = None
                    entry.waiting = None
        except Exception as exc:
            # Counted as an error by timed_handler; the resync loop retries.
            log.warning(
                "reconciling %s/%s failed, retrying: %s",
                meta["namespace"],
                meta["name"],
                exc if isinstance(exc, errors.OperatorError) else repr(exc),
                exc_info=not isinstance(exc, errors.OperatorError),
            )
            entry.retry = (generation, time.monotonic() + 5)

    def _observe(self, uid: str, run: dict[str, Any], handler: str) -> None:
        status = run.get("status") or {}
        job_name = status.get("jobName")
        if not job_name:
            return
        with metrics.timed_handler(handler):
            plan = controller.observe(
                run,
                self.store.job(uid, job_name),
                self.store.pods_of(uid, job_name),
                self.settings,
                periodic=handler == "evalrun_resync",
            )
            self._apply(run, plan)

    def _apply(self, run: Mapping[str, Any], plan: Plan) -> None:
        """Applies a plan (``controller.apply``) and remembers the status it wrote."""
        if not plan:
            return
        meta = run["metadata"]
        if plan.status:
            log.debug(
                "status of %s/%s: %s",
                meta["namespace"],
                meta["name"],
                ", ".join(
                    f"{k}={plan.status[k]}" if k in ("phase", "reason") else k for k in plan.status
                ),
            )
        status = run.get("status") or {}
        job_name = plan.status.get("jobName") or status.get("jobName")
        # Read before the write: the watch may drop a finished run's pods as soon as it
        # shows the new status.
        pods = self.store.pods_of(meta["uid"], job_name) if plan.status and job_name else []
        controller.apply(run, plan)
        if plan.status:
            self.store.remember(meta["uid"], meta.get("generation", 1), plan.status)
            metrics.observe_status(run, status, plan.status, pods)

    def update(self, uid: str, compute: Callable[[dict[str, Any], dict[str, Any]], Plan]) -> None:
        """Runs ``compute(run, status) -> Plan`` under the run's lock and applies it."""
        with self._lock(uid):
            run = self.store.get(uid)
            if run is None or run.get("_stale"):
                return
            self._apply(run, compute(run, run.get("status") or {}))

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Runs ``fn(*args)`` on the observe threads (from any thread); errors are logged."""

        def run() -> None:
            try:
                fn(*args)
            except Exception as exc:
                log.warning("%s failed: %s", getattr(fn, "__name__", fn), exc)

        self._executor.submit(run)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, fn, *args)

    # -- loops -----------------------------------------------------------------------------------
    async def _every(self, interval: float, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic work failed")

    async def resync(self) -> None:
        """Time-based decisions (how long a pod has been unschedulable), missed events,
        and spec reconciliations due for a retry: active runs only."""

        def one(uid: str) -> None:
            try:
                self._sync(uid, resync=True)
            except Exception:
                log.exception("resync of %s failed", uid)
            finally:
                with self._pending_lock:
                    self._resyncing.discard(uid)

        # Not awaited: a run whose pass is slow (an object store at its read deadline)
        # delays neither the next resync nor the other runs; it is skipped until done.
        assert self._loop is not None
        for uid in self.store.uids():
            with self._pending_lock:
                if uid in self._resyncing:
                    continue
                self._resyncing.add(uid)
            future = self._loop.run_in_executor(self._executor, one, uid)
            self._tasks.add(future)
            future.add_done_callback(self._done)

    async def scrape(self) -> None:
        """Starts the scrape of every running run that is due and has none in flight; a
        slow runner (up to ``scrape_timeout``) delays no other run's scrape. The scraper
        bounds the connections open at once (LMMS_SCRAPE_CONCURRENCY)."""
        now = time.monotonic()
        for uid in self.store.uids():
            entry = self.store.entry(uid)
            if entry is None or entry.next_scrape > now or uid in self._scraping:
                continue
            run = self.store.get(uid)
            status = (run or {}).get("status") or {}
            if status.get("phase") != "Running" or status.get("resultsConfigMap"):
                continue
            entry.next_scrape = now + self.settings.scrape_interval
            self._scraping[uid] = asyncio.create_task(self._scrape_one(uid, run or {}, status))

    async def _scrape_one(
        self, uid: str, run: Mapping[str, Any], status: Mapping[str, Any]
    ) -> None:
        try:
            await self._scrape(uid, run, status)
        except Exception as exc:
            log.warning("scrape failed: %s", exc)
        finally:
            self._scraping.pop(uid, None)

    def _follow_up(self, uid: str, progress: Iterable[RunnerProgress]) -> None:
        """Brings the run's next scrape forward when a runner is about to finish."""
        entry = self.store.entry(uid)
        if entry is None:
            return
        delay = follow_up(progress, self.settings.scrape_interval, entry.follow_ups)
        if delay is None:
            entry.follow_ups = 0  # the streak is over
            return
        entry.follow_ups += 1
        entry.next_scrape = min(entry.next_scrape, time.monotonic() + delay)

    def _runner_pod(self, uid: str, job_name: str) -> dict[str, Any] | None:
        """The pod to scrape: node 0's in a multi-node run (it holds the results)."""
        for pod in sorted(self.store.pods_of(uid, job_name), key=publishing.completion_index):
            status = pod.get("status") or {}
            if status.get("phase") == "Running" and status.get("podIP"):
                return pod
        return None

    def _shard_pods(self, uid: str, job_name: str) -> dict[int, dict[str, Any]]:
        """The running pod of each shard (its newest), by Job index."""
        out: dict[int, dict[str, Any]] = {}
        pods = sorted(
            self.store.pods_of(uid, job_name),
            key=lambda p: p["metadata"].get("creationTimestamp") or "",
        )
        for pod in pods:
            status = pod.get("status") or {}
            if status.get("phase") == "Running" and status.get("podIP"):
                out[publishing.completion_index(pod)] = pod
        return out

    async def _unanswered(self, uid: str, pod: Mapping[str, Any], exc: Exception) -> None:
        """A scrape got no answer: RunnerReachable False once it has lasted."""
        entry = self.store.entry(uid)
        if entry is None:
            return
        now = time.monotonic()
        if entry.unanswered_since is None:
            entry.unanswered_since = now
        silent = now - entry.unanswered_since
        if silent < UNREACHABLE_AFTER:
            return  # a runner that just started may not listen yet
        message = (
            f"cannot scrape the runner of pod {pod['metadata']['name']} "
            f"(no answer for {silent:.0f}s): {exc}"
        )
        await self._in_thread(
            self.update,
            uid,
            lambda run, st_: controller.reachability(run, st_, False, message),
        )

    async def _answered(
        self, uid: str, message: str, progress: Callable[[dict[str, Any]], Plan]
    ) -> None:
        """A scrape was answered: RunnerReachable, and the progress it brought."""
        entry = self.store.entry(uid)
        if entry is not None:
            entry.unanswered_since = None
        await self._in_thread(
            self.update,
            uid,
            lambda run, st_: controller.reachability(run, st_, True, message).then(progress(st_)),
        )

    async def _token(self, uid: str, namespace: str, job_name: str) -> str | None:
        entry = self.store.entry(uid)
        if entry is None:
            return None
        if entry.token is None:
            entry.token = await self._in_thread(
                k8s.read_secret_value, namespace, f"{job_name}-token", "token"
            )
        return entry.token or None

    async def _scrape_shards(self, uid: str, status: Mapping[str, Any], job_name: str) -> None:
        """A run with parallelism > 1: every shard's runner is scraped; progress is
        aggregated; each finished shard's results are kept (then acknowledged, so that
        its pod exits and frees its GPUs) and the last one publishes the merged set."""
        pods = self._shard_pods(uid, job_name)
        if not pods:
            return
        if self._scraper is None:
            self._scraper = Scraper(self.settings)
        scraper = self._scraper
        port = self.settings.runner_port
        indexes = sorted(pods)
        answers = await asyncio.gather(
            *(
                scraper.request("GET", f"http://{pods[i]['status']['podIP']}:{port}/progress")
                for i in indexes
            ),
            return_exceptions=True,
        )
        progress: dict[int, RunnerProgress] = {}
        failure: Exception | None = None
        for i, answer in zip(indexes, answers, strict=True):
            try:
                if isinstance(answer, BaseException):
                    raise answer
                progress[i] = RunnerProgress.model_validate(answer)
                metrics.SCRAPES.labels("ok").inc()
            except (errors.ScrapeError, ValueError) as exc:
                metrics.SCRAPES.labels("error").inc()
                failure = failure or exc
        if not progress:
            if failure is not None:
                await self._unanswered(uid, pods[indexes[0]], failure)
            return
        names = {i: str(pod["metadata"]["name"]) for i, pod in pods.items()}
        await self._answered(
            uid,
            "the runners answer",
            lambda st_: controller.shards_progress_plan(st_, progress, names),
        )
        collected = {
            int(s.get("index", -1)) for s in status.get("shards") or [] if s.get("resultsCollected")
        }
        self._follow_up(uid, [p for i, p in progress.items() if i not in collected])
        # Finished shards are fetched at once; those near their end with a long poll,
        # answered once their results are ready. Each is kept as soon as it comes.
        wait = results_wait(self.settings.scrape_interval)
        waits: dict[int, float] = {}
        for i, p in progress.items():
            if i in collected or p.reason == "EvaluationFailed":
                continue
            if p.phase in ("done", "failed"):
                waits[i] = 0.0
            elif near_end(p, wait):
                waits[i] = wait
        if not waits:
            return
        namespace = pods[next(iter(waits))]["metadata"]["namespace"]
        token = await self._token(uid, namespace, job_name)
        if not token:
            return

        async def fetch(i: int) -> tuple[int, ResultsSummary | None]:
            base = f"http://{pods[i]['status']['podIP']}:{port}"
            try:
                return i, ResultsSummary.model_validate(
                    await scraper.request("GET", f"{base}/results", token=token, wait=waits[i])
                )
            except (errors.ScrapeError, ValueError) as exc:
                (log.debug if waits[i] else log.warning)(
                    "results of %s shard %d not fetched yet: %s", job_name, i, exc
                )
                return i, None

        async def ack(i: int) -> None:
            try:
                await scraper.request(
                    "POST", f"http://{pods[i]['status']['podIP']}:{port}/ack", token=token
                )
            except errors.ScrapeError as exc:
                log.warning(
                    "could not acknowledge the results of %s shard %d: %s", job_name, i, exc
                )

        fetches = [asyncio.ensure_future(fetch(i)) for i in sorted(waits)]
        acks: list[asyncio.Future[None]] = []
        try:
            for fetched in asyncio.as_completed(fetches):
                i, summary = await fetched
                if summary is None:
                    continue
                image = publishing.image_id([pods[i]])
                await self._in_thread(
                    self.update,
                    uid,
                    lambda run, st_, i=i, summary=summary, image=image: publishing.collect_shard(
                        run, st_, i, summary, image
                    ),
                )
                # Kept: the runner may exit, while the next shard is kept.
                acks.append(asyncio.ensure_future(ack(i)))
        finally:
            for pending in fetches:
                pending.cancel()  # stopping: no fetch outlives the scrape
            # Whatever stopped the loop, a kept shard is acknowledged (a collected shard
            # is not fetched again), so that its runner exits and frees its GPUs.
            await asyncio.gather(*acks, return_exceptions=True)

    async def _scrape(self, uid: str, run: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Pulls /progress into status.progress; once the runner is done, pulls /results,
        publishes them and acknowledges, so that the runner exits."""
        job_name = status.get("jobName")
        if job_name and len(status.get("shards") or []) > 1:
            await self._scrape_shards(uid, status, str(job_name))
            return
        pod = self._runner_pod(uid, str(job_name)) if job_name else None
        if pod is None:
            return
        if self._scraper is None:
            self._scraper = Scraper(self.settings)
        scraper = self._scraper
        base = f"http://{pod['status']['podIP']}:{self.settings.runner_port}"
        started = time.monotonic()
        try:
            progress = RunnerProgress.model_validate(
                await scraper.request("GET", f"{base}/progress")
            )
            metrics.SCRAPES.labels("ok").inc()
        except (errors.ScrapeError, ValueError) as exc:
            metrics.SCRAPES.labels("error").inc()
            await self._unanswered(uid, pod, exc)
            return
        metrics.SCRAPE_DURATION.observe(time.monotonic() - started)
        await self._answered(
            uid, "the runner answers", lambda st_: controller.progress_plan(st_, progress)
        )
        self._follow_up(uid, [progress])
        if progress.reason == "EvaluationFailed":
            return
        # Near its end: a long poll, answered once the results are ready.
        wait = results_wait(self.settings.scrape_interval)
        wait = wait if near_end(progress, wait) else 0.0
        if progress.phase not in ("done", "failed") and not wait:
            return
        token = await self._token(uid, pod["metadata"]["namespace"], str(job_name))
        if not token:
            return
        try:
            summary = ResultsSummary.model_validate(
                await scraper.request("GET", f"{base}/results", token=token, wait=wait)
            )
        except (errors.ScrapeError, ValueError) as exc:
            # Not ready within the wait is the usual case of a long poll.
            (log.debug if wait else log.warning)("results of %s not fetched yet: %s", job_name, exc)
            return
        await self._in_thread(
            self.update,
            uid,
            lambda run, st_: publishing.publish_results(
                run, st_, summary, None, publishing.image_id([pod])
            ),
        )
        try:
            await scraper.request("POST", f"{base}/ack", token=token)
        except errors.ScrapeError as exc:
            log.warning("could not acknowledge the results of %s: %s", job_name, exc)
