"""Observed state (Job, pods) -> the EvalRun's status. Pure functions.

The phase says where the run stands; conditions follow KEP-1623 and kstatus:
``Ready`` (True once Succeeded), ``Reconciling`` (True while the run is active),
``Stalled`` (True once Failed), ``Suspended``, ``PodScheduled``, ``Complete`` and ``Failed``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, cast

from ..api import Condition, EvalRunStatus, Phase
from ..api.runner import EXIT_CONFIG_ERROR, EXIT_EVALUATION_FAILED, EXIT_UPLOAD_FAILED
from . import conditions as C
from . import kueue
from . import reasons as R
from .grammar import escape_hidden
from .plan import Event, Plan, StatusPatch
from .pods import runner_failure
from .times import duration, fmt_time, parse_time

TERMINAL = R.TERMINAL
ACTIVE = R.ACTIVE

#: Exit codes the runner uses for failures it understood (see lmms_runner).
RUNNER_EXIT_CODES = {
    EXIT_CONFIG_ERROR: "configuration error",
    EXIT_EVALUATION_FAILED: "evaluation failed",
    EXIT_UPLOAD_FAILED: "upload failed",
}

#: Seconds a passing state lasts before the status shows it.
PASSING_GRACE = 30.0

IMAGE_PULL_FATAL = frozenset({"InvalidImageName", "ErrImageNeverPull"})
IMAGE_PULL_RETRYING = frozenset({"ErrImagePull", "ImagePullBackOff"})
CONFIG_WAITING = frozenset({"CreateContainerConfigError", "CreateContainerError"})


@dataclass(frozen=True)
class Timeouts:
    """How long a pod may wait for what it cannot get before the run fails (seconds)."""

    unschedulable: float = 600.0
    image_pull: float = 300.0
    # A container that cannot be created (a missing Secret key, a bad volume) and a Job
    # whose pods cannot be created (FailedCreate: a quota, an admission policy).
    container_config: float = 300.0
    pod_creation: float = 300.0


@dataclass
class Observation:
    """The status the operator should write, and what it must do about the Job."""

    phase: str
    reason: str
    message: str
    pod_name: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    scheduled: tuple[str, str, str] | None = None  # (status, reason, message)
    stop_job: bool = False  # the run failed while its Job still holds resources
    # A passing state (a pod being scheduled or started, a finished pod whose Job is
    # completing): worth a status write only once it has lasted PASSING_GRACE (the
    # periodic resync writes it then), not on every pod event of a burst.
    passing: bool = False
    since: dt.datetime | None = None  # when the passing state began, where known

    def lasted(self, now: dt.datetime) -> bool:
        """Whether a passing state has lasted long enough to be worth a status write."""
        return self.since is None or (now - self.since).total_seconds() >= PASSING_GRACE

    extra: dict[str, Any] = field(default_factory=dict)


def _cond(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in obj.get("status", {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return dict(c)
    return None


def _newest(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not pods:
        return None
    return max(
        pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"])
    )


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    for s in statuses:
        if s.get("name") == "runner":
            return dict(s)
    return dict(statuses[0]) if statuses else {}


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    state = _container(pod).get("state") or {}
    term = state.get("terminated")
    return dict(term) if term else None


def _since(pod: dict[str, Any], ctype: str) -> dt.datetime | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return parse_time(c.get("lastTransitionTime"))
    return None


def _failed_pod_reason(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The reason a Job failed, from its newest failed pod."""
    failed = [p for p in pods if p.get("status", {}).get("phase") == R.POD_FAILED]
    pod = _newest(failed)
    if pod is None:
        return None
    term = _terminated(pod) or {}
    code = term.get("exitCode")
    # The termination message is the container's (the tenant's code may write it): its
    # controls and bidi characters reach the status and Events escaped.
    message = escape_hidden((term.get("message") or "").strip(), keep="\n")
    name = pod["metadata"]["name"]
    if term.get("reason") == "OOMKilled":
        return R.OOM_KILLED, (
            f"pod {name} ran out of memory (OOMKilled); raise spec.resources.memory or lower "
            "spec.evaluation.batchSize"
        )
    if code in RUNNER_EXIT_CODES:
        detail = f": {message}" if message else ""
        generic = R.RUNNER_ERROR, f"runner {RUNNER_EXIT_CODES[code]} (exit code {code}){detail}"
        return runner_failure(message) or generic
    pod_reason = pod.get("status", {}).get("reason")
    if code is None and pod_reason:
        return R.BACKOFF_LIMIT_EXCEEDED, f"pod {name} failed: {pod_reason}"
    tail = f"; last output: {message[-1000:]}" if message else ""
    return R.BACKOFF_LIMIT_EXCEEDED, f"pod {name} exited with code {code}{tail}"


