"""What one pass over a run decided to change: the plan the controller applies. Pure.

A pass reads (the run, its Job and pods from the watch caches, referenced objects from
the API server), computes a ``Plan`` with the pure functions of ``reconcile/``, then the
controller applies it through ``k8s``, in this order: children to delete, the Job's
``suspend``, the status, the Events, children to stop once the status says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """A core/v1 Event about the run (``type`` Normal or Warning, a CamelCase reason)."""

    type: str
    reason: str
    message: str


@dataclass
class Plan:
    status: dict[str, Any] = field(default_factory=dict)  # merge patch of .status
    events: list[Event] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # label selectors, before the status
    suspend: tuple[str, bool] | None = None  # (Job name, suspend)
    stop: str | None = None  # label selector, deleted after the status is written
    stop_reason: str = ""
    retry_after: float | None = None  # seconds: a referenced object is missing

    def __bool__(self) -> bool:
        return bool(self.status or self.events or self.delete or self.suspend or self.stop)

    def then(self, other: Plan) -> Plan:
        """This plan followed by ``other`` (its status fields win)."""
        return Plan(
            status={**self.status, **other.status},
            events=[*self.events, *other.events],
            delete=[*self.delete, *other.delete],
            suspend=other.suspend or self.suspend,
            stop=other.stop or self.stop,
            stop_reason=other.stop_reason or self.stop_reason,
            retry_after=other.retry_after if other.retry_after is not None else self.retry_after,
        )
