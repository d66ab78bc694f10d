"""Observed state (Job, pods) -> the EvalRun's status. Pure functions.

The phase says where the run stands; conditions follow KEP-1623 and kstatus:
``Ready`` (True once Succeeded), ``Reconciling`` (True while the run is active),
``Stalled`` (True once Failed), ``Suspended`` and ``PodScheduled``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from ..api import Condition, EvalRunStatus, Phase
from ..api.runner import EXIT_CONFIG_ERROR, EXIT_EVALUATION_FAILED, EXIT_UPLOAD_FAILED
from . import reasons as R
from .plan import Event, Plan

TERMINAL = frozenset({"Succeeded", "Failed", "Cancelled"})
ACTIVE = frozenset({"Pending", "Queued", "Running"})

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


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def fmt_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    failed = [p for p in pods if p.get("status", {}).get("phase") == "Failed"]
    pod = _newest(failed)
    if pod is None:
        return None
    term = _terminated(pod) or {}
    code = term.get("exitCode")
    message = (term.get("message") or "").strip()
    name = pod["metadata"]["name"]
    if term.get("reason") == "OOMKilled":
        return R.OOM_KILLED, (
            f"pod {name} ran out of memory (OOMKilled); raise spec.resources.memory or lower "
            "spec.evaluation.batchSize"
        )
    if code in RUNNER_EXIT_CODES:
        detail = f": {message}" if message else ""
        return R.RUNNER_ERROR, f"runner {RUNNER_EXIT_CODES[code]} (exit code {code}){detail}"
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
) -> Observation:
    """What the run's status is, given its current Job (None: not created yet) and pods."""
    if cancel:
        return Observation(
            "Cancelled",
            R.CANCELLED,
            "spec.cancel is true: the evaluation was stopped",
            completion_time=fmt_time(now),
        )
    if job is None:
        return Observation("Pending", R.JOB_PENDING, "creating the Job")
    job_status = job.get("status") or {}
    pod = _newest(pods)
    pod_name = pod["metadata"]["name"] if pod else None
    start = job_status.get("startTime")

    def obs(phase: str, reason: str, message: str, **kw: Any) -> Observation:
        return Observation(phase, reason, message, pod_name=pod_name, start_time=start, **kw)

    def stuck(reason: str, message: str, waited: float, limit: float, **kw: Any) -> Observation:
        """Failed (the Job stopped, releasing its GPUs) once a waiting state has lasted
        ``limit`` seconds; until then Pending with the same reason."""
        if waited >= limit:
            return obs(
                "Failed",
                reason,
                f"{message} (waited {int(waited)}s)",
                completion_time=fmt_time(now),
                stop_job=True,
                **kw,
            )
        return obs("Pending", reason, message, **kw)

    complete = _cond(job, "Complete")
    if complete:
        done = job_status.get("completionTime") or complete.get("lastTransitionTime")
        return obs("Succeeded", R.SUCCEEDED, "the evaluation finished", completion_time=done)
    failed = _cond(job, "Failed")
    if failed:
        done = failed.get("lastTransitionTime") or fmt_time(now)
        job_reason = failed.get("reason") or ""
        if job_reason == "DeadlineExceeded":
            return obs(
                "Failed",
                R.DEADLINE_EXCEEDED,
                f"the evaluation ran longer than spec.timeoutSeconds ({timeout_seconds}s)",
                completion_time=done,
            )
        from_pod = _failed_pod_reason(pods)
        if from_pod:
            reason, message = from_pod
            if reason == R.BACKOFF_LIMIT_EXCEEDED:
                message = f"failed {retries + 1} time(s) (spec.retries={retries}); {message}"
            if job_status.get("failedIndexes"):
                # parallelism > 1: each shard has its own retries (backoffLimitPerIndex).
                message = f"shard(s) {job_status['failedIndexes']} failed: {message}"
            return obs("Failed", reason, message, completion_time=done)
        return obs(
            "Failed",
            R.BACKOFF_LIMIT_EXCEEDED,
            failed.get("message") or f"the Job failed ({job_reason})",
            completion_time=done,
        )

    if (job.get("spec") or {}).get("suspend"):
        if spec_suspend:
            return obs("Queued", R.SUSPENDED, "spec.suspend is true: the Job is suspended")
        if queue_name:
            return obs(
                "Queued",
                R.QUEUED,
                f"waiting for Kueue to admit the Job in LocalQueue {queue_name!r}",
            )
        return obs("Queued", R.SUSPENDED, "the Job is suspended")

    if pod is None:
        since = parse_time(job_status.get("startTime")) or parse_time(
            (job.get("metadata") or {}).get("creationTimestamp")
        )
        waited = (now - since).total_seconds() if since else 0.0
        if waited >= timeouts.pod_creation:
            return obs(
                "Failed",
                R.POD_CREATION_FAILED,
                f"the Job controller created no pod in {int(waited)}s (see the Job's "
                "FailedCreate events: a quota or an admission policy refuses its pods)",
                completion_time=fmt_time(now),
                stop_job=True,
            )
        return obs(
            "Pending",
            R.JOB_PENDING,
            "waiting for the Job controller to create a pod",
            passing=True,
            since=since,
        )

    pod_status = pod.get("status") or {}
    scheduled = None
    for c in pod_status.get("conditions") or []:
        if c.get("type") == R.POD_SCHEDULED:
            scheduled = (
                c.get("status", "Unknown"),
                c.get("reason") or R.SCHEDULED,
                c.get("message") or "",
            )
            if c.get("status") == "False" and c.get("reason") == "Unschedulable":
                since = parse_time(c.get("lastTransitionTime")) or now
                waited = (now - since).total_seconds()
                message = f"pod {pod_name} cannot be scheduled: {c.get('message', '')}".strip()
                return stuck(
                    R.UNSCHEDULABLE, message, waited, timeouts.unschedulable, scheduled=scheduled
                )

    waiting = (_container(pod).get("state") or {}).get("waiting") or {}
    wreason = waiting.get("reason") or ""
    if wreason in IMAGE_PULL_FATAL or wreason in IMAGE_PULL_RETRYING:
        created = parse_time(pod["metadata"].get("creationTimestamp")) or now
        waited = (now - created).total_seconds()
        image = (pod.get("spec", {}).get("containers") or [{}])[0].get("image")
        message = f"cannot pull image {image!r}: {wreason}: {waiting.get('message', '')}".strip()
        if wreason in IMAGE_PULL_FATAL or waited >= timeouts.image_pull:
            return obs(
                "Failed",
                R.IMAGE_PULL_ERROR,
                message,
                completion_time=fmt_time(now),
                stop_job=True,
                scheduled=scheduled,
            )
        return obs("Pending", R.IMAGE_PULL_BACKOFF, message, scheduled=scheduled)
    if wreason in CONFIG_WAITING:
        created = parse_time(pod["metadata"].get("creationTimestamp")) or now
        waited = (now - created).total_seconds()
        message = f"pod {pod_name}: {wreason}: {waiting.get('message', '')}"
        return stuck(
            R.CONTAINER_CONFIG_ERROR,
            message,
            waited,
            timeouts.container_config,
            scheduled=scheduled,
        )

    active_running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if active_running:
        return obs("Running", R.RUNNING, f"pod {pod_name} is running", scheduled=scheduled)
    if pod_status.get("phase") == "Succeeded":
        return obs(
            "Running",
            R.RUNNING,
            f"pod {pod_name} finished; the Job is completing",
            passing=True,
            since=parse_time((_terminated(pod) or {}).get("finishedAt")),
            scheduled=scheduled,
        )
    if pod_status.get("phase") == "Failed" and job_status.get("active", 0) == 0:
        return obs(
            "Pending",
            R.RETRYING,
            f"pod {pod_name} failed; the Job controller retries",
            scheduled=scheduled,
        )
    if scheduled and scheduled[0] == "True":
        return obs(
            "Pending",
            R.STARTING,
            f"pod {pod_name} is starting",
            scheduled=scheduled,
            passing=True,
            since=_since(pod, "PodScheduled"),
        )
    return obs(
        "Pending",
        R.SCHEDULING,
        f"pod {pod_name} is waiting to be scheduled",
        scheduled=scheduled,
        passing=True,
        since=parse_time(pod["metadata"].get("creationTimestamp")),
    )


