"""Kueue: what a queued run's Workload says, and how a queued run is held. Pure.

A Job labelled ``kueue.x-k8s.io/queue-name`` belongs to Kueue's admission: Kueue makes
one Workload for it (all of its pods: a fan-out's shards are admitted together or not at
all), unsuspends the Job when the Workload is admitted and suspends it again when the
Workload is evicted (preempted by a higher WorkloadPriorityClass, deactivated, ...).
The operator never writes such a Job's ``spec.suspend``, so the two never fight over it:

- ``spec.suspend: true`` deactivates the Workload (``spec.active: false``); Kueue then
  evicts it and suspends the Job, and ``false`` activates it again: Kueue queues it, and
  the same Job's next pod resumes from the run's cache;
- a run suspended before it ever had a Job gets none until it is resumed, queued or
  not (a Job created suspended would be admitted, and start, before its Workload could
  be deactivated);
- while the Job waits, the run's status takes its reason and message from the Workload
  (Kueue 0.17 tells a pending Workload's position only through its visibility API, not
  on the Workload: the message is the QuotaReserved condition's).

A run that names no queue is Kueue's all the same when Kueue's webhook gave its Job
one (the namespace's LocalQueue ``default``): the Job's label says so (``queue_of``).

The Workload is read, not watched (``reads.workload``), by the name Kueue gives it
(``workload_names``): only queued runs whose Job is suspended, or held, need it; without
Kueue's CRDs there is none.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import reasons as R
from .plan import Event, Plan
from .times import parse_time

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"

#: Seconds before a held run looks again for the Workload Kueue has yet to create.
WORKLOAD_RETRY = 1.0
#: Seconds after which a Job without a Workload (Kueue is down or absent) is looked at
#: only this often.
WORKLOAD_PATIENCE = 30.0
#: How much of a Workload condition's reason and message a run's status quotes.
MAX_REASON, MAX_MESSAGE = 128, 2048


@dataclass(frozen=True)
class Workload:
    """What the operator reads of a Workload (kueue.x-k8s.io/v1beta2)."""

    name: str
    active: bool = True
    admitted: bool = False
    #: (reason, message) of a QuotaReserved condition that is False: waiting for quota.
    pending: tuple[str, str] | None = None
    #: (reason, message) of an Evicted condition that is True (Preempted, Deactivated...).
    evicted: tuple[str, str] | None = None


def job_labels(queue: str | None, priority: str | None) -> dict[str, str]:
    """A queued Job's labels for Kueue: its LocalQueue and WorkloadPriorityClass."""
    if not queue:
        return {}
    return {QUEUE_LABEL: queue, **({PRIORITY_LABEL: priority} if priority else {})}


def queue_of(spec_queue: str | None, job: Mapping[str, Any] | None) -> str | None:
    """The LocalQueue of a run's Job: the run's ``spec.scheduling.queueName``, or the one
    Kueue's Job webhook gave a Job made without (the namespace's LocalQueue ``default``:
    LocalQueueDefaulting, always on from Kueue 0.17). Either way the Job is Kueue's, and
    so is its suspend. None: the Job is not queued (or there is none yet)."""
    if spec_queue:
        return spec_queue
    labels = ((job or {}).get("metadata") or {}).get("labels") or {}
    return str(labels.get(QUEUE_LABEL) or "") or None


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    conds = ((obj.get("status") or {}).get("conditions")) or []
    return {str(c.get("type")): c for c in conds if isinstance(c, Mapping)}


def workload(obj: Mapping[str, Any] | None) -> Workload | None:
    """The facts of a Workload object (None: there is none)."""
    if not obj:
        return None
    conds = _conditions(obj)

    def is_(ctype: str, status: str) -> tuple[str, str] | None:
        c = conds.get(ctype)
        if c is None or c.get("status") != status:
            return None
        # Bounded where they are read: the run's status quotes them (Kueue's conditions
        # may hold 32 KiB, the status message no more than that in all).
        return str(c.get("reason") or "")[:MAX_REASON], str(c.get("message") or "")[:MAX_MESSAGE]

    return Workload(
        name=str(obj["metadata"]["name"]),
        active=(obj.get("spec") or {}).get("active", True) is not False,
        admitted=is_("Admitted", "True") is not None,
        pending=is_("QuotaReserved", "False"),
        evicted=is_("Evicted", "True"),
    )


