"""Queued runs and Kueue's Workloads: the pure decisions (reconcile/kueue.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from lmms_operator.api import EvalRunSpec
from lmms_operator.errors import InvalidSpec
from lmms_operator.reconcile import admission, kueue
from lmms_operator.reconcile import job as jobs
from lmms_operator.reconcile import reasons as R
from lmms_operator.reconcile import status as st
from lmms_operator.reconcile.placement import PlacementPolicy
from lmms_operator.reconcile.validate import Policy, validate

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _workload(
    active: bool = True, conditions: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": "job-run-abc"},
        "spec": {"active": active},
        "status": {"conditions": conditions or []},
    }


PENDING = {
    "type": "QuotaReserved",
    "status": "False",
    "reason": "Pending",
    "message": "couldn't assign flavors to pod set main: insufficient unused quota for "
    "nvidia.com/gpu in flavor gpu, 2 more needed",
}
PREEMPTED = {
    "type": "Evicted",
    "status": "True",
    "reason": "Preempted",
    "message": "Preempted to accommodate a workload (UID: x) due to prioritization in the "
    "ClusterQueue",
}


def test_a_waiting_run_tells_the_workloads_reason() -> None:
    wl = kueue.workload(_workload(conditions=[PENDING]))
    reason, message = kueue.waiting(False, "team-a", wl)
    assert reason == R.QUEUED
    assert "LocalQueue 'team-a'" in message and "2 more needed" in message
    reason, message = kueue.waiting(
        False, "team-a", kueue.workload(_workload(conditions=[PREEMPTED]))
    )
    assert reason == R.PREEMPTED and "prioritization" in message and "resumes" in message
    inadmissible = dict(PENDING, reason="Inadmissible", message="LocalQueue team-a doesn't exist")
    reason, message = kueue.waiting(
        False, "team-a", kueue.workload(_workload(conditions=[inadmissible]))
    )
    assert reason == R.INADMISSIBLE and "doesn't exist" in message
    # No Workload yet (or no Kueue at all).
    assert kueue.waiting(False, "team-a", None)[0] == R.QUEUED
    assert kueue.waiting(True, "team-a", None)[0] == R.SUSPENDED


def test_a_queued_jobs_suspend_is_never_written() -> None:
    """spec.suspend holds a queued run through its Workload's spec.active; released only
    by the pass that sees suspend turn false."""
    active, inactive = kueue.workload(_workload()), kueue.workload(_workload(active=False))
    plan = kueue.hold(True, active)
    assert plan.activate == ("job-run-abc", False) and plan.suspend is None
    assert kueue.hold(True, inactive).activate is None
    assert kueue.hold(False, inactive).activate == ("job-run-abc", True)
    # An observation does not undo a deactivation by Kueue or an admin.
    assert not kueue.hold(False, inactive, release=False)
    # Kueue has yet to create the Workload: look again soon, then less often.
    assert kueue.hold(True, None).retry_after == kueue.WORKLOAD_RETRY
    assert kueue.hold(True, None, age=600).retry_after == kueue.WORKLOAD_PATIENCE
    assert kueue.hold(False, None).retry_after is None
    assert kueue.hold(False, None, waiting=True).retry_after == kueue.WORKLOAD_RETRY


def _spec(**scheduling: Any) -> EvalRunSpec:
    return EvalRunSpec.model_validate(
        {"model": {"type": "dummy", "pretrained": "x"}, "tasks": ["mme"], "scheduling": scheduling}
    )


def test_a_suspended_job_of_a_queued_run_is_queued_with_the_workloads_words() -> None:
    job = {"metadata": {"name": "j"}, "spec": {"suspend": True}, "status": {}}
    wl = kueue.workload(_workload(conditions=[PENDING]))
    ob = st.observe(False, False, "team-a", 1, 60, job, [], NOW, st.Timeouts(), wl)
    assert (ob.phase, ob.reason) == (R.QUEUED, R.QUEUED) and "2 more needed" in ob.message
    ob = st.observe(True, False, "team-a", 1, 60, job, [], NOW, st.Timeouts(), wl)
    assert (ob.phase, ob.reason) == (R.QUEUED, R.SUSPENDED)


def test_a_queued_run_suspended_before_it_started_gets_no_job() -> None:
    run = {
        "metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {},
    }
    spec = EvalRunSpec.model_validate(
        {
            "model": {"type": "dummy", "pretrained": "x"},
            "tasks": ["mme"],
            "suspend": True,
            "scheduling": {"queueName": "team-a"},
        }
    )
    rules = admission.Rules(Policy(), jobs.RunnerDefaults(), st.Timeouts())
    plan = admission.decide(admission.Snapshot(run=run, spec=spec, now=NOW), rules)
    assert plan.evaluation is None and not plan.create
    assert (plan.status["phase"], plan.status["reason"]) == (R.QUEUED, R.SUSPENDED)
    assert not plan.status.get("jobName")


def test_the_workload_priority_class_is_a_label_on_the_admins_list() -> None:
    spec = _spec(queueName="team-a", workloadPriorityClassName="eval-high")
    d = jobs.build(jobs.RunRef("r", "ns", "u"), spec, jobs.RunnerDefaults(), "t", [], None, None)
    labels = d.job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/priority-class"] == "eval-high"
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
    body = {"model": {"type": "dummy", "pretrained": "x"}, "tasks": ["mme"]}
    with pytest.raises(InvalidSpec, match=r"spec\.scheduling\.workloadPriorityClassName"):
        validate(
            {**body, "scheduling": {"queueName": "q", "workloadPriorityClassName": "x"}}, Policy()
        )
    allowed = Policy(placement=PlacementPolicy(priority_classes=frozenset({"x"})))
    with pytest.raises(InvalidSpec, match=r"needs spec\.scheduling\.queueName"):
        validate({**body, "scheduling": {"workloadPriorityClassName": "x"}}, allowed)
    validate({**body, "scheduling": {"queueName": "q", "workloadPriorityClassName": "x"}}, allowed)


def test_a_workload_conditions_text_is_bounded_where_it_is_read() -> None:
    """Kueue's condition messages may hold 32 KiB; the run's status quotes them in a
    message of its own, whose schema bound must hold whatever Kueue wrote."""
    wl = kueue.workload(
        {
            "metadata": {"name": "job-r-abc"},
            "status": {
                "conditions": [
                    {
                        "type": "QuotaReserved",
                        "status": "False",
                        "reason": "R" * 5000,
                        "message": "m" * 40000,
                    }
                ]
            },
        }
    )
    assert wl is not None and wl.pending is not None
    reason, message = wl.pending
    assert len(reason) == kueue.MAX_REASON and len(message) == kueue.MAX_MESSAGE
    assert len(kueue.waiting(False, "q" * 63, wl)[1]) < 4096