def conditions(
    previous: list[dict[str, Any]], ob: Observation, generation: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """KEP-1623 conditions for an observation; lastTransitionTime moves only on change."""
    prev = {c.get("type"): c for c in previous or []}
    wanted: list[tuple[str, bool, str, str]] = [
        (R.READY, ob.phase == "Succeeded", ob.reason, ob.message),
        (R.RECONCILING, ob.phase in ACTIVE, ob.reason, ob.message),
        (R.STALLED, ob.phase == "Failed", ob.reason, ob.message),
        (R.SUSPENDED_CONDITION, ob.phase == "Queued", ob.reason, ob.message),
    ]
    out = []
    for ctype, ok, reason, message in wanted:
        out.append(
            _condition(
                prev.get(ctype), ctype, "True" if ok else "False", reason, message, generation, now
            )
        )
    if ob.scheduled:
        status, reason, message = ob.scheduled
        out.append(
            _condition(
                prev.get(R.POD_SCHEDULED),
                R.POD_SCHEDULED,
                status,
                reason or R.SCHEDULED,
                message,
                generation,
                now,
            )
        )
    # Conditions set elsewhere (RunnerReachable, by the scrape) are kept as they are.
    managed = {c["type"] for c in out}
    out += [dict(c) for t, c in prev.items() if t not in managed and t in _KEPT]
    return out


#: Condition types that conditions() does not compute but must not drop.
_KEPT = frozenset({R.RUNNER_REACHABLE})


def _condition(
    prev: dict[str, Any] | None,
    ctype: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: dt.datetime,
) -> dict[str, Any]:
    changed = prev is None or prev.get("status") != status
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": fmt_time(now)
        if changed or prev is None
        else prev.get("lastTransitionTime", fmt_time(now)),
        "observedGeneration": generation,
    }


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
        conditions=[
            Condition.model_validate(c)
            for c in conditions(status.get("conditions") or [], ob, generation, now)
        ],
        summary="100%" if ob.phase == "Succeeded" else None,
    )
    fields = {
        "phase",
        "reason",
        "message",
        "observed_generation",
        "spec_hash",
        "job_name",
        "pod_name",
        "start_time",
        "completion_time",
        "conditions",
    }
    if done:
        fields.add("summary")  # a finished run shows 100% or nothing in the Progress column
    # Every field named is written, None included: a merge patch removes it.
    new = wanted.model_dump(by_alias=True, mode="json", include=fields)
    changed = {k: v for k, v in new.items() if status.get(k) != v}
    events: list[Event] = []
    quiet = ob.phase == "Pending" and ob.reason in _QUIET
    if quiet:
        pass
    elif "phase" in changed or ("reason" in changed and ob.phase in TERMINAL):
        warn = ob.phase == "Failed" or ob.reason in _WARN
        events.append(
            Event("Warning" if warn else "Normal", ob.reason, f"{ob.phase}: {ob.message}")
        )
    elif "reason" in changed and ob.reason in (R.UNSCHEDULABLE, R.IMAGE_PULL_BACKOFF):
        events.append(Event("Warning", ob.reason, ob.message))
    if set(changed) <= {"conditions"} and same_conditions(
        status.get("conditions"), new["conditions"]
    ):
        return Plan(events=events)
    return Plan(status=changed, events=events)


def same_conditions(old: Iterable[dict[str, Any]] | None, new: list[dict[str, Any]]) -> bool:
    """Equal but for lastTransitionTime."""

    def key(c: dict[str, Any]) -> tuple[Any, ...]:
        return (
            c.get("type"),
            c.get("status"),
            c.get("reason"),
            c.get("message"),
            c.get("observedGeneration"),
        )

    return sorted(map(key, old or [])) == sorted(map(key, new))