def hold(
    suspend: bool,
    wl: Workload | None,
    *,
    release: bool = True,
    age: float = 0.0,
    waiting: bool = False,
) -> Plan:
    """Deactivates the Workload while ``spec.suspend`` is true and, when ``release`` (the
    pass that sees suspend turn false), activates it again. Only then: a Workload that
    Kueue or an admin deactivated stays so. Kueue creates the Workload a moment after
    the Job: a run being held, or ``waiting`` (its Job suspended: the status tells the
    Workload's reason), looks again shortly (``age``: the Job's, in seconds; one that has
    had no Workload for long, Kueue being away, is looked at less often)."""
    if wl is None:
        retry = WORKLOAD_RETRY if age < WORKLOAD_PATIENCE else WORKLOAD_PATIENCE
        return Plan(retry_after=retry) if suspend or waiting else Plan()
    if wl.active != suspend or (not suspend and not release):
        return Plan()
    if suspend:
        event = Event(
            "Normal",
            R.JOB_SUSPENDED,
            f"spec.suspend is true: Workload {wl.name} is deactivated; Kueue stops the Job",
        )
    else:
        event = Event(
            "Normal",
            R.JOB_RESUMED,
            f"spec.suspend is false: Workload {wl.name} is active again; Kueue admits it "
            "when quota allows",
        )
    return Plan(activate=(wl.name, not suspend), events=[event])


def waiting(spec_suspend: bool, queue: str, wl: Workload | None) -> tuple[str, str]:
    """(reason, message) of a queued run whose Job is suspended, from its Workload."""
    if spec_suspend:
        name = f"Workload {wl.name}" if wl is not None else "the Workload"
        return R.SUSPENDED, f"spec.suspend is true: {name} is deactivated; the Job is suspended"
    where = f"LocalQueue {queue!r}"
    if wl is None:
        return R.QUEUED, f"waiting for Kueue to admit the Job in {where}"
    if not wl.active:
        why = f" ({wl.evicted[1]})" if wl.evicted is not None else ""
        return R.SUSPENDED, (
            f"Workload {wl.name} was deactivated{why}: Kueue keeps the Job suspended until "
            "it is active again"
        )
    if wl.evicted is not None and wl.evicted[0] == R.PREEMPTED:
        return R.PREEMPTED, (
            f"preempted by Kueue ({wl.evicted[1]}); queued again in {where}, it resumes "
            "from its cache when admitted"
        )
    if wl.pending is not None:
        reason, message = wl.pending
        if reason == R.INADMISSIBLE:
            return R.INADMISSIBLE, f"Kueue cannot admit Workload {wl.name}: {message}"
        return R.QUEUED, f"queued in {where}: {message}"
    if wl.admitted:
        return R.QUEUED, f"admitted by Kueue in {where}; the Job is starting"
    return R.QUEUED, f"waiting for Kueue to admit Workload {wl.name} in {where}"


def job_age(job: Mapping[str, Any], now: dt.datetime) -> float:
    """Seconds since the Job was created (0 when unknown)."""
    created = parse_time((job.get("metadata") or {}).get("creationTimestamp"))
    return (now - created).total_seconds() if created else 0.0


def pod_wait_since(job: Mapping[str, Any]) -> dt.datetime | None:
    """Since when the Job controller should have made the Job's pod: its start, or its
    resumption when the Job was suspended (by Kueue until it admitted it, or by
    spec.suspend): the Job's startTime is only reset once its controller sees the Job
    resumed, and while its Suspended condition is still True it has not (None: not yet)."""
    status = job.get("status") or {}
    since = parse_time(status.get("startTime")) or parse_time(
        (job.get("metadata") or {}).get("creationTimestamp")
    )
    conditions = status.get("conditions") or []
    suspended = next((c for c in conditions if c.get("type") == "Suspended"), None)
    if suspended is None or since is None:
        return since
    if suspended.get("status") == "True":
        return None
    return max(since, parse_time(suspended.get("lastTransitionTime")) or since)


def workload_names(job_name: str, job_uid: str) -> tuple[str, ...]:
    """The names Kueue gives a Job's Workload (jobframework/workload_names.go): ``job-`` and
    the Job's name, cut to leave room for ``-`` and 5 hex digits of a SHA-1 of the Job's
    kind, group, name and uid; cut to 253 characters, or to 63 with Kueue's
    ShortWorkloadNames feature (alpha in 0.17). Reading them costs one object each."""
    digest = hashlib.sha1(f"Job\nbatch\n{job_name}\n{job_uid}".encode()).hexdigest()[:5]
    names = (f"{f'job-{job_name}'[: limit - 6]}-{digest}" for limit in (253, 63))
    return tuple(dict.fromkeys(names))
