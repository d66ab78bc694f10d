"""Attacks from the second review of issue 31 (Kueue, leader election, runner pod
defaults): each test shows what a platform or a tenant relies on."""

from __future__ import annotations

import datetime as dt
from typing import Any

from lmms_operator import reads
from lmms_operator.api import EvalRunSpec
from lmms_operator.reconcile import admission, kueue, observation
from lmms_operator.reconcile import job as jobs
from lmms_operator.reconcile import reasons as R
from lmms_operator.reconcile import status as st
from lmms_operator.reconcile.validate import Policy

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
RULES = admission.Rules(Policy(), jobs.RunnerDefaults(), st.Timeouts())

# --- Kueue's default LocalQueue -----------------------------------------------------------
# Kueue 0.17's Job webhook labels every Job without a queue label
# ``kueue.x-k8s.io/queue-name: default`` when its namespace has a LocalQueue named
# ``default`` (LocalQueueDefaulting: GA and locked on in 0.17; jobframework/defaults.go),
# and then suspends it; a platform that wants every GPU Job behind its quota makes that
# LocalQueue in each tenant namespace. Such a run's Job is Kueue's although the run names
# no queue: its spec.suspend must be Kueue's too (Kueue unsuspends an admitted Job that
# anyone else suspends: jobframework/reconciler.go, "handle job is suspended").


def _spec(suspend: bool) -> EvalRunSpec:
    return EvalRunSpec.model_validate(
        {"model": {"type": "dummy", "pretrained": "x"}, "tasks": ["mme"], "suspend": suspend}
    )


def _run(spec: EvalRunSpec, generation: int, job_name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "r", "namespace": "team-a", "uid": "u", "generation": generation},
        "spec": spec.model_dump(by_alias=True, exclude_none=True),
        "status": {
            "phase": R.RUNNING,
            "reason": R.RUNNING,
            "specHash": jobs.spec_hash(spec),
            "jobName": job_name,
            "observedGeneration": 1,
        },
    }


def _defaulted_job(name: str, suspended: bool) -> dict[str, Any]:
    """The run's Job as Kueue's webhook left it: labelled with the default LocalQueue."""
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": "job-uid",
            "creationTimestamp": "2025-12-31T23:50:00Z",
            "labels": {kueue.QUEUE_LABEL: "default"},
        },
        "spec": {"suspend": suspended},
        "status": {} if suspended else {"active": 1, "startTime": "2025-12-31T23:51:00Z"},
    }


def _wl(active: bool = True, conditions: list[dict[str, str]] | None = None) -> kueue.Workload:
    wl = kueue.workload(
        {
            "metadata": {"name": "job-r-abc"},
            "spec": {"active": active, "queueName": "default"},
            "status": {"conditions": conditions or []},
        }
    )
    assert wl is not None
    return wl


def test_suspending_a_run_in_a_default_queued_namespace_holds_its_workload() -> None:
    """spec.suspend on a running run whose Job Kueue's default LocalQueue took: the
    operator deactivates the Workload, never writes the Job's suspend (Kueue would
    unsuspend the admitted Job at once: the run would go on running)."""
    spec = _spec(suspend=True)
    name = jobs.job_name("r", "u", jobs.spec_hash(spec))
    snap = admission.Snapshot(
        run=_run(spec, 2, name),
        spec=spec,
        now=NOW,
        job=_defaulted_job(name, suspended=False),
        workload=_wl(conditions=[{"type": "Admitted", "status": "True", "reason": "Admitted"}]),
    )
    plan = admission.decide(snap, RULES)
    assert plan.suspend is None, "the operator wrote the suspend of a Job Kueue owns"
    assert plan.activate == ("job-r-abc", False)


def test_a_default_queued_job_waiting_for_kueue_is_queued_not_resumed() -> None:
    """The run's Job waits for quota in the namespace's default LocalQueue: the status
    says so in the Workload's words, and no pass unsuspends the Job past Kueue."""
    spec = _spec(suspend=False)
    name = jobs.job_name("r", "u", jobs.spec_hash(spec))
    pending = {
        "type": "QuotaReserved",
        "status": "False",
        "reason": "Pending",
        "message": "insufficient unused quota for nvidia.com/gpu in flavor gpu, 1 more needed",
    }
    wl = _wl(conditions=[pending])
    job = _defaulted_job(name, suspended=True)
    snap = admission.Snapshot(run=_run(spec, 2, name), spec=spec, now=NOW, job=job, workload=wl)
    plan = admission.decide(snap, RULES)
    assert plan.suspend is None, "the operator unsuspended a Job Kueue has not admitted"
    assert plan.status["reason"] == R.QUEUED
    assert "1 more needed" in str(plan.status["message"])
    run = _run(spec, 1, name)
    plan = observation.decide(run, spec, job, [], NOW, st.Timeouts(), workload=wl)
    assert plan.suspend is None
    assert plan.status["reason"] == R.QUEUED and "1 more needed" in str(plan.status["message"])


class _OneWorkload:
    """The API's Workload read, and nothing else (a unit test of ``reads.workload``)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def workload_of_job(
        self, namespace: str, uid: str, names: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        self.asked.append((namespace, uid))
        return {"metadata": {"name": "job-r-abc"}, "spec": {"active": True}}


def test_the_workload_of_a_job_kueue_labelled_is_read() -> None:
    api = _OneWorkload()
    job = _defaulted_job("j", suspended=True)
    wl = reads.workload(api, _spec(suspend=False), job)  # type: ignore[arg-type]
    assert wl is not None and api.asked == [("team-a", "job-uid")]


def test_a_run_suspended_before_it_started_gets_no_job_queued_or_not() -> None:
    """A run created with spec.suspend: true gets no Job until it is resumed, with or
    without a queueName: in a namespace with Kueue's ``default`` LocalQueue, Kueue takes
    any Job, and could admit one created suspended before its Workload was deactivated."""
    spec = _spec(suspend=True)
    run = {
        "metadata": {"name": "r", "namespace": "team-a", "uid": "u", "generation": 1},
        "spec": spec.model_dump(by_alias=True, exclude_none=True),
    }
    plan = admission.decide(admission.Snapshot(run=run, spec=spec, now=NOW), RULES)
    assert plan.evaluation is None and not plan.create, "a Job was made for a suspended run"
    assert plan.status["phase"] == R.QUEUED and plan.status["reason"] == R.SUSPENDED
    assert "once it is false" in str(plan.status["message"])
    resumed = _spec(suspend=False)
    run["spec"] = resumed.model_dump(by_alias=True, exclude_none=True)
    run["status"] = dict(plan.status)
    plan = admission.decide(admission.Snapshot(run=run, spec=resumed, now=NOW), RULES)
    assert plan.evaluation is not None, "resuming made no Job"
