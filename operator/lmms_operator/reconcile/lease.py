"""Leader election on a ``coordination.k8s.io/v1`` Lease: the decisions, as client-go's
``tools/leaderelection`` makes them. Pure: the Lease as read, the times (monotonic and
wall, from the operator's one clock) and the identity are passed in; the elector
(``engine.leader``) reads, waits and writes through the applier.

- **Who may take the Lease.** A candidate writes when there is no Lease (create), when
  its holder is empty (released), when the holder is itself (a restarted process with
  the same identity, the pod name, takes it back at once), or when the record has not
  changed for the holder's ``leaseDurationSeconds`` of *this process's* monotonic time.
  Expiry is measured from when this process saw the record change, never from the
  ``renewTime`` written in it: the clocks of two machines may disagree.
- **What it writes.** Renewing keeps ``acquireTime`` and ``leaseTransitions``; taking the
  Lease from another holder (or from none) sets ``acquireTime`` and counts one more
  transition. Each write is a replace with the read ``resourceVersion``: when two
  candidates race, the API server lets one win (409 for the other).
- **Releasing** (on SIGTERM, client-go's ``ReleaseOnCancel``): the holder writes an empty
  ``holderIdentity`` and ``leaseDurationSeconds: 1``, so that a standby takes over at its
  next try instead of after the lease duration.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .times import parse_time

#: The API version and kind of the Lease written.
API_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"


@dataclass(frozen=True)
class Timing:
    """client-go's three durations, in seconds. ``lease_duration``: how long a standby
    waits after the record last changed before it takes the Lease; ``renew_deadline``:
    how long the leader keeps trying to renew before it stops its work (shorter, so that
    it stops before a standby may start); ``retry_period``: the wait between tries."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    #: The most jitter added to a candidate's wait (a fraction of ``retry_period``).
    JITTER = 0.2

    def problems(self) -> list[str]:
        """What is wrong, each naming the flag (empty when usable)."""
        out = [
            f"--{flag} must be a positive number of seconds, got {value}"
            for flag, value in (
                ("lease-duration", self.lease_duration),
                ("renew-deadline", self.renew_deadline),
                ("retry-period", self.retry_period),
            )
            if not value > 0
        ]
        if out:
            return out
        if self.lease_duration <= self.renew_deadline:
            out.append(
                f"--lease-duration ({self.lease_duration}s) must be longer than "
                f"--renew-deadline ({self.renew_deadline}s)"
            )
        if self.renew_deadline <= (1 + self.JITTER) * self.retry_period:
            out.append(
                f"--renew-deadline ({self.renew_deadline}s) must be longer than "
                f"{1 + self.JITTER:g} x --retry-period ({self.retry_period}s)"
            )
        if self.lease_duration != int(self.lease_duration):
            out.append(f"--lease-duration must be whole seconds, got {self.lease_duration}")
        return out

    @property
    def request_timeout(self) -> float:
        """Each request's timeout: half the renew deadline (at least 1 s), as client-go."""
        return max(1.0, self.renew_deadline / 2)


@dataclass(frozen=True)
class LeaderRecord:
    """The Lease's spec, as client-go's ``LeaderElectionRecord``."""

    holder: str
    duration: int
    acquire_time: dt.datetime | None
    renew_time: dt.datetime | None
    transitions: int = 0


@dataclass(frozen=True)
class Seen:
    """A record and the monotonic time at which this process first saw it."""

    record: LeaderRecord
    at: float

    @property
    def expires(self) -> float:
        """When the holder's term ends, in this process's monotonic time."""
        return self.at + self.record.duration


def observe(previous: Seen | None, record: LeaderRecord, now: float) -> Seen:
    """What was seen after a read: the same record keeps the time it was first seen (it
    has not been renewed since), a changed one is seen now."""
    if previous is not None and previous.record == record:
        return previous
    return Seen(record, now)


def next_record(
    seen: Seen | None, identity: str, now: float, wall: dt.datetime, timing: Timing
) -> LeaderRecord | None:
    """The record to write to take or keep the Lease (``seen``: the Lease as just read,
    None when there is none), or None when another holder's term is still running."""
    duration = int(timing.lease_duration)
    if seen is None:
        return LeaderRecord(identity, duration, wall, wall, 0)
    record = seen.record
    if record.holder == identity:
        return dataclasses.replace(record, duration=duration, renew_time=wall)
    if record.holder and now < seen.expires:
        return None
    return LeaderRecord(identity, duration, wall, wall, record.transitions + 1)


def released(record: LeaderRecord, wall: dt.datetime) -> LeaderRecord:
    """The record that gives the Lease up (client-go's ``release``)."""
    return LeaderRecord("", 1, wall, wall, record.transitions)


def record_of(lease: Mapping[str, Any]) -> LeaderRecord:
    """The record a Lease object holds (absent fields read as client-go reads them)."""
    spec = lease.get("spec") or {}
    return LeaderRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=parse_time(spec.get("acquireTime")),
        renew_time=parse_time(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def _micro(value: dt.datetime | None) -> str | None:
    """A ``MicroTime``: RFC 3339 in UTC with microseconds."""
    return None if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    namespace: str, name: str, record: LeaderRecord, resource_version: str | None = None
) -> dict[str, Any]:
    """The Lease to create (no ``resource_version``) or to replace (with the one read,
    so that a write that lost a race is refused)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    spec = {
        "holderIdentity": record.holder or None,
        "leaseDurationSeconds": record.duration,
        "acquireTime": _micro(record.acquire_time),
        "renewTime": _micro(record.renew_time),
        "leaseTransitions": record.transitions,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": {k: v for k, v in spec.items() if v is not None},
    }
