"""Observed Job and pods -> phase, reason and message (pure)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from lmms_operator.reconcile import reasons as R
from lmms_operator.reconcile import status as st

NOW = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.UTC)
S = st.Timeouts(unschedulable=60, image_pull=60, container_config=60, pod_creation=60)


def job(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "j"}, "spec": {}, "status": status}


def pod(
    phase: str = "Pending",
    container: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    created: str = "2026-11-27T11:59:00Z",
    name: str = "j-abc",
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if container is not None:
        status["containerStatuses"] = [{"name": "runner", **container}]
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"containers": [{"image": "img:1"}]},
        "status": status,
    }


def observe(j: dict[str, Any] | None, pods: list[dict[str, Any]], **kw: Any) -> st.Observation:
    args: dict[str, Any] = {
        "spec_suspend": False,
        "cancel": False,
        "queue_name": None,
        "retries": 1,
        "timeout_seconds": 600,
    }
    args.update(kw)
    return st.observe(job=j, pods=pods, now=NOW, timeouts=S, **args)


def failed_job(reason: str) -> dict[str, Any]:
    return job(
        conditions=[
            {
                "type": "Failed",
                "status": "True",
                "reason": reason,
                "lastTransitionTime": "2026-11-27T11:59:59Z",
            }
        ]
    )


def terminated(code: int, reason: str = "Error", message: str = "") -> dict[str, Any]:
    return {"state": {"terminated": {"exitCode": code, "reason": reason, "message": message}}}


def test_no_job_yet_is_pending() -> None:
    assert observe(None, []).phase == "Pending"


def test_running_and_succeeded() -> None:
    assert observe(job(active=1), [pod("Running")]).phase == "Running"
    done = observe(
        job(
            conditions=[{"type": "Complete", "status": "True"}],
            completionTime="2026-11-27T11:59:30Z",
        ),
        [pod("Succeeded")],
    )
    assert (done.phase, done.reason, done.completion_time) == (
        "Succeeded",
        R.SUCCEEDED,
        "2026-11-27T11:59:30Z",
    )


def test_a_finished_pod_before_job_completion_stays_running() -> None:
    assert observe(job(), [pod("Succeeded")]).phase == "Running"


def test_failure_reasons() -> None:
    assert observe(failed_job("DeadlineExceeded"), []).reason == R.DEADLINE_EXCEEDED
    oom = observe(failed_job("BackoffLimitExceeded"), [pod("Failed", terminated(137, "OOMKilled"))])
    assert oom.reason == R.OOM_KILLED
    runner = observe(
        failed_job("PodFailurePolicy"),
        [pod("Failed", terminated(3, message="task mme: no results"))],
    )
    assert runner.reason == R.RUNNER_ERROR and "task mme: no results" in runner.message
    crash = observe(failed_job("BackoffLimitExceeded"), [pod("Failed", terminated(1))])
    assert crash.reason == R.BACKOFF_LIMIT_EXCEEDED and "code 1" in crash.message


def test_unschedulable_waits_then_fails_and_stops_the_job() -> None:
    def cond(since: str) -> list[dict[str, Any]]:
        return [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
                "lastTransitionTime": since,
            }
        ]

    early = observe(job(active=1), [pod(conditions=cond("2026-11-27T11:59:30Z"))])
    assert (early.phase, early.reason, early.stop_job) == ("Pending", R.UNSCHEDULABLE, False)
    late = observe(job(active=1), [pod(conditions=cond("2026-11-27T11:58:00Z"))])
    assert (late.phase, late.reason, late.stop_job) == ("Failed", R.UNSCHEDULABLE, True)
    assert "Insufficient nvidia.com/gpu" in late.message


def test_image_pull() -> None:
    backoff = {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
    early = observe(job(active=1), [pod(container=backoff, created="2026-11-27T11:59:50Z")])
    assert (early.phase, early.reason) == ("Pending", R.IMAGE_PULL_BACKOFF)
    late = observe(job(active=1), [pod(container=backoff, created="2026-11-27T11:50:00Z")])
    assert (late.phase, late.reason, late.stop_job) == ("Failed", R.IMAGE_PULL_ERROR, True)
    invalid = {"state": {"waiting": {"reason": "InvalidImageName"}}}
    assert observe(job(active=1), [pod(container=invalid)]).phase == "Failed"


def test_a_container_that_cannot_be_created_fails_after_its_timeout() -> None:
    config = {
        "state": {
            "waiting": {
                "reason": "CreateContainerConfigError",
                "message": "couldn't find key token in Secret t/hf",
            }
        }
    }
    early = observe(job(active=1), [pod(container=config, created="2026-11-27T11:59:50Z")])
    assert (early.phase, early.reason, early.stop_job) == (
        "Pending",
        R.CONTAINER_CONFIG_ERROR,
        False,
    )
    late = observe(job(active=1), [pod(container=config, created="2026-11-27T11:58:00Z")])
    assert (late.phase, late.reason, late.stop_job) == ("Failed", R.CONTAINER_CONFIG_ERROR, True)
    assert "couldn't find key token" in late.message


def test_a_job_that_creates_no_pod_fails_after_its_timeout() -> None:
    def created(at: str) -> dict[str, Any]:
        j = job()
        j["metadata"]["creationTimestamp"] = at
        return j

    early = observe(created("2026-11-27T11:59:30Z"), [])
    assert (early.phase, early.reason, early.stop_job) == ("Pending", R.JOB_PENDING, False)
    late = observe(created("2026-11-27T11:58:00Z"), [])
    assert (late.phase, late.reason, late.stop_job) == ("Failed", R.POD_CREATION_FAILED, True)
    assert "FailedCreate" in late.message
    # A suspended Job (Kueue's queue) is not stuck.
    queued = created("2026-11-27T11:00:00Z")
    queued["spec"]["suspend"] = True
    assert observe(queued, [], queue_name="q").phase == "Queued"


def test_a_resumed_job_counts_its_pod_creation_from_its_resumption() -> None:
    """Kueue admits a Job that waited longer than the pod-creation timeout by unsuspending
    it: until the Job controller sees it resumed (its Suspended condition still True) the
    run is pending, and from then the timeout counts from the resumption (a campaign
    behind Kueue lost a run to PodCreationFailed the moment its Job was admitted)."""
    admitted = job()
    admitted["metadata"]["creationTimestamp"] = "2026-11-27T11:00:00Z"
    suspended = {
        "type": "Suspended",
        "status": "True",
        "lastTransitionTime": "2026-11-27T11:00:01Z",
    }
    admitted["status"] = {"conditions": [suspended]}
    assert observe(admitted, []).reason == R.JOB_PENDING
    resumed = {**suspended, "status": "False", "lastTransitionTime": "2026-11-27T11:59:50Z"}
    admitted["status"] = {"conditions": [resumed], "startTime": "2026-11-27T11:00:01Z"}
    assert observe(admitted, []).reason == R.JOB_PENDING
    resumed["lastTransitionTime"] = "2026-11-27T11:50:00Z"
    admitted["status"] = {"conditions": [resumed], "startTime": "2026-11-27T11:50:00Z"}
    assert observe(admitted, []).reason == R.POD_CREATION_FAILED


def test_suspended_and_queued() -> None:
    suspended = {"metadata": {"name": "j"}, "spec": {"suspend": True}, "status": {}}
    assert observe(suspended, [], spec_suspend=True).reason == R.SUSPENDED
    queued = observe(suspended, [], queue_name="team-a")
    assert (queued.phase, queued.reason) == ("Queued", R.QUEUED) and "team-a" in queued.message


def test_cancel_wins() -> None:
    assert observe(job(active=1), [pod("Running")], cancel=True).phase == "Cancelled"


def test_conditions_follow_kstatus_and_keep_transition_times() -> None:
    running = st.Observation("Running", R.RUNNING, "running")
    first = st.conditions([], running, 3, NOW)
    by = {c["type"]: c for c in first}
    assert by["Ready"]["status"] == "False" and by["Reconciling"]["status"] == "True"
    assert by["Stalled"]["status"] == "False"
    assert all(c["observedGeneration"] == 3 for c in first)
    later = st.conditions(first, running, 3, NOW + dt.timedelta(minutes=5))
    assert later == first  # nothing changed, nothing moves
    failed = st.conditions(
        first, st.Observation("Failed", R.OOM_KILLED, "oom"), 3, NOW + dt.timedelta(minutes=5)
    )
    by = {c["type"]: c for c in failed}
    assert by["Stalled"]["status"] == "True" and by["Stalled"]["reason"] == R.OOM_KILLED
    assert by["Ready"]["lastTransitionTime"] == first[0]["lastTransitionTime"]


def test_conditions_keep_runner_reachable() -> None:
    reachable = {
        "type": "RunnerReachable",
        "status": "False",
        "reason": "ScrapeFailed",
        "message": "connection refused",
        "lastTransitionTime": "2026-11-27T00:00:00Z",
        "observedGeneration": 1,
    }
    ob = st.Observation("Running", "Running", "pod p is running")
    out = st.conditions([reachable], ob, 1, NOW)
    assert reachable in out
    assert {c["type"] for c in out} >= {"Ready", "Reconciling", "Stalled", "RunnerReachable"}


def test_transition_writes_what_changed_and_says_so_once() -> None:
    running = st.Observation("Running", R.RUNNING, "pod p is running", pod_name="p")
    plan = st.transition({}, running, 1, "h", "j", NOW)
    assert plan.status["phase"] == "Running" and plan.status["jobName"] == "j"
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "Running")]
    # The same observation again: nothing to write, nothing to say.
    again = st.transition(dict(plan.status), running, 1, "h", "j", NOW)
    assert not again.status and not again.events
    failed = st.Observation("Failed", R.OOM_KILLED, "pod p ran out of memory")
    plan = st.transition(dict(plan.status), failed, 1, "h", "j", NOW)
    assert plan.status["phase"] == "Failed"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "OOMKilled")]


def test_quiet_pending_reasons_post_no_event() -> None:
    starting = st.Observation("Pending", R.STARTING, "pod p is starting")
    plan = st.transition({"phase": "Queued"}, starting, 1, "h", "j", NOW)
    assert plan.status["reason"] == "Starting" and not plan.events


def test_passing_states_are_shown_once_they_last() -> None:
    fresh = st.Observation("Pending", R.STARTING, "pod p is starting", passing=True, since=NOW)
    assert not fresh.lasted(NOW + dt.timedelta(seconds=10))
    assert fresh.lasted(NOW + dt.timedelta(seconds=st.PASSING_GRACE))
    # Without a known start, a passing state is shown when the resync sees it.
    assert st.Observation("Pending", R.JOB_PENDING, "", passing=True).lasted(NOW)
