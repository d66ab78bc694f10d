"""The generic engine (``lmms_operator.engine``): when passes run, on which pool, how
often, and what a failure costs. Time is a fake clock moved on by hand: no test sleeps.
Passes run inline (``InlineExecutor``) unless a test is about threads; those tests
synchronise on ``threading.Event``s, with a timeout only as a guard against a hang."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ParamSpec, TypeVar

import pytest

from lmms_operator.clock import Clock
from lmms_operator.engine import Backoff, Engine, InlineExecutor, threads

P = ParamSpec("P")
T = TypeVar("T")

GUARD = 10.0  # seconds: only reached if the engine is broken and a test would hang


class FakeClock(Clock):
    """Time that moves only when the test says so; a timer waiting on it ends when
    ``advance`` passes its deadline."""

    def __init__(self) -> None:
        self.t = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> dt.datetime:
        return dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=self.t)

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.t + max(0.0, seconds), future))
        self._release()
        await future

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self._release()

    def _release(self) -> None:
        for sleeper in [s for s in self._sleepers if s[0] <= self.t]:
            self._sleepers.remove(sleeper)
            if not sleeper[1].done():
                sleeper[1].set_result(None)


class Passes:
    """A reconcile function that records its calls and answers from a script per key:
    an exception is raised, a number is a requeue delay, None is done."""

    def __init__(self, script: Mapping[str, list[float | Exception | None]] | None = None) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.script = {k: list(v) for k, v in (script or {}).items()}

    def __call__(self, key: str, periodic: bool) -> float | None:
        self.calls.append((key, periodic))
        answers = self.script.get(key)
        answer = answers.pop(0) if answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer

    def keys(self) -> list[str]:
        return [key for key, _ in self.calls]


class HeldExecutor(concurrent.futures.Executor):
    """A pool whose work waits until the test runs it: a pass dispatched but not started."""

    def __init__(self) -> None:
        self.queued: list[Callable[[], None]] = []

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.queued.append(lambda: future.set_result(fn(*args, **kwargs)))
        return future

    def run_all(self) -> None:
        queued, self.queued = self.queued, []
        for work in queued:
            work()


def inline(_name: str, _size: int) -> concurrent.futures.Executor:
    return InlineExecutor()


def engine(
    passes: Callable[[str, bool], float | None], clock: FakeClock, **options: Any
) -> Engine[str]:
    """An engine on the fake clock, running its passes inline unless told otherwise."""
    options.setdefault("pools", {"work": 2})
    options.setdefault("executor", inline)
    return Engine(passes, clock=clock, **options)


def close(e: Engine[str]) -> None:
    """Shuts a test's real threads down (no loop needed: it was never started)."""
    asyncio.run(e.stop())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def settle() -> None:
    """Lets every task that can run, run: the fake clock's timers and the driver. Each
    ``sleep(0)`` is a bare yield to the event loop, not a wait."""
    for _ in range(20):
        await asyncio.sleep(0)


# -- debounce -----------------------------------------------------------------------------------
def test_a_burst_of_adds_becomes_one_pass_when_the_first_is_due(clock: FakeClock) -> None:
    passes = Passes()
    e = engine(passes, clock)
    e.add("a", 0.5)
    clock.advance(0.25)
    e.add("a", 0.5)  # due later than the first: it keeps the first's time
    e.add("a", 0.5)
    assert e.run_due() == 0
    clock.advance(0.25)
    assert e.run_due() == 1
    clock.advance(1.0)
    assert e.run_due() == 0  # the later adds were answered by that pass
    e.add("b", 5.0)
    e.add("b", 1.0)  # a sooner add brings a waiting key forward
    clock.advance(1.0)
    assert e.run_due() == 1
    assert passes.keys() == ["a", "b"]


def test_due_keys_are_dispatched_in_the_order_of_their_due_times(clock: FakeClock) -> None:
    passes = Passes()
    e = engine(passes, clock)
    e.add("c", 3.0)
    e.add("a", 1.0)
    e.add("b", 2.0)
    clock.advance(3.0)
    assert e.run_due() == 3
    assert passes.keys() == ["a", "b", "c"]