def observe(
    spec_suspend: bool,
    cancel: bool,
    queue_name: str | None,
    retries: int,
    timeout_seconds: int,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    now: dt.datetime,
    timeouts: Timeouts,
    workload: kueue.Workload | None = None,
) -> Observation:
    """What the run's status is, given its current Job (None: not created yet), pods and
    (queued) Kueue Workload.

    The first state that holds wins: cancelled, no Job yet, the Job's verdict, suspended,
    no pod yet, a pod that cannot be scheduled or started, then how far the pods got."""
    if cancel:
        message = "spec.cancel is true: the evaluation was stopped"
        return Observation(R.CANCELLED, R.CANCELLED, message, completion_time=fmt_time(now))
    if job is None:
        return Observation(R.PENDING, R.JOB_PENDING, "creating the Job")
    job_status = job.get("status") or {}
    pod = _newest(pods)
    seen = _Seen(pod["metadata"]["name"] if pod else None, job_status.get("startTime"), now)
    finished = _finished(job, pods, retries, timeout_seconds, seen)
    if finished is not None:
        return finished
    if (job.get("spec") or {}).get("suspend"):
        return _suspended(spec_suspend, queue_name, workload, seen)
    if pod is None:
        return _no_pod(job, timeouts, seen)
    scheduled, unschedulable = _scheduling(pod, timeouts, seen)
    if unschedulable is not None:
        return unschedulable
    waiting = _waiting(pod, scheduled, timeouts, seen)
    if waiting is not None:
        return waiting
    return _progress(pods, pod, job_status, scheduled, seen)


@dataclass(frozen=True)
class _Seen:
    """What every observation of a created Job carries: its newest pod and its start."""

    pod_name: str | None
    start: str | None
    now: dt.datetime

    def obs(self, phase: str, reason: str, message: str, **kw: Any) -> Observation:
        return Observation(
            phase, reason, message, pod_name=self.pod_name, start_time=self.start, **kw
        )

    def failed(self, reason: str, message: str, **kw: Any) -> Observation:
        """Failed now, and the Job stopped to release its GPUs."""
        return self.obs(
            R.FAILED, reason, message, completion_time=fmt_time(self.now), stop_job=True, **kw
        )

    def stuck(
        self, reason: str, message: str, waited: float, limit: float, **kw: Any
    ) -> Observation:
        """Failed once a waiting state has lasted ``limit`` seconds; until then Pending
        with the same reason."""
        if waited >= limit:
            return self.failed(reason, f"{message} (waited {int(waited)}s)", **kw)
        return self.obs(R.PENDING, reason, message, **kw)


def _finished(
    job: dict[str, Any], pods: list[dict[str, Any]], retries: int, timeout_seconds: int, seen: _Seen
) -> Observation | None:
    """The Job's own verdict, with the cause its pods tell; None while it has none."""
    job_status = job.get("status") or {}
    complete = _cond(job, R.JOB_COMPLETE)
    if complete:
        done = job_status.get("completionTime") or complete.get("lastTransitionTime")
        return seen.obs(R.SUCCEEDED, R.SUCCEEDED, "the evaluation finished", completion_time=done)
    failed = _cond(job, R.JOB_FAILED)
    if not failed:
        return None
    done = failed.get("lastTransitionTime") or fmt_time(seen.now)
    job_reason = failed.get("reason") or ""
    if job_reason == "DeadlineExceeded":
        message = f"the evaluation ran longer than spec.timeoutSeconds ({timeout_seconds}s)"
        return seen.obs(R.FAILED, R.DEADLINE_EXCEEDED, message, completion_time=done)
    from_pod = _failed_pod_reason(pods)
    if from_pod:
        reason, message = from_pod
        if reason == R.BACKOFF_LIMIT_EXCEEDED:
            message = f"failed {retries + 1} time(s) (spec.retries={retries}); {message}"
        if job_status.get("failedIndexes"):
            # parallelism > 1: each shard has its own retries (backoffLimitPerIndex).
            message = f"shard(s) {job_status['failedIndexes']} failed: {message}"
        return seen.obs(R.FAILED, reason, message, completion_time=done)
    message = failed.get("message") or f"the Job failed ({job_reason})"
    return seen.obs(R.FAILED, R.BACKOFF_LIMIT_EXCEEDED, message, completion_time=done)


def _suspended(
    spec_suspend: bool, queue_name: str | None, workload: kueue.Workload | None, seen: _Seen
) -> Observation:
    """Suspended by spec.suspend, or by Kueue until it admits the Job (its Workload says why)."""
    if queue_name:
        return seen.obs(R.QUEUED, *kueue.waiting(spec_suspend, queue_name, workload))
    if spec_suspend:
        return seen.obs(R.QUEUED, R.SUSPENDED, "spec.suspend is true: the Job is suspended")
    return seen.obs(R.QUEUED, R.SUSPENDED, "the Job is suspended")


