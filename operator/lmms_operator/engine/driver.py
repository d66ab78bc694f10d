"""The engine's driver: a ``WorkQueue`` run on an event loop, its timers and its thread
pools. What it guarantees is said in ``engine``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import Generic, ParamSpec, TypeVar

from ..clock import Clock
from .workqueue import Backoff, WorkQueue

log = logging.getLogger("lmms.engine")

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
P = ParamSpec("P")


class InlineExecutor(concurrent.futures.Executor):
    """Runs each pass on the thread that dispatches it, at once: with ``run_due()`` and a
    fake clock, a test runs every pass in order, on its own thread."""

    def __init__(self) -> None:
        self._shut = False

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        if self._shut:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shut = True


def threads(name: str, size: int) -> concurrent.futures.Executor:
    """The pools of a running operator: ``size`` threads named after the pool."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)


class Engine(Generic[K]):
    """A work queue, its driver on the event loop, its timers and its thread pools.

    ``reconcile(key, periodic)`` is one pass over one key, on a thread of the pool that
    ``pool_of(key)`` names when the key is dispatched (on the dispatching thread: it must
    be quick). ``pools`` maps each pool's name to its size; ``executor(name, size)``
    builds it (``threads``, or ``InlineExecutor`` in tests)."""

    def __init__(
        self,
        reconcile: Callable[[K, bool], float | None],
        *,
        pools: Mapping[str, int],
        pool_of: Callable[[K], str] | None = None,
        keys: Callable[[], Iterable[K]] | None = None,
        resync_interval: float | None = None,
        backoff: Backoff | None = None,
        clock: Clock | None = None,
        executor: Callable[[str, int], concurrent.futures.Executor] = threads,
    ) -> None:
        if not pools:
            raise ValueError("an engine needs at least one pool")
        self._reconcile = reconcile
        self._clock = clock or Clock()
        self._backoff = backoff or Backoff()
        self.queue: WorkQueue[K] = WorkQueue(self._clock, self._backoff)
        self._pools = {name: executor(name, size) for name, size in pools.items()}
        self._default = next(iter(self._pools))
        self._pool_of = pool_of or (lambda _key: self._default)
        self._keys = keys
        self._timers: list[tuple[float, Callable[[], Awaitable[None] | None]]] = []
        if keys is not None and resync_interval:
            self._timers.append((resync_interval, self.resync))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    # -- what callers use --------------------------------------------------------------------
    def add(self, key: K, delay: float = 0.0, *, periodic: bool = False) -> None:
        """Asks for a pass over ``key`` (from any thread: informers call it)."""
        if self.queue.add(key, delay, periodic=periodic):
            self._wake()

    def forget(self, key: K) -> None:
        """Resets the key's backoff: see ``WorkQueue.forget``."""
        self.queue.forget(key)

    def discard(self, key: K) -> None:
        """The object is gone: see ``WorkQueue.discard``."""
        self.queue.discard(key)

    def resync(self) -> None:
        """Adds every key from ``keys()`` with ``periodic=True``: time-based decisions and
        events the watch missed. The resync timer calls it; so may the caller."""
        if self._keys is None:
            return
        for key in self._keys():
            self.add(key, periodic=True)

    def every(self, interval: float, fn: Callable[[], Awaitable[None] | None]) -> None:
        """Runs ``fn`` (a coroutine function, or a quick function: it runs on the event
        loop) every ``interval`` seconds, from ``start()`` (or now, if started) to
        ``stop()``. A failure is logged and the loop goes on. Call it on the loop's thread."""
        if interval <= 0:
            raise ValueError(f"interval must be positive: {interval}")
        if self._stopped:
            return
        if self._loop is None:
            self._timers.append((interval, fn))
        else:
            self._tasks.append(self._loop.create_task(self._every(interval, fn)))

    def pending(self) -> int:
        """Keys waiting for a pass (for health and metrics)."""
        return self.queue.pending()

    def in_flight(self) -> int:
        """Keys with a pass dispatched or running."""
        return self.queue.in_flight()

    def run_due(self) -> int:
        """Dispatches every pass due now and waits until they end; how many there were.
        For tests, which move a fake clock on between calls, and for callers with no
        driver. A pass that adds its own key runs again in the next call, not this one."""
        futures = self._dispatch()
        concurrent.futures.wait(futures)
        return len(futures)

    # -- start and stop ----------------------------------------------------------------------
    async def start(self) -> None:
        """Binds the running event loop and starts the driver and the timers. Keys added
        before are dispatched at once, if due."""
        if self._loop is not None or self._stopped:
            raise RuntimeError("an engine starts once")
        self._loop = asyncio.get_running_loop()
        self._woken = asyncio.Event()
        self._tasks.append(self._loop.create_task(self._drive(), name="engine"))
        timers, self._timers = self._timers, []
        for interval, fn in timers:
            self._tasks.append(self._loop.create_task(self._every(interval, fn)))

    async def stop(self) -> None:
        """Cancels the driver and the timers, and shuts the pools down without waiting for
        the passes queued on them: they are cancelled. A second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        self._tasks = []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    # -- the machinery -----------------------------------------------------------------------
    async def _drive(self) -> None:
        """Dispatches the due passes, then sleeps until the next is due or until an add or
        a finished pass makes a key due sooner."""
        assert self._woken is not None
        woken = self._woken
        while True:
            # Cleared before the queue is read: a wake-up after this point is not lost.
            woken.clear()
            self._dispatch()
            due = self.queue.next_due()
            waits: list[asyncio.Future[object]] = [asyncio.ensure_future(woken.wait())]
            if due is not None:
                delay = due - self._clock.monotonic()
                waits.append(asyncio.ensure_future(self._clock.sleep(delay)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def _every(self, interval: float, fn: Callable[[], Awaitable[None] | None]) -> None:
        name = getattr(fn, "__qualname__", repr(fn))
        while True:
            await self._clock.sleep(interval)
            try:
                result = fn()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("periodic %s failed; it runs again in %ss", name, interval)

    def _wake(self) -> None:
        loop, woken = self._loop, self._woken
        if loop is None or woken is None or self._stopped:
            return  # not started: start() reads the queue
        # A closed loop: the process is going.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(woken.set)

    def _dispatch(self) -> list[concurrent.futures.Future[None]]:
        if self._stopped:
            return []
        futures: list[concurrent.futures.Future[None]] = []
        for key in self.queue.pop_due():
            future = self._submit(key)
            if future is not None:
                futures.append(future)
        return futures

    def _submit(self, key: K) -> concurrent.futures.Future[None] | None:
        try:
            pool = self._pools[self._pool_of(key)]
        except Exception:
            log.exception("no pool for %r: it runs on %s", key, self._default)
            pool = self._pools[self._default]
        try:
            return pool.submit(self._pass, key)
        except RuntimeError:  # the pool is shut down: the engine stops
            self.queue.done(key)
            return None

    def _pass(self, key: K) -> None:
        """One pass, on a pool thread. Whatever it raises is logged and becomes its
        backoff; the queue hears that it ended in every case."""
        periodic = self.queue.begin(key)
        failed, requeue = True, None
        try:
            requeue = self._reconcile(key, periodic)
            failed = False
        except Exception as exc:
            retry = self._backoff.delay(self.queue.failures(key) + 1)
            log.warning(
                "pass over %r failed, retrying in %.0fs: %r", key, retry, exc, exc_info=True
            )
        finally:
            if self.queue.done(key, failed=failed, requeue=requeue):
                self._wake()
