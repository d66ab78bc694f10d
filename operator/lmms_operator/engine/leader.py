"""The leader elector: campaigns for a Lease, keeps it, and gives it up, in the shape of
client-go's ``leaderelection.LeaderElector``. The decisions are ``reconcile.lease``'s;
reading and writing the Lease is the lock's (``applier.LeaseLock``); this module holds
the timing and the callbacks.

- **Campaigning.** Every ``retry_period`` (plus up to 20% jitter) the candidate reads
  the Lease and writes it when ``reconcile.lease.next_record`` says it may. While another
  holder's term runs, it reads the Lease every ``STANDBY_READ`` (0.5 s) and wakes when
  that term would end, so that a dead leader is replaced within the lease duration of its
  last renewal plus 0.5 s (client-go reads every retry period: up to 2.4 s more).
- **Leading.** Once written, ``on_started(term)`` runs, and the leader renews every
  ``retry_period``. A renewal that fails is tried again every ``retry_period`` until
  ``renew_deadline`` after the last success; then, or as soon as another holder is seen,
  the term is lost: ``holds(term)`` turns False at once (the fence every write passes),
  ``on_stopped(term)`` stops the work, and the process campaigns again. It never exits.
- **Stopping** (``stop``: SIGTERM): the work is stopped, then the Lease is released
  (an empty holder and a 1 s duration), so that a standby takes over at its next try.

Time comes from ``clock.Clock`` (a test gives a fake one). Requests block: they run on
a thread, each bounded by the timing's request timeout and the renew deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from ..clock import Clock
from ..reconcile.lease import LeaderRecord, Seen, Timing, next_record, observe, released

log = logging.getLogger("lmms.leader")

T = TypeVar("T")

#: How often a standby reads the Lease while another process holds it (seconds).
STANDBY_READ = 0.5


async def _on_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


class Lock(Protocol):
    """The Lease as the elector reads and writes it (``applier.LeaseLock``)."""

    def get(self) -> tuple[LeaderRecord, str] | None:
        """The record and its resourceVersion, or None when there is no Lease."""

    def write(self, record: LeaderRecord, resource_version: str | None) -> str | None:
        """Creates (no version) or replaces it; the new version, or None on a lost race."""

    def event(self, identity: str, message: str, when: dt.datetime) -> None:
        """Records an Event on the Lease (best effort)."""


@dataclasses.dataclass(frozen=True)
class _Tried:
    ok: bool
    seen: Seen | None
    version: str | None


class LeaderElector:
    """Campaigns for ``lock`` as ``identity``. ``on_started(term)`` and ``on_stopped(term)``
    are awaited on the event loop; ``term`` counts the terms this process has led."""

    def __init__(
        self,
        lock: Lock,
        identity: str,
        timing: Timing,
        *,
        on_started: Callable[[int], Awaitable[None]],
        on_stopped: Callable[[int], Awaitable[None]],
        clock: Clock | None = None,
        release_on_stop: bool = True,
        blocking: Callable[[Callable[[], Any]], Awaitable[Any]] = _on_thread,
    ) -> None:
        """``blocking(fn)`` runs a call that blocks (a request): on a thread, or inline
        in a test whose lock answers at once."""
        if not identity:
            raise ValueError("a leader election needs an identity")
        self.lock, self.identity, self.timing = lock, identity, timing
        self.on_started, self.on_stopped = on_started, on_stopped
        self.clock = clock or Clock()
        self.release_on_stop = release_on_stop
        self._blocking = blocking
        self.term = 0
        self.leading = False  # from on_started until on_stopped has ended
        self._open = False  # the fence: False from the moment a term is lost
        self._renewed = 0.0  # monotonic time of the last successful write (before it was sent)
        self._seen: Seen | None = None
        self._version: str | None = None
        self._task: asyncio.Task[None] | None = None

    # -- what callers use --------------------------------------------------------------------
    def holds(self, term: int) -> bool:
        """Whether the work of ``term`` may write now: the term is this process's current
        one and its last renewal is within the renew deadline (checked here too, so that a
        renewal stuck in a request does not keep the fence open)."""
        return (
            self._open
            and term == self.term
            and self.clock.monotonic() < self._renewed + self.timing.renew_deadline
        )

    @property
    def holder(self) -> str:
        """The holder last seen ('' when none)."""
        return self._seen.record.holder if self._seen is not None else ""

    @property
    def campaigning(self) -> bool:
        """Whether the loop runs (from ``start`` to ``stop``; False if it died)."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Starts campaigning on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="leader")

    async def stop(self) -> None:
        """Stops campaigning; a leader stops its work, then releases the Lease."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.leading:
            await self._step_down(self.term, "the process is stopping")
        if self.release_on_stop and self.holder == self.identity:
            await self._release()

    # -- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Campaign, lead until the term is lost, and campaign again, until cancelled."""
        while True:
            await self._acquire()
            self.term += 1
            self._open = self.leading = True
            log.info("%r: %s became the leader (term %d)", self.lock, self.identity, self.term)
            await self._call(self.on_started, self.term)
            await self._event("became leader")
            why = await self._renew()
            log.warning("%r: %s stopped leading: %s", self.lock, self.identity, why)
            await self._step_down(self.term, why)

    async def _acquire(self) -> None:
        holder = None
        while True:
            if await self._try(self.timing.renew_deadline):
                return
            if self.holder != holder:
                holder = self.holder
                log.info("%r: held by %r; %s is a standby", self.lock, holder, self.identity)
            await self.clock.sleep(self._wait())

    def _wait(self) -> float:
        """How long a candidate waits: the retry period with jitter, or until the holder's
        term would end, whichever is sooner."""
        delay = self.timing.retry_period * (1 + Timing.JITTER * random.random())
        seen, now = self._seen, self.clock.monotonic()
        if seen is not None and seen.record.holder and seen.expires > now:
            # A standby reads the Lease often (one small GET): it sees each renewal within
            # STANDBY_READ, so a dead leader's term ends at most that long after its
            # last renewal (read every retry period, up to 1.2 of it).
            delay = min(delay, STANDBY_READ, seen.expires - now + 0.05)
        return delay

    async def _renew(self) -> str:
        """Renews until the term is lost; returns why it was."""
        while True:
            await self.clock.sleep(self.timing.retry_period)
            while True:
                left = self._renewed + self.timing.renew_deadline - self.clock.monotonic()
                if left <= 0:
                    return f"not renewed within --renew-deadline ({self.timing.renew_deadline}s)"
                if await self._try(left):
                    break
                if self.holder not in ("", self.identity):
                    return f"the Lease is held by {self.holder!r}"
                await self.clock.sleep(min(self.timing.retry_period, left))

    async def _step_down(self, term: int, why: str) -> None:
        self._open = False
        await self._call(self.on_stopped, term)
        self.leading = False
        await self._event(f"stopped leading: {why}")

    # -- one try, on a thread ----------------------------------------------------------------
    async def _try(self, timeout: float) -> bool:
        try:
            tried: _Tried = await asyncio.wait_for(self._blocking(self._attempt), timeout)
        except TimeoutError:
            log.warning("%r: no answer within %.1fs", self.lock, timeout)
            return False
        except Exception as exc:
            log.warning("%r: could not read or write it: %s", self.lock, exc)
            return False
        self._seen, self._version = tried.seen, tried.version
        if tried.ok and tried.seen is not None:
            self._renewed = tried.seen.at
        return tried.ok

    def _attempt(self) -> _Tried:
        """Reads the Lease and writes it if this process may hold it (client-go's
        ``tryAcquireOrRenew``); changes nothing of the elector's (the caller does)."""
        now, wall = self.clock.monotonic(), self.clock.now()
        got = self.lock.get()
        seen = None if got is None else observe(self._seen, got[0], now)
        version = None if got is None else got[1]
        record = next_record(seen, self.identity, now, wall, self.timing)
        if record is None:
            return _Tried(False, seen, version)
        written = self.lock.write(record, version)
        if written is None:  # another writer came first: the next read shows it
            return _Tried(False, seen, version)
        return _Tried(True, Seen(record, now), written)

    async def _release(self) -> None:
        def give_up() -> bool:
            got = self.lock.get()
            if got is None or got[0].holder != self.identity:
                return False
            return self.lock.write(released(got[0], self.clock.now()), got[1]) is not None

        try:
            done: bool = await asyncio.wait_for(self._blocking(give_up), self.timing.renew_deadline)
        except Exception as exc:
            log.warning("%r: not released: %s", self.lock, exc)
            return
        if done:
            log.info("%r: released by %s", self.lock, self.identity)

    async def _event(self, message: str) -> None:
        with contextlib.suppress(Exception):  # best effort: the lock logs what failed
            when = self.clock.now()
            await asyncio.wait_for(
                self._blocking(lambda: self.lock.event(self.identity, message, when)),
                self.timing.request_timeout,
            )

    async def _call(self, fn: Callable[[int], Awaitable[None]], term: int) -> None:
        try:
            await fn(term)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%r: %s(term %d) failed", self.lock, fn, term)
