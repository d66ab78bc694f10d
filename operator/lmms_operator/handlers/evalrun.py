"""Thin Kopf adapters for EvalRuns and their Jobs and pods; no business logic here."""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import kopf

from .. import controller, k8s, metrics
from ..api import GROUP, VERSION
from ..api.runner import ResultsSummary, RunnerProgress
from ..config import Settings
from ..reconcile import job as jobs
from ..reconcile import status as st
from ..scrape import ScrapeError, Scraper

log = logging.getLogger("lmms.handlers")

SETTINGS = Settings.from_env()
MANAGED = {jobs.LABEL_MANAGED_BY: jobs.MANAGED_BY}

# The last status this operator wrote per run: fresher than the watch cache right after
# a write, so a burst of pod events does not write (or announce) the same change twice.
_written: dict[str, dict[str, Any]] = {}
_written_lock = threading.Lock()
# One writer per run at a time: compute-then-write must not interleave between the spec
# handler and the Job/pod event handlers, or an older status could land last.
_run_locks: dict[str, threading.Lock] = {}


def _run_lock(uid: str) -> threading.Lock:
    with _written_lock:
        return _run_locks.setdefault(uid, threading.Lock())


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy for the in-memory indexes, without what no decision reads (managedFields,
    annotations, a Job's pod template): the indexes hold every run, Job and pod."""
    obj = copy.deepcopy(dict(body))
    meta = obj.get("metadata") or {}
    meta.pop("managedFields", None)
    meta.pop("annotations", None)
    kind = obj.get("kind")
    if kind == "Job":
        obj["spec"] = {"suspend": (obj.get("spec") or {}).get("suspend")}
    elif kind == "Pod":
        spec = obj.get("spec") or {}
        obj["spec"] = {
            "nodeName": spec.get("nodeName"),
            "containers": [
                {"name": c.get("name"), "image": c.get("image")}
                for c in spec.get("containers") or []
            ],
        }
    return obj


def _remember(uid: str, generation: int, fields: Mapping[str, Any]) -> None:
    with _written_lock:
        cached = _written.setdefault(uid, {})
        if cached.get("_generation") != generation:
            cached.clear()
            cached["_generation"] = generation
        cached.update(fields)


def _with_written(body: Mapping[str, Any]) -> dict[str, Any]:
    run = _plain(body)
    meta = run["metadata"]
    with _written_lock:
        cached = dict(_written.get(meta["uid"], {}))
    generation = cached.pop("_generation", None)
    if generation is not None and generation > meta.get("generation", 1):
        # The watch cache lags behind a generation we already handled: mark it stale.
        run["_stale"] = True
    if generation == meta.get("generation"):
        status = dict(run.get("status") or {})
        status.update(cached)
        run["status"] = {k: v for k, v in status.items() if v is not None}
    return run


# -- indexes: in-memory views of what the watches saw ------------------------------------
@kopf.index(GROUP, VERSION, "evalruns")
def evalruns_by_uid(uid: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {uid: _plain(body)}


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def jobs_by_name(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): _plain(body)}


@kopf.index("", "v1", "pods", labels=MANAGED)
def pods_by_run(labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {labels.get(jobs.LABEL_RUN_UID): _plain(body)}


# -- spec changes ----------------------------------------------------------------------
# Level-triggered: a run whose status does not reflect its metadata.generation yet (new,
# edited, or waiting for a referenced object) is reconciled from the watch event and,
# should that fail, again by the resync loop. Nothing is stored on the object for this
# (no Kopf progress or diff-base annotations, no finalizer): the status is the record.
_retry_at: dict[str, tuple[int, float]] = {}  # uid -> (generation, when to retry)


def _needs_spec(run: Mapping[str, Any]) -> bool:
    """Whether the status does not reflect the spec yet. Cheap (no copy): it runs on
    every event of every EvalRun."""
    meta = run.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    status = run.get("status") or {}
    observed, reason = status.get("observedGeneration"), status.get("reason")
    with _written_lock:
        cached = _written.get(meta.get("uid", ""))
        if cached and cached.get("_generation") == meta.get("generation", 1):
            observed = cached.get("observedGeneration", observed)
            reason = cached.get("reason", reason)
    if observed != meta.get("generation", 1):
        return True
    return reason == "WaitingForReferences"


def _reconcile_spec(body: Mapping[str, Any], *, retry: bool = False) -> None:
    meta = body["metadata"]
    uid = meta["uid"]
    generation = meta.get("generation", 1)
    if not retry and _retry_at.get(uid, (None, 0.0))[0] == generation:
        return  # backing off: the resync loop retries when it is due (an edit does not wait)
    try:
        with metrics.timed_handler("evalrun_spec"), _run_lock(uid):
            run = _with_written(body)
            if run.get("_stale") or not _needs_spec(run):
                return
            try:
                fields = controller.ensure(run, SETTINGS)
            except controller.RetryLater as exc:
                _write_status(run, controller.waiting_for_references(run, str(exc)))
                _retry_at[uid] = (generation, time.monotonic() + exc.delay)
                return
            _retry_at.pop(uid, None)
            _write_status(run, fields)
    except Exception:
        # Counted as an error by timed_handler; the resync loop retries.
        log.exception("reconciling %s/%s failed: retrying", meta["namespace"], meta["name"])
        _retry_at[uid] = (generation, time.monotonic() + 5)


def _write_status(run: Mapping[str, Any], fields: Mapping[str, Any]) -> None:
    if not fields:
        return
    meta = run["metadata"]
    k8s.patch_evalrun_status(meta["namespace"], meta["name"], dict(fields))
    _remember(meta["uid"], meta.get("generation", 1), fields)
    metrics.observe_status(run, run.get("status") or {}, fields)


# -- observed changes ----------------------------------------------------------------------
def _observe(uid: str | None, indexes: Mapping[str, Any]) -> None:
    """Recomputes a run's status from the watch caches and writes what changed."""
    if not uid:
        return
    found = list(indexes["evalruns_by_uid"].get(uid, []))
    if not found:
        return
    with _run_lock(uid):
        run = _with_written(found[0])
        if run.get("_stale"):
            return  # a newer event for this run follows
        meta = run["metadata"]
        status = run.get("status") or {}
        job_name = status.get("jobName")
        if not job_name or status.get("phase") in st.TERMINAL:
            return
        job_list = list(indexes["jobs_by_name"].get((meta["namespace"], job_name), []))
        pods = [
            p
            for p in list(indexes["pods_by_run"].get(uid, []))
            if p["metadata"].get("labels", {}).get("job-name") == job_name
        ]
        fields, stop = controller.observe(run, job_list[0] if job_list else None, pods, SETTINGS)
        _write_status(run, fields)
    if stop:
        controller.stop_children(run, stop, str(fields.get("reason")))


# A run's Job and pods change in bursts (created, scheduled, started, running): one
# observation shortly after the first event of a burst sees them all, and writes the
# status once instead of once per step.
_observe_pending: set[str] = set()


def _observe_later(uid: str | None, handler: str, indexes: Mapping[str, Any]) -> None:
    if not uid:
        return
    with _written_lock:
        if uid in _observe_pending:
            return  # the observation already scheduled will see this event too
        _observe_pending.add(uid)
    loop = asyncio.get_running_loop()

    def run() -> None:
        with _written_lock:
            _observe_pending.discard(uid)
        with metrics.timed_handler(handler):
            _observe(uid, indexes)

    async def later() -> None:
        try:
            await asyncio.to_thread(run)
        except Exception:
            log.exception("observing run %s failed; the resync loop retries", uid)

    def spawn() -> None:
        task = loop.create_task(later())
        _tasks.add(task)  # a reference until it is done
        task.add_done_callback(_tasks.discard)

    loop.call_later(SETTINGS.observe_delay, spawn)


_tasks: set[asyncio.Task[None]] = set()


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def job_event(labels: Mapping[str, str], **kwargs: Any) -> None:
    _observe_later(labels.get(jobs.LABEL_RUN_UID), "job_event", kwargs)


@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def pod_event(labels: Mapping[str, str], **kwargs: Any) -> None:
    _observe_later(labels.get(jobs.LABEL_RUN_UID), "pod_event", kwargs)


@kopf.on.event(GROUP, VERSION, "evalruns")
def evalrun_event(type: str | None, uid: str, body: kopf.Body, **kwargs: Any) -> None:
    if type == "DELETED":
        meta = body["metadata"]
        metrics.deleted(uid, meta.get("namespace", ""), meta.get("name", ""))
        with _written_lock:
            _written.pop(uid, None)
            _run_locks.pop(uid, None)
        _retry_at.pop(uid, None)
        return
    if _needs_spec(body):
        _reconcile_spec(body)


# -- progress and results from the runner --------------------------------------------------
_scraper: Scraper | None = None
_tokens: dict[str, str] = {}


def _scraper_instance() -> Scraper:
    global _scraper
    if _scraper is None:
        _scraper = Scraper(SETTINGS)
    return _scraper


def _runner_pod(uid: str, job_name: str, indexes: Mapping[str, Any]) -> dict[str, Any] | None:
    for pod in list(indexes["pods_by_run"].get(uid, [])):
        labels = pod["metadata"].get("labels", {})
        status = pod.get("status") or {}
        if (
            labels.get("job-name") == job_name
            and status.get("phase") == "Running"
            and status.get("podIP")
        ):
            return dict(pod)
    return None


def _update(uid: str, runs: kopf.Index[str, Any], compute: Any) -> None:
    """Runs ``compute(run, status) -> fields`` under the run's lock and writes the result."""
    with _run_lock(uid):
        found = list(runs.get(uid, []))
        if not found:
            return
        run = _with_written(found[0])
        if run.get("_stale"):
            return
        _write_status(run, compute(run, run.get("status") or {}))


async def _scrape(uid: str, status: Mapping[str, Any], indexes: Mapping[str, Any]) -> None:
    """Pulls /progress into status.progress; once the runner is done, pulls /results,
    publishes them and acknowledges, so that the runner exits."""
    runs = indexes["evalruns_by_uid"]
    job_name = status.get("jobName")
    if not job_name:
        return
    pod = _runner_pod(uid, job_name, indexes)
    if pod is None:
        return
    base = f"http://{pod['status']['podIP']}:{SETTINGS.runner_port}"
    scraper = _scraper_instance()
    started = time.monotonic()
    try:
        progress = RunnerProgress.model_validate(await scraper.request("GET", f"{base}/progress"))
        metrics.SCRAPES.labels("ok").inc()
    except (ScrapeError, ValueError) as exc:
        metrics.SCRAPES.labels("error").inc()
        message = f"cannot scrape the runner of pod {pod['metadata']['name']}: {exc}"
        await asyncio.to_thread(
            _update,
            uid,
            runs,
            lambda run, st_: controller.reachability_fields(run, st_, False, message),
        )
        return
    metrics.SCRAPE_DURATION.observe(time.monotonic() - started)
    await asyncio.to_thread(
        _update,
        uid,
        runs,
        lambda run, st_: {
            **controller.reachability_fields(run, st_, True, "the runner answers"),
            **controller.progress_fields(st_, progress),
        },
    )
    if progress.phase not in ("done", "failed") or progress.reason == "EvaluationFailed":
        return
    namespace = pod["metadata"]["namespace"]
    token = _tokens.get(job_name) or await asyncio.to_thread(
        k8s.read_secret_value, namespace, f"{job_name}-token", "token"
    )
    if not token:
        return
    _tokens[job_name] = token
    try:
        summary = ResultsSummary.model_validate(
            await scraper.request("GET", f"{base}/results", token=token)
        )
    except (ScrapeError, ValueError) as exc:
        log.warning("results of %s not fetched yet: %s", job_name, exc)
        return
    await asyncio.to_thread(
        _update, uid, runs, lambda run, st_: controller.publish_results(run, st_, summary, None)
    )
    try:
        await scraper.request("POST", f"{base}/ack", token=token)
    except ScrapeError as exc:
        log.warning("could not acknowledge the results of %s: %s", job_name, exc)
    _tokens.pop(job_name, None)


# -- periodic work: one loop each for all runs (no per-object timers) -----------------------
def _active(status: Mapping[str, Any]) -> bool:
    return status.get("phase") in st.ACTIVE


def _running(status: Mapping[str, Any]) -> bool:
    return status.get("phase") == "Running" and not status.get("resultsConfigMap")


def _runs(indexes: Mapping[str, Any]) -> list[dict[str, Any]]:
    index = indexes["evalruns_by_uid"]
    return [found[0] for uid in list(index) if (found := list(index.get(uid, [])))]


def _resync_pass(indexes: Mapping[str, Any]) -> None:
    """Time-based decisions (how long a pod has been unschedulable), missed events, and
    spec reconciliations that are due for a retry."""
    now = time.monotonic()
    for body in _runs(indexes):
        uid = body["metadata"]["uid"]
        try:
            if _needs_spec(body):
                if _retry_at.get(uid, (None, 0.0))[1] <= now:
                    _reconcile_spec(body, retry=True)
            elif _active(body.get("status") or {}):
                with metrics.timed_handler("evalrun_resync"):
                    _observe(uid, indexes)
        except Exception:
            log.exception("resync of %s failed", uid)


async def _every(interval: float, work: Any) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("periodic work failed")


_loops: list[asyncio.Task[None]] = []


@kopf.on.startup()
async def start_loops(**kwargs: Any) -> None:
    """The resync and scrape loops over every run in the watch caches."""
    indexes = {k: kwargs[k] for k in ("evalruns_by_uid", "jobs_by_name", "pods_by_run")}

    async def resync() -> None:
        await asyncio.to_thread(_resync_pass, indexes)

    async def scrape() -> None:
        pending = []
        for body in _runs(indexes):
            if (body.get("status") or {}).get("phase") in st.TERMINAL:
                continue  # finished (the watch cache lags behind, never ahead): no copy
            status = _with_written(body).get("status") or {}
            if _running(status):
                pending.append(_scrape(body["metadata"]["uid"], status, indexes))
        # The scraper bounds the connections open at once (LMMS_SCRAPE_CONCURRENCY).
        for result in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("scrape failed: %s", result)

    _loops.append(asyncio.create_task(_every(SETTINGS.resync_interval, resync)))
    _loops.append(asyncio.create_task(_every(SETTINGS.scrape_interval, scrape)))


@kopf.on.cleanup()
async def close_scraper(**_: Any) -> None:
    for task in _loops:
        task.cancel()
    if _scraper is not None:
        await _scraper.close()