# -- one pass at a time per key ---------------------------------------------------------------------
def test_a_key_added_during_its_pass_runs_once_more_after_it_never_beside_it(
    clock: FakeClock,
) -> None:
    running, most, calls = 0, 0, 0
    lock = threading.Lock()
    started, release = threading.Event(), threading.Event()

    def reconcile(key: str, periodic: bool) -> None:
        nonlocal running, most, calls
        with lock:
            running += 1
            most = max(most, running)
            calls += 1
            first = calls == 1
        if first:
            e.add(key)  # the pass adds its own key: dirty, not run beside it
            started.set()
            assert release.wait(GUARD)
        with lock:
            running -= 1

    e = engine(reconcile, clock, pools={"work": 4}, executor=threads)
    e.add("a")
    first = threading.Thread(target=e.run_due)
    first.start()
    assert started.wait(GUARD)
    e.add("a")  # more adds while it runs: still one more pass
    assert e.run_due() == 0  # a thread is free, but the key's pass is running
    release.set()
    first.join(GUARD)
    assert e.run_due() == 1
    assert e.run_due() == 0
    assert (calls, most) == (2, 1)
    close(e)


def test_adds_while_a_pass_waits_for_a_thread_are_absorbed_by_it(clock: FakeClock) -> None:
    passes = Passes()
    pool = HeldExecutor()
    e = engine(passes, clock, executor=lambda _n, _s: pool)
    e.add("a")
    dispatched = e._dispatch()  # run_due() would wait for a pass that cannot start
    assert len(dispatched) == 1 and e.in_flight() == 1
    e.add("a", periodic=True)  # the pass has read nothing yet: it answers this add too
    assert e.pending() == 0
    pool.run_all()
    assert passes.calls == [("a", True)]
    assert e.run_due() == 0 and e.in_flight() == 0


def test_independent_keys_run_in_parallel_on_a_pool(clock: FakeClock) -> None:
    entered = {"a": threading.Event(), "b": threading.Event()}
    saw_other: dict[str, bool] = {}

    def reconcile(key: str, periodic: bool) -> None:
        entered[key].set()
        other = "b" if key == "a" else "a"
        saw_other[key] = entered[other].wait(GUARD)  # both inside at once, or a timeout

    e = engine(reconcile, clock, pools={"work": 2}, executor=threads)
    e.add("a")
    e.add("b")
    assert e.run_due() == 2
    assert saw_other == {"a": True, "b": True}
    close(e)