def _no_pod(job: dict[str, Any], timeouts: Timeouts, seen: _Seen) -> Observation:
    """A Job whose controller has yet to create a pod, or cannot."""
    since = parse_time((job.get("status") or {}).get("startTime")) or parse_time(
        (job.get("metadata") or {}).get("creationTimestamp")
    )
    waited = (seen.now - since).total_seconds() if since else 0.0
    if waited >= timeouts.pod_creation:
        message = (
            f"the Job controller created no pod in {int(waited)}s (see the Job's "
            "FailedCreate events: a quota or an admission policy refuses its pods)"
        )
        return seen.failed(R.POD_CREATION_FAILED, message)
    message = "waiting for the Job controller to create a pod"
    return seen.obs(R.PENDING, R.JOB_PENDING, message, passing=True, since=since)


def _scheduling(
    pod: dict[str, Any], timeouts: Timeouts, seen: _Seen
) -> tuple[tuple[str, str, str] | None, Observation | None]:
    """The pod's PodScheduled condition (status, reason, message), and the observation
    once the scheduler says it cannot place the pod."""
    scheduled = None
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == R.POD_SCHEDULED:
            scheduled = (
                c.get("status", "Unknown"),
                c.get("reason") or R.SCHEDULED,
                c.get("message") or "",
            )
            if c.get("status") == "False" and c.get("reason") == "Unschedulable":
                since = parse_time(c.get("lastTransitionTime")) or seen.now
                waited = (seen.now - since).total_seconds()
                message = f"pod {seen.pod_name} cannot be scheduled: {c.get('message', '')}".strip()
                return scheduled, seen.stuck(
                    R.UNSCHEDULABLE, message, waited, timeouts.unschedulable, scheduled=scheduled
                )
    return scheduled, None


def _waiting(
    pod: dict[str, Any], scheduled: tuple[str, str, str] | None, timeouts: Timeouts, seen: _Seen
) -> Observation | None:
    """A runner container that cannot start: its image cannot be pulled, or it cannot be
    created (a missing Secret key, a bad volume)."""
    waiting = (_container(pod).get("state") or {}).get("waiting") or {}
    wreason = waiting.get("reason") or ""
    if wreason in IMAGE_PULL_FATAL or wreason in IMAGE_PULL_RETRYING:
        created = parse_time(pod["metadata"].get("creationTimestamp")) or seen.now
        waited = (seen.now - created).total_seconds()
        image = (pod.get("spec", {}).get("containers") or [{}])[0].get("image")
        message = f"cannot pull image {image!r}: {wreason}: {waiting.get('message', '')}".strip()
        if wreason in IMAGE_PULL_FATAL or waited >= timeouts.image_pull:
            return seen.failed(R.IMAGE_PULL_ERROR, message, scheduled=scheduled)
        return seen.obs(R.PENDING, R.IMAGE_PULL_BACKOFF, message, scheduled=scheduled)
    if wreason in CONFIG_WAITING:
        created = parse_time(pod["metadata"].get("creationTimestamp")) or seen.now
        waited = (seen.now - created).total_seconds()
        message = f"pod {seen.pod_name}: {wreason}: {waiting.get('message', '')}"
        limit = timeouts.container_config
        return seen.stuck(R.CONTAINER_CONFIG_ERROR, message, waited, limit, scheduled=scheduled)
    return None


def _progress(
    pods: list[dict[str, Any]],
    pod: dict[str, Any],
    job_status: dict[str, Any],
    scheduled: tuple[str, str, str] | None,
    seen: _Seen,
) -> Observation:
    """How far the pods got: running, finished (the Job completing), failed (the Job
    retrying), starting, or waiting to be scheduled."""
    name, phase = seen.pod_name, (pod.get("status") or {}).get("phase")
    if any((p.get("status") or {}).get("phase") == R.POD_RUNNING for p in pods):
        return seen.obs(R.RUNNING, R.RUNNING, f"pod {name} is running", scheduled=scheduled)
    if phase == R.POD_SUCCEEDED:
        since = parse_time((_terminated(pod) or {}).get("finishedAt"))
        message = f"pod {name} finished; the Job is completing"
        return seen.obs(
            R.RUNNING, R.RUNNING, message, passing=True, since=since, scheduled=scheduled
        )
    if phase == R.POD_FAILED and job_status.get("active", 0) == 0:
        message = f"pod {name} failed; the Job controller retries"
        return seen.obs(R.PENDING, R.RETRYING, message, scheduled=scheduled)
    if scheduled and scheduled[0] == "True":
        since = _since(pod, "PodScheduled")
        message = f"pod {name} is starting"
        return seen.obs(
            R.PENDING, R.STARTING, message, scheduled=scheduled, passing=True, since=since
        )
    since = parse_time(pod["metadata"].get("creationTimestamp"))
    message = f"pod {name} is waiting to be scheduled"
    return seen.obs(
        R.PENDING, R.SCHEDULING, message, scheduled=scheduled, passing=True, since=since
    )


