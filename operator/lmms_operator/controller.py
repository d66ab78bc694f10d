"""The EvalRun controller: where a run's passes are read, decided and applied.

- **Informers** fill the store (``store.py``) with the active runs and their children,
  selected on the API server.
- **The engine** (``engine/``) runs one pass at a time per run: soon after an EvalRun
  event whose spec the status does not reflect yet (on the ``spec`` pool), a short while
  after a burst of Job and pod events, at every resync, and on a backoff after a
  transient failure. Any other failure ends the run ``Failed`` (``reconcile.guard``): one
  object never stops the others, nor is retried for ever.
- **A pass** reads a snapshot (the run, its Job and pods from the caches, referenced
  objects through ``reads``), asks ``reconcile/`` for a Plan (admission while the status
  does not reflect the spec, observation after) and hands it to the applier, the one
  writer, whose ``Replan`` (an object that exists, a refused one...) it decides again with.
- **The runner protocol** (``runnerprotocol.py``) scrapes the runners; what their answers
  change is decided and applied here too (``answered``, ``results``...), one writer per run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import errors, k8s, reads
from .api import EvalRunSpec
from .api.runner import LoggedSamples, ResultsSummary, RunnerProgress
from .applier import Applier
from .clock import Clock
from .config import Settings
from .engine import Backoff, Engine
from .metrics import Metrics
from .objectstore import ObjectStore
from .reconcile import admission, fanout, guard, observation
from .reconcile import progress as prog
from .reconcile import publishing as pub
from .reconcile import reasons as R
from .reconcile.plan import Plan, Replan
from .reconcile.validate import validate
from .runnerprotocol import RunnerProtocol
from .store import MANAGED_SELECTOR, BoardSink, Store, needs_spec, rebuild_scores

log = logging.getLogger("lmms.controller")

#: Attempts of one pass whose applier keeps answering Replan before it fails (and backs off).
REPLANS = 3


class Controller:
    """Informers, store, engine and runner protocol of one process (``fence``: may it write)."""

    LOCKS = 256

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        api: k8s.Api | None = None,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.api = api or k8s.Api()
        self.metrics = metrics or Metrics()
        self.clock = clock or Clock()
        self.store = Store(self.metrics, self._wake, self._gone, self._undecodable)
        self.objects = ObjectStore(settings.store_policy, self.api)
        self.applier = Applier(self.clock, self.objects, self.metrics, self.api, fence)
        self.rules = admission.Rules(
            settings.policy, settings.runner, settings.timeouts, settings.reference_timeout
        )
        self.engine: Engine[str] = Engine(
            self._pass,
            pools={"spec": settings.workers, "observe": max(2, settings.workers // 2)},
            pool_of=self._pool_of,
            keys=self.store.uids,
            resync_interval=settings.resync_interval,
            # A failed pass is tried again after 5 s, then at most every resync.
            backoff=Backoff(5.0, max(5.0, settings.resync_interval)),
            clock=self.clock,
        )
        self.protocol = RunnerProtocol(
            settings, self.store, self, self.clock, self.metrics, self.api
        )
        # One writer per run: a pass and the runner protocol's updates never interleave
        # (a fixed set of locks, hashed by run: the set never grows).
        self._locks = tuple(threading.Lock() for _ in range(self.LOCKS))
        self._policy_namespaces: set[str] = set()  # runner NetworkPolicy made or found
        self._children_synced = threading.Event()
        self._boards = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="leaderboards")
        self.informers: list[k8s.Informer] = []

    # -- start and stop -------------------------------------------------------------------------
    async def start(self) -> None:
        """EvalRuns are listed first, so that the children informers know which runs are
        active; observations wait for the children's first list, spec passes do not."""
        await self.engine.start()
        scopes: Iterable[str | None] = self.settings.namespaces or (None,)
        fetch = self.api.request
        runs = [
            k8s.Informer("EvalRun", self.store.run_sink(), namespace=ns, fetch=fetch)
            for ns in scopes
        ]
        self.informers += [i.start() for i in runs]
        await self._synced(runs)
        children = [
            k8s.Informer(
                api_kind,
                self.store.child_sink(kind),
                namespace=ns,
                label_selector=MANAGED_SELECTOR,
                fetch=fetch,
            )
            for kind, api_kind in (("jobs", "Job"), ("pods", "Pod"))
            for ns in scopes
        ]
        # Leaderboards are few: watched whole, so that the score series of a deleted
        # Leaderboard go with it.
        rebuild = functools.partial(rebuild_scores, self.api, self.metrics)
        boards = BoardSink(self.metrics, self._submit, rebuild, self.applier.rerender)
        children += [
            k8s.Informer("Leaderboard", boards, namespace=ns, fetch=fetch) for ns in scopes
        ]
        self.informers += [i.start() for i in children]
        await self._synced(children)
        self._children_synced.set()
        for uid in self.store.uids():
            self._wake(uid, True)
        self.engine.every(self.protocol.tick, self.protocol.scrape)
        log.info("watching %s", ", ".join(map(repr, self.informers)))

    async def _synced(self, informers: list[k8s.Informer]) -> None:
        while not all(i.synced.is_set() for i in informers):
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for informer in self.informers:
            informer.stop()
        await self.protocol.stop()
        await self.engine.stop()
        self._boards.shutdown(wait=False, cancel_futures=True)

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
    def _wake(self, uid: str, observe_only: bool) -> None:
        """Called from informer threads: work on the run soon. An EvalRun event is work
        only when the status does not reflect the spec (most are the echo of our own
        status writes); a Job or pod event is an observation, debounced, once the
        children caches are complete."""
        if observe_only:
            if self._children_synced.is_set():
                self.engine.add(uid, self.settings.observe_delay)
            return
        run = self.store.get(uid)
        entry = self.store.entry(uid)
        if run is None or entry is None or not needs_spec(run):
            return
        generation = int(run["metadata"].get("generation") or 1)
        if entry.waiting is not None and entry.waiting[0] == generation:
            return  # waiting for references: its retry time stands
        self.engine.forget(uid)  # a new generation is not held back by the last one's failures
        self.engine.add(uid)

    def _gone(self, uid: str) -> None:  # a run finished or was deleted
        self.engine.discard(uid)

    def _pool_of(self, uid: str) -> str:
        run = self.store.get(uid)
        return "spec" if run is not None and needs_spec(run) else "observe"

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Runs ``fn(*args)`` on the Leaderboards' threads, never on the informer's."""

        def run() -> None:
            try:
                fn(*args)
            except Exception as exc:
                log.warning("%s failed: %s", getattr(fn, "__name__", fn), exc)

        with contextlib.suppress(RuntimeError):  # shut down: the process is stopping
            self._boards.submit(run)

    def _undecodable(self, kind: str, meta: dict[str, Any], reason: str) -> None:
        """An undecodable EvalRun (told once per generation): Failed, a Warning Event."""
        if kind == "evalruns" and (found := guard.undecodable(meta, reason, self.clock.now())):
            self._submit(self.applier.apply, *found)

    # -- passes ------------------------------------------------------------------------------------
    def _lock(self, uid: str) -> threading.Lock:
        return self._locks[hash(uid) % self.LOCKS]

    def _pass(self, uid: str, periodic: bool) -> float | None:
        """One pass over one run: its spec if the status does not reflect it yet, else
        what its Job and pods show. Returns when to pass again, if sooner than events."""
        with self._lock(uid):
            run = self.store.get(uid)
            if run is None or run.get("_stale"):
                return None
            spec_pass = needs_spec(run)
            try:
                if spec_pass:
                    with self.metrics.timed_handler("evalrun_spec"):
                        return self._admit(uid, run)
                status = run.get("status") or {}
                active = status.get("phase") in R.ACTIVE and status.get("jobName")
                if active and self._children_synced.is_set():
                    with self.metrics.timed_handler("evalrun_resync" if periodic else "observe"):
                        return self._observe(uid, run, periodic)
                return None
            except Exception as exc:  # the guard: transient errors are retried, not others
                plan = guard.failed(
                    run, exc, self.clock.now(), "admitting" if spec_pass else "observing"
                )
                if plan is None:
                    raise
                internal = plan.status.get("reason") == R.INTERNAL_ERROR
                log.error("%s: %s", uid, plan.status.get("message"), exc_info=internal)
                self._apply(run, plan)
                return None

    def _admit(self, uid: str, run: dict[str, Any]) -> float | None:
        entry = self.store.entry(uid)
        if entry is None:
            return None
        meta = run["metadata"]
        generation = int(meta.get("generation") or 1)
        now = self.clock.now()
        try:
            spec = validate(run.get("spec"), self.settings.policy, meta["namespace"])
        except errors.InvalidSpec as exc:
            self._apply(run, admission.invalid(run, exc.problems, now))
            entry.waiting = None
            return None
        monotonic = self.clock.monotonic()
        if entry.waiting is None or entry.waiting[0] != generation:
            entry.waiting = (generation, monotonic)
        facts = Replan()
        stale = False  # (an attempt that stopped them saw them; the next one does not)
        for _ in range(REPLANS):
            snap = reads.admission_snapshot(
                run,
                spec,
                now,
                waited=monotonic - entry.waiting[1],
                policy_known=meta["namespace"] in self._policy_namespaces,
                facts=facts,
                store=self.objects,
                api=self.api,
            )
            stale = stale or snap.stale_jobs
            snap = dataclasses.replace(
                snap,
                stale_jobs=stale,
                publish_failures=entry.publish_failures,
                publish_failed=facts.publish_failed,
            )
            plan = admission.decide(snap, self.rules)
            try:
                found = self._apply(run, plan)
            except errors.PublishFailed:
                entry.publish_failures += 1  # reused results: counted as a run's are
                raise
            if found is None:
                entry.publish_failures = 0
                if plan.evaluation is not None:
                    self._policy_namespaces.add(meta["namespace"])
                if plan.retry_after is None:
                    entry.waiting = None
                return plan.retry_after
            facts = facts.joined(found)
        raise errors.Conflict(f"{meta['namespace']}/{meta['name']}: the plan keeps changing")

    def _observe(self, uid: str, run: dict[str, Any], periodic: bool) -> float | None:
        job_name = str((run.get("status") or {}).get("jobName") or "")
        try:
            spec = EvalRunSpec.model_validate(run.get("spec") or {})
        except ValueError:
            return None
        job = self.store.job(uid, job_name)
        if job is None:  # the cache may not have it yet
            job = self.api.get_job(run["metadata"]["namespace"], job_name)
        pods = self.store.pods_of(uid, job_name)
        workload = reads.workload(self.api, spec, job)

        def decide(results: pub.Inputs | None) -> Plan:
            return observation.decide(
                run,
                spec,
                job,
                pods,
                self.clock.now(),
                self.settings.timeouts,
                periodic=periodic,
                results=results,
                workload=workload,
            )

        plan = decide(None)
        if plan.needs is not None:
            return self._published(uid, run, spec, plan, decide, pods=pods).retry_after
        self._apply(run, plan)
        return plan.retry_after  # a held run whose Workload Kueue has yet to create

    def _published(
        self,
        uid: str,
        run: dict[str, Any],
        spec: EvalRunSpec,
        plan: Plan,
        decide: Callable[[pub.Inputs | None], Plan],
        **read: Any,
    ) -> Plan:
        """Reads what publishing needs, decides again with it and applies; a publish that
        failed is counted (``PUBLISH_TRIES``), one that will not be retried decided again."""
        entry = self.store.entry(uid)
        failures = entry.publish_failures if entry is not None else 0
        status = {**(run.get("status") or {}), **plan.status}
        inputs = reads.results(
            run,
            spec,
            status,
            needs=plan.needs,
            publish_failures=failures,
            store=self.objects,
            api=self.api,
            **read,
        )
        for _ in range(REPLANS):
            plan = decide(inputs)
            try:
                facts = self._apply(run, plan)
            except errors.PublishFailed:
                if entry is not None:
                    entry.publish_failures += 1
                raise
            if facts is None:
                if entry is not None:
                    entry.publish_failures = 0
                return plan
            inputs = inputs.after(facts)
        raise errors.Conflict(f"{run['metadata']['name']}: the plan keeps changing")

    def _apply(self, run: Mapping[str, Any], plan: Plan) -> Replan | None:
        """Carries a complete plan out and remembers the status it wrote."""
        if plan.needs is not None:
            raise ValueError("a plan that needs results is not complete")
        if not plan:
            return None
        meta = run["metadata"]
        status = run.get("status") or {}
        if plan.status:
            keys = (f"{k}={v}" if k in ("phase", "reason") else k for k, v in plan.status.items())
            log.debug("status of %s/%s: %s", meta["namespace"], meta["name"], ", ".join(keys))
        job_name = plan.status.get("jobName") or status.get("jobName")
        # Read before the write: the watch may drop a finished run's pods as soon as it
        # shows the new status.
        pods = self.store.pods_of(meta["uid"], job_name) if plan.status and job_name else []
        facts = self.applier.apply(run, plan)
        if facts is None and plan.status:
            self.store.remember(meta["uid"], int(meta.get("generation") or 1), plan.status)
            self.metrics.observe_status(run, status, dict(plan.status), pods)
        return facts

    # -- the runner protocol's answers (``runnerprotocol.Runs``) --------------------------------
    def _update(self, uid: str, act: Callable[[dict[str, Any]], None]) -> None:
        with self._lock(uid):
            run = self.store.get(uid)
            if run is not None and not run.get("_stale"):
                act(run)

    def answered(
        self, uid: str, answers: Mapping[int, RunnerProgress], pods: Mapping[int, str]
    ) -> None:
        def act(run: dict[str, Any]) -> None:
            status, now = run.get("status") or {}, self.clock.now()
            if len(status.get("shards") or []) > 1:
                message = "the runners answer"
                plan = prog.reachability(run, status, True, message, now)
                first = answers[min(answers)]  # every shard runs the same image
                plan = plan.then(prog.harness(run, {**status, **plan.status}, first, now))
                after = {**status, **plan.status}
                plan = plan.then(prog.shards_progress_plan(after, answers, now, pods))
            else:
                plan = prog.answered(
                    run, status, next(iter(answers.values())), "the runner answers", now
                )
            self._apply(run, plan)

        self._update(uid, act)

    def unanswered(self, uid: str, message: str) -> None:
        def act(run: dict[str, Any]) -> None:
            status = run.get("status") or {}
            self._apply(run, prog.reachability(run, status, False, message, self.clock.now()))

        self._update(uid, act)

    def results(
        self, uid: str, summary: ResultsSummary, image: str | None, samples: LoggedSamples | None
    ) -> None:
        def act(run: dict[str, Any]) -> None:
            spec = EvalRunSpec.model_validate(run.get("spec") or {})
            status = run.get("status") or {}

            def decide(inputs: pub.Inputs | None) -> Plan:
                assert inputs is not None
                return pub.decide(run, spec, status, inputs, self.clock.now())

            found = {"summary": summary, "image": image, "samples": samples}
            self._published(uid, run, spec, Plan(), decide, **found)

        self._update(uid, act)

    def shard_results(
        self, uid: str, index: int, summary: ResultsSummary, image: str | None
    ) -> None:
        def act(run: dict[str, Any]) -> None:
            spec = EvalRunSpec.model_validate(run.get("spec") or {})
            status = run.get("status") or {}

            def decide(inputs: pub.Inputs | None) -> Plan:
                now = self.clock.now()
                return fanout.collect_shard(
                    run, spec, status, index, summary, image, inputs or pub.Inputs(), now
                )

            shards = status.get("shards") or []
            if all(s.get("resultsCollected") or s.get("index") == index for s in shards):
                self._published(uid, run, spec, Plan(), decide)  # the last: the merged set
            else:
                self._apply(run, decide(None))

        self._update(uid, act)