# -- failures and requeues --------------------------------------------------------------------------
def test_backoff_doubles_from_its_base_up_to_its_cap() -> None:
    backoff = Backoff(base=5.0, cap=300.0)
    assert [backoff.delay(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert backoff.delay(10_000) == 300.0  # no overflow after days of failures


def test_a_failing_pass_is_retried_on_a_growing_backoff_reset_by_success(
    clock: FakeClock,
) -> None:
    boom = RuntimeError("API server unreachable")
    passes = Passes({"a": [boom, boom, boom, boom, None, boom]})
    e = engine(passes, clock, backoff=Backoff(base=5.0, cap=20.0))
    e.add("a")
    waits = []
    for _ in range(5):
        assert e.run_due() == 1
        due = e.queue.due("a")
        if due is None:
            break
        waits.append(due - clock.t)
        clock.advance(due - clock.t)
    assert waits == [5.0, 10.0, 20.0, 20.0]  # capped
    assert e.queue.failures("a") == 0 and e.pending() == 0  # the fifth pass succeeded
    e.add("a")
    e.run_due()
    assert e.queue.due("a") == clock.t + 5.0  # a new failure starts from the base again


def test_a_backing_off_key_is_not_run_sooner_by_adds_or_resyncs_until_forgotten(
    clock: FakeClock,
) -> None:
    no = RuntimeError("no")
    passes = Passes({"a": [no], "b": [no, no]})
    e = engine(passes, clock, keys=lambda: ["a", "b"], backoff=Backoff(base=60.0))
    e.add("a")
    e.add("b")
    e.run_due()
    e.add("a")  # an event
    e.resync()
    clock.advance(59.0)
    assert e.run_due() == 0
    clock.advance(1.0)
    assert e.run_due() == 2
    assert passes.calls[2:] == [("a", True), ("b", True)]  # the held retries kept the flag
    assert e.queue.due("b") == clock.t + 120.0  # b failed again
    e.add("b")
    assert e.run_due() == 0
    e.forget("b")  # the object changed: its next pass may succeed
    e.add("b")
    assert e.run_due() == 1
    assert e.queue.failures("b") == 0


def test_an_exception_is_logged_and_the_pool_goes_on(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    passes = Passes({"a": [ValueError("bad spec")]})
    e = engine(passes, clock, pools={"work": 1}, executor=threads)
    e.add("a")
    e.add("b")
    assert e.run_due() == 2
    assert sorted(passes.keys()) == ["a", "b"]  # the one thread survived a's failure
    close(e)
    assert any(
        r.name == "lmms.engine" and "pass over 'a' failed" in r.getMessage() for r in caplog.records
    )


def test_a_returned_delay_runs_the_pass_again_after_it_or_sooner_on_an_add(
    clock: FakeClock,
) -> None:
    passes = Passes({"a": [30.0, None], "b": [30.0]})
    e = engine(passes, clock)
    e.add("a")
    e.add("b")
    e.run_due()
    e.add("b")  # the referenced object appeared: no need to wait out the requeue
    assert e.run_due() == 1
    clock.advance(29.0)
    assert e.run_due() == 0
    clock.advance(1.0)
    assert e.run_due() == 1
    assert passes.keys() == ["a", "b", "b", "a"]
    assert e.pending() == 0  # the second passes asked for nothing more


def test_discard_drops_the_waiting_pass_and_the_backoff(clock: FakeClock) -> None:
    def reconcile(key: str, periodic: bool) -> None:
        if key == "during":
            e.discard(key)  # the object went while its pass ran
        raise RuntimeError("gone")

    e = engine(reconcile, clock)
    e.add("before")
    e.add("during")
    e.run_due()
    e.discard("before")
    clock.advance(600.0)
    assert e.run_due() == 0  # neither is retried
    assert e.pending() == 0 and e.queue.failures("before") == e.queue.failures("during") == 0


# -- resync and the periodic flag ---------------------------------------------------------------------
def test_the_periodic_flag_of_merged_adds_is_an_or(clock: FakeClock) -> None:
    passes = Passes()
    e = engine(passes, clock)
    e.add("a", 1.0, periodic=True)
    e.add("a")  # an event: due sooner, the resync's flag kept
    e.add("b")
    e.run_due()
    assert sorted(passes.calls) == [("a", True), ("b", False)]
    e.add("a")
    e.run_due()
    assert passes.calls[-1] == ("a", False)  # the flag went with the pass it was told to


def test_a_resync_during_a_pass_marks_the_key_dirty_not_stacked(clock: FakeClock) -> None:
    def reconcile(key: str, periodic: bool) -> None:
        calls.append((key, periodic))
        if len(calls) == 1:
            e.resync()
            e.resync()  # a slow pass spans two resyncs

    calls: list[tuple[str, bool]] = []
    e = engine(reconcile, clock, keys=lambda: ["a"])
    e.add("a")
    e.run_due()
    assert e.run_due() == 1
    assert e.run_due() == 0
    assert calls == [("a", False), ("a", True)]


# -- pools --------------------------------------------------------------------------------------------
def test_pool_of_picks_each_keys_pool_when_it_is_dispatched(clock: FakeClock) -> None:
    built: dict[str, int] = {}
    ran_on: list[tuple[str, str]] = []

    def factory(name: str, size: int) -> concurrent.futures.Executor:
        built[name] = size
        return threads(name, size)

    new = {"fresh"}
    e = engine(
        lambda key, periodic: ran_on.append((key, threading.current_thread().name)),
        clock,
        pools={"spec": 8, "observe": 4},
        pool_of=lambda key: "spec" if key in new else "observe",
        executor=factory,
    )
    assert built == {"spec": 8, "observe": 4}
    e.add("fresh")
    e.run_due()
    new.clear()  # admitted: from now on its passes are observations
    e.add("fresh")
    e.add("old")
    e.run_due()
    pools = sorted((key, thread.rsplit("_", 1)[0]) for key, thread in ran_on)  # spec_0: spec
    assert pools == [("fresh", "observe"), ("fresh", "spec"), ("old", "observe")]
    close(e)


def test_a_pool_of_that_fails_sends_the_key_to_the_first_pool(clock: FakeClock) -> None:
    passes = Passes()

    def pool_of(key: str) -> str:
        raise KeyError(key)

    e = engine(passes, clock, pools={"spec": 1, "observe": 1}, pool_of=pool_of)
    e.add("a")
    assert e.run_due() == 1


# -- the driver on an event loop ----------------------------------------------------------------------
def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_the_driver_runs_each_pass_when_its_due_time_comes(clock: FakeClock) -> None:
    passes = Passes()
    e = engine(passes, clock)
    e.add("early")  # before start: dispatched once it starts

    async def scenario() -> None:
        await e.start()
        e.add("now")
        e.add("later", 5.0)
        await settle()
        assert passes.keys() == ["early", "now"]
        clock.advance(4.9)
        await settle()
        assert passes.keys() == ["early", "now"]
        clock.advance(0.1)
        await settle()
        assert passes.keys() == ["early", "now", "later"]
        await e.stop()

    run(scenario)


def test_an_add_from_another_thread_wakes_the_driver(clock: FakeClock) -> None:
    passes = Passes()
    e = engine(passes, clock)

    async def scenario() -> None:
        await e.start()
        e.add("far", 3600.0)  # the driver now sleeps for an hour of fake time
        await settle()
        informer = threading.Thread(target=e.add, args=("a",))
        informer.start()
        informer.join(GUARD)
        await settle()
        assert passes.keys() == ["a"]
        await e.stop()

    run(scenario)


def test_the_resync_timer_tells_each_pass_it_is_periodic(clock: FakeClock) -> None:
    passes = Passes()
    e = engine(passes, clock, keys=lambda: ["a", "b"], resync_interval=15.0)

    async def scenario() -> None:
        await e.start()
        await settle()
        assert passes.calls == []
        clock.advance(15.0)
        await settle()
        assert sorted(passes.calls) == [("a", True), ("b", True)]
        clock.advance(15.0)
        await settle()
        assert len(passes.calls) == 4
        await e.stop()

    run(scenario)


def test_stop_is_idempotent_and_stops_dispatching(clock: FakeClock) -> None:
    passes = Passes()
    e = engine(passes, clock, keys=lambda: ["a"], resync_interval=15.0)

    async def scenario() -> None:
        await e.start()
        await e.stop()
        await e.stop()
        e.add("a")
        clock.advance(60.0)
        await settle()
        assert e.run_due() == 0
        assert passes.calls == []
        with pytest.raises(RuntimeError):
            await e.start()  # an engine starts once

    run(scenario)


@pytest.mark.parametrize("coroutine", [False, True], ids=["function", "coroutine"])
def test_a_failing_every_function_keeps_its_loop(
    clock: FakeClock, coroutine: bool, caplog: pytest.LogCaptureFixture
) -> None:
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(clock.t)
        if len(ticks) == 1:
            raise RuntimeError("scrape failed")

    async def atick() -> None:
        tick()

    e = engine(Passes(), clock)

    async def scenario() -> None:
        e.every(2.0, atick if coroutine else tick)  # before start: begins with start()
        await e.start()
        await settle()  # the timer starts waiting: its ticks count from here
        for _ in range(3):
            clock.advance(2.0)
            await settle()
        await e.stop()
        clock.advance(2.0)
        await settle()

    run(scenario)
    assert ticks == [1002.0, 1004.0, 1006.0]  # none after stop
    assert any(r.name == "lmms.engine" and r.exc_info for r in caplog.records)


def test_every_refuses_an_interval_that_would_spin(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        engine(Passes(), clock).every(0.0, lambda: None)