def conditions(
    previous: list[dict[str, Any]], ob: Observation, generation: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """KEP-1623 conditions for an observation; lastTransitionTime moves only on change."""
    prev = {c.get("type"): c for c in previous or []}
    wanted: list[tuple[str, bool, str, str]] = [
        (R.READY, ob.phase == R.SUCCEEDED, ob.reason, ob.message),
        (R.RECONCILING, ob.phase in ACTIVE, ob.reason, ob.message),
        (R.STALLED, ob.phase == R.FAILED, ob.reason, ob.message),
        (R.SUSPENDED_CONDITION, ob.phase == R.QUEUED, ob.reason, ob.message),
        *((ctype, ob.phase in phases, ob.reason, ob.message) for ctype, phases in R.OUTCOMES),
    ]
    out = []
    for ctype, ok, reason, message in wanted:
        out.append(
            C.condition(
                prev.get(ctype), ctype, "True" if ok else "False", reason, message, now, generation
            )
        )
    if ob.scheduled:
        status, reason, message = ob.scheduled
        out.append(
            C.condition(
                prev.get(R.POD_SCHEDULED),
                R.POD_SCHEDULED,
                cast(C.Status, status),
                reason or R.SCHEDULED,
                message,
                now,
                generation,
            )
        )
    # Conditions set elsewhere (RunnerReachable and HarnessPatched, by the scrape) are
    # kept as they are.
    managed = {c["type"] for c in out}
    out += [dict(c) for t, c in prev.items() if t not in managed and t in _KEPT]
    return out


#: Condition types that conditions() does not compute but must not drop.
_KEPT = frozenset({R.RUNNER_REACHABLE, R.HARNESS_PATCHED})


#: Pending reasons that need no Event (JobCreated said it; the pod's own Events say more).
_QUIET = frozenset({R.JOB_PENDING, R.SCHEDULING, R.STARTING})
_WARN = frozenset({R.UNSCHEDULABLE, R.IMAGE_PULL_BACKOFF, R.CONTAINER_CONFIG_ERROR})


def transition(
    status: dict[str, Any],
    ob: Observation,
    generation: int,
    hash_: str | None,
    job_name: str | None,
    now: dt.datetime,
) -> Plan:
    """The status fields that change for an observation, and the Event that says so
    when the phase changes (or a waiting reason that needs attention appears)."""
    done = ob.phase in TERMINAL
    wanted = EvalRunStatus(
        phase=cast(Phase, ob.phase),
        reason=ob.reason,
        message=ob.message,
        observed_generation=generation,
        spec_hash=hash_,
        job_name=job_name,
        pod_name=ob.pod_name or status.get("podName"),
        start_time=ob.start_time or status.get("startTime"),
        completion_time=ob.completion_time if done else None,
        duration=duration(ob.start_time or status.get("startTime"), ob.completion_time),
        conditions=[
            Condition.model_validate(c)
            for c in conditions(status.get("conditions") or [], ob, generation, now)
        ],
        summary="100%" if ob.phase == R.SUCCEEDED else None,
    )
    fields = {"phase", "reason", "message", "observed_generation", "spec_hash", "job_name"}
    fields |= {"pod_name", "start_time", "completion_time", "duration", "conditions"}
    if done:
        fields.add("summary")  # a finished run shows 100% or nothing in the Progress column
    # Every field named is written, None included: a merge patch removes it.
    new = wanted.model_dump(by_alias=True, mode="json", include=fields)
    changed = {k: v for k, v in new.items() if status.get(k) != v}
    events: list[Event] = []
    quiet = ob.phase == R.PENDING and ob.reason in _QUIET
    if quiet:
        pass
    elif "phase" in changed or ("reason" in changed and ob.phase in TERMINAL):
        warn = ob.phase == R.FAILED or ob.reason in _WARN
        events.append(
            Event("Warning" if warn else "Normal", ob.reason, f"{ob.phase}: {ob.message}")
        )
    elif "reason" in changed and ob.reason in (R.UNSCHEDULABLE, R.IMAGE_PULL_BACKOFF):
        events.append(Event("Warning", ob.reason, ob.message))
    if set(changed) <= {"conditions"} and C.same(status.get("conditions"), new["conditions"]):
        return Plan(events=events)
    return Plan(status=cast(StatusPatch, changed), events=events)
