"""Observation: what an active run's status becomes, given its Job and pods (from the
watch caches). Pure. A run whose Job succeeded has its results published: the pass asks
for them (``Plan.needs``), the controller reads them, and the pass decides again with
them (``results``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from ..api import EvalRunSpec
from . import columns, fanout, inference, kueue, publishing
from . import job as jobs
from . import pods as pod_facts
from . import reasons as R
from . import shards as shard_plan
from . import status as st
from .plan import Needs, Plan
from .times import fmt_time


def observe_job(
    spec: EvalRunSpec,
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    now: dt.datetime,
    timeouts: st.Timeouts,
    workload: kueue.Workload | None = None,
) -> st.Observation:
    ob = st.observe(
        spec.suspend,
        spec.cancel,
        kueue.queue_of(spec.scheduling.queue_name, job),
        spec.retries,
        spec.timeout_seconds,
        dict(job),
        [dict(p) for p in pods],
        now,
        timeouts,
        workload,
    )
    return inference.observed(spec, ob, pods, now, timeouts)  # an engine's own end


def job_deleted(job_name: str, status: Mapping[str, Any], now: dt.datetime) -> st.Observation:
    if status.get("resultsConfigMap"):
        # The results were kept before the Job went (a TTL, a cleanup): a success.
        return st.Observation(
            R.SUCCEEDED,
            R.SUCCEEDED,
            f"the evaluation finished; its results are in ConfigMap "
            f"{status['resultsConfigMap']} (Job {job_name} is gone)",
            completion_time=fmt_time(now),
        )
    return st.Observation(
        R.FAILED,
        R.JOB_DELETED,
        f"Job {job_name} was deleted while the run was active; edit the spec or re-create "
        "the EvalRun to run the evaluation again",
        completion_time=fmt_time(now),
    )


def decide(
    run: Mapping[str, Any],
    spec: EvalRunSpec,
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    now: dt.datetime,
    timeouts: st.Timeouts,
    *,
    periodic: bool = True,
    results: publishing.Inputs | None = None,
    workload: kueue.Workload | None = None,
) -> Plan:
    """The status for the run's current Job (None: it is gone) and pods. An event-driven
    pass (``periodic`` False) does not write a passing state within the same phase: the
    periodic resync writes it once it has lasted ``status.PASSING_GRACE``."""
    meta = run["metadata"]
    generation = int(meta.get("generation") or 1)
    status = dict(run.get("status") or {})
    if status.get("phase") in st.TERMINAL or status.get("phase") is None:
        return Plan()
    if status.get("observedGeneration") != generation:
        return Plan()  # the admission pass has not seen this generation yet
    job_name = status.get("jobName")
    if not job_name:
        return Plan()
    hash_ = status.get("specHash")
    if job is None:
        return st.transition(
            status, job_deleted(job_name, status, now), generation, hash_, job_name, now
        )
    ob = inference.loading(spec, observe_job(spec, job, pods, now, timeouts, workload), status)
    held = Plan()
    if kueue.queue_of(spec.scheduling.queue_name, job) and ob.phase in st.ACTIVE:
        # A Workload that Kueue created after the spec pass is held (or released) here.
        age, waiting = kueue.job_age(job, now), ob.phase == R.QUEUED
        held = kueue.hold(spec.suspend, workload, release=False, age=age, waiting=waiting)
    same_phase = ob.passing and ob.phase == status.get("phase")
    if same_phase and (not periodic or not ob.lasted(now)):
        return held  # the resync writes it if it lasts
    plan = held.then(st.transition(status, ob, generation, hash_, job_name, now))
    if plan.status:  # (a run admitted before the status named its model and tasks)
        add = columns.missing_columns(
            status, run.get("spec") or {}, shard_plan.units(spec), new=False
        )
        plan.status.update(add)
    if ob.phase == R.SUCCEEDED and not status.get("resultsConfigMap"):
        plan = _with_results(run, spec, status, plan, ob, pods, now, results)
        if plan.needs is not None:
            return plan
    if ob.stop_job:
        # A run that failed before it started must not hold its GPUs any longer.
        plan.stop = f"{jobs.LABEL_RUN_UID}={meta['uid']},{jobs.LABEL_SPEC_HASH}={hash_}"
        plan.stop_reason = ob.reason
    return plan


def _with_results(
    run: Mapping[str, Any],
    spec: EvalRunSpec,
    status: dict[str, Any],
    plan: Plan,
    ob: st.Observation,
    pods: Sequence[Mapping[str, Any]],
    now: dt.datetime,
    results: publishing.Inputs | None,
) -> Plan:
    """A succeeded run's plan with its results published, or a failure when there are
    none; asks for the results first (``Plan.needs``) when they were not read yet."""
    pods_ = [dict(p) for p in pods]
    message = pod_facts.termination_message(pods_)
    shards = len(status.get("shards") or []) > 1
    if results is None:
        plan.needs = Needs(termination=message, image=pod_facts.image_id(pods_), shards=shards)
        return plan
    after = {**status, **plan.status}
    if shards:
        published = fanout.decide_shards(run, spec, after, pods_, results, now)
    else:
        published = publishing.decide(run, spec, after, results, now)
    if published.status or message is None:
        # (A pod without any termination message is not the runner, which always writes
        # one: a simulated pod, say. Nothing to judge it by.)
        return plan.then(published)
    # The runner exited 0, and neither it, the object store nor its termination message
    # holds a result: not a success.
    failed = st.Observation(
        R.FAILED,
        R.NO_RESULTS,
        "the runner exited 0 but left no results: it was not reached, and neither "
        "the object store nor its termination message holds any "
        f"(termination message: {message[:300]!r})",
        pod_name=ob.pod_name,
        start_time=ob.start_time,
        completion_time=ob.completion_time,
    )
    generation = int(run["metadata"].get("generation") or 1)
    return st.transition(
        status, failed, generation, status.get("specHash"), status.get("jobName"), now
    ).then(published)
