"""The work queue: which keys wait and until when, which have a pass dispatched or
running, and how often each failed. What it guarantees is said in ``engine``."""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..clock import Clock

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Backoff:
    """How long a failing key waits before its next pass: doubling from ``base`` seconds
    with each failure in a row, never more than ``cap``."""

    base: float = 5.0
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        # The exponent is bounded so that a key failing for days cannot overflow a float.
        return min(self.cap, self.base * 2.0 ** min(failures - 1, 64))


@dataclass
class _Waiting:
    due: float  # monotonic time
    periodic: bool
    held: bool = False  # backing off: adds do not bring it sooner


@dataclass
class _Active:
    periodic: bool
    started: bool = False  # False while it waits for a thread: adds are absorbed
    discarded: bool = False  # the object went during the pass: no retry, no requeue


class WorkQueue(Generic[K]):
    """The engine's state, with no threads and no event loop: which keys wait and until
    when, which have a pass dispatched or running, and how often each failed. Every method
    takes the queue's lock and may be called from any thread; the time is the clock's.

    ``add`` and ``done`` return True when the driver must wake up: a key became due before
    the time it sleeps until (the one ``next_due`` last returned). Only the first such
    change wakes it; it reads the whole queue again when it wakes."""

    def __init__(self, clock: Clock | None = None, backoff: Backoff | None = None) -> None:
        self._clock = clock or Clock()
        self._backoff = backoff or Backoff()
        self._lock = threading.Lock()
        self._waiting: dict[K, _Waiting] = {}
        self._active: dict[K, _Active] = {}
        self._failures: dict[K, int] = {}
        # (due, sequence, key): the sequence orders equal due times by arrival and keeps
        # the keys themselves from being compared. Entries made obsolete by a sooner due
        # time or by a dispatch stay until they reach the top, and are skipped there.
        self._heap: list[tuple[float, int, K]] = []
        self._sequence = itertools.count()
        self._deadline = math.inf  # when the driver wakes up on its own

    def add(self, key: K, delay: float = 0.0, *, periodic: bool = False) -> bool:
        """Asks for a pass over ``key`` in ``delay`` seconds, or sooner if one is already
        due sooner."""
        with self._lock:
            active = self._active.get(key)
            if active is not None and not active.started:
                active.periodic |= periodic
                return False
            due = self._clock.monotonic() + max(0.0, delay)
            if not self._merge(key, due, periodic) or key in self._active:
                return False  # a dirty key is queued by done()
            return self._push(key, due)

    def pop_due(self) -> list[K]:
        """The keys due now, in the order of their due times, marked as dispatched."""
        now = self._clock.monotonic()
        keys: list[K] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                due, _, key = heapq.heappop(self._heap)
                if self._obsolete(due, key):
                    continue
                item = self._waiting.pop(key)
                self._active[key] = _Active(item.periodic)
                keys.append(key)
        return keys

    def next_due(self) -> float | None:
        """The monotonic time the next key is due (None: no key waits). The driver sleeps
        until then, unless an add or a finished pass wakes it sooner."""
        with self._lock:
            while self._heap and self._obsolete(self._heap[0][0], self._heap[0][2]):
                heapq.heappop(self._heap)
            self._deadline = self._heap[0][0] if self._heap else math.inf
            return self._heap[0][0] if self._heap else None

    def begin(self, key: K) -> bool:
        """The pass over a dispatched key starts: adds from now on mark it dirty. Returns
        whether any of the adds it answers was periodic."""
        with self._lock:
            active = self._active[key]
            active.started = True
            return active.periodic

    def done(self, key: K, *, failed: bool = False, requeue: float | None = None) -> bool:
        """The pass over ``key`` ended: raised (``failed``: it is retried on its backoff),
        or returned (its backoff is reset; ``requeue``: run it again in that many seconds
        at the latest). A key marked dirty during the pass is queued again."""
        with self._lock:
            active = self._active.pop(key)
            now = self._clock.monotonic()
            if active.discarded:
                pass
            elif failed:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                self._merge(key, now + self._backoff.delay(failures), False, hold=True)
            else:
                self._failures.pop(key, None)
                if requeue is not None:
                    self._merge(key, now + max(0.0, requeue), False)
            item = self._waiting.get(key)
            return item is not None and self._push(key, item.due)

    def forget(self, key: K) -> None:
        """Resets the key's backoff (the object changed: its next pass may succeed). A
        retry already waiting keeps its time, but an add may now bring it sooner."""
        with self._lock:
            self._failures.pop(key, None)
            item = self._waiting.get(key)
            if item is not None:
                item.held = False

    def discard(self, key: K) -> None:
        """The object is gone: its waiting pass and its backoff go. A pass already running
        ends, but is neither retried nor requeued."""
        with self._lock:
            self._waiting.pop(key, None)
            self._failures.pop(key, None)
            active = self._active.get(key)
            if active is not None:
                active.discarded = True

    def pending(self) -> int:
        """Keys waiting for a pass (dirty ones included)."""
        with self._lock:
            return len(self._waiting)

    def in_flight(self) -> int:
        """Keys with a pass dispatched or running."""
        with self._lock:
            return len(self._active)

    def due(self, key: K) -> float | None:
        """The monotonic time the key's next pass is due; None when it does not wait."""
        with self._lock:
            item = self._waiting.get(key)
            return None if item is None else item.due

    def failures(self, key: K) -> int:
        """The key's failed passes in a row."""
        with self._lock:
            return self._failures.get(key, 0)

    # -- under the lock --------------------------------------------------------------------
    def _merge(self, key: K, due: float, periodic: bool, *, hold: bool = False) -> bool:
        """Records that the key is due at ``due``: a retry after a failure (``hold``) sets
        its time, later or sooner, and holds it there; any other add only brings it
        sooner, unless it is held. Whether its due time changed."""
        item = self._waiting.get(key)
        if item is None:
            self._waiting[key] = _Waiting(due, periodic, hold)
            return True
        item.periodic |= periodic
        if hold:
            item.due, item.held = due, True
            return True
        if not item.held and due < item.due:
            item.due = due
            return True
        return False

    def _push(self, key: K, due: float) -> bool:
        heapq.heappush(self._heap, (due, next(self._sequence), key))
        if due < self._deadline:
            self._deadline = -math.inf  # woken: it reads the queue again anyway
            return True
        return False

    def _obsolete(self, due: float, key: K) -> bool:
        """A heap entry that no longer says when its key is due: the key was dispatched,
        discarded, or given another time; a dirty key is pushed again by done()."""
        item = self._waiting.get(key)
        return item is None or item.due != due or key in self._active
