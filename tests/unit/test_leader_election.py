"""Leader election (``--leader-elect``): the decisions (``reconcile.lease``), the elector's
state machine (``engine.leader``) over an in-memory Lease with client-go's optimistic
concurrency, the write fence (``k8s.writes``) and the flags (``config.LeaderElection``).
Time is a fake clock moved on by hand; the lock answers inline: no test sleeps."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from lmms_operator import errors
from lmms_operator.config import LeaderElection
from lmms_operator.engine.leader import LeaderElector
from lmms_operator.k8s.writes import Writer
from lmms_operator.reconcile import lease
from lmms_operator.reconcile.lease import LeaderRecord, Seen, Timing
from tests.unit.test_engine import FakeClock

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
TIMING = Timing()  # client-go's defaults: 15 s, 10 s, 2 s


# -- the decisions ---------------------------------------------------------------------------
def test_a_missing_lease_is_created_with_no_transition() -> None:
    assert lease.next_record(None, "a", 0.0, T0, TIMING) == LeaderRecord("a", 15, T0, T0, 0)


def test_another_holders_running_term_is_left_alone_until_it_ends_in_our_time() -> None:
    held = LeaderRecord("b", 15, T0, T0, 3)
    seen = Seen(held, at=100.0)
    assert lease.next_record(seen, "a", 114.9, T0, TIMING) is None
    later = T0 + dt.timedelta(seconds=15)
    # Expired by *our* clock since we saw the record change, whatever renewTime says.
    assert lease.next_record(seen, "a", 115.0, later, TIMING) == LeaderRecord(
        "a", 15, later, later, 4
    )


def test_the_same_identity_takes_its_lease_back_at_once_keeping_its_term() -> None:
    mine = LeaderRecord("a", 15, T0, T0, 2)
    later = T0 + dt.timedelta(seconds=3)
    renewed = lease.next_record(Seen(mine, at=100.0), "a", 100.0, later, TIMING)
    assert renewed == LeaderRecord("a", 15, T0, later, 2)


def test_a_released_lease_is_taken_at_once_and_counts_a_transition() -> None:
    gone = lease.released(LeaderRecord("b", 15, T0, T0, 5), T0)
    assert gone == LeaderRecord("", 1, T0, T0, 5)
    taken = lease.next_record(Seen(gone, at=100.0), "a", 100.0, T0, TIMING)
    assert taken == LeaderRecord("a", 15, T0, T0, 6)


def test_a_record_seen_again_keeps_the_time_it_was_first_seen() -> None:
    first = lease.observe(None, LeaderRecord("b", 15, T0, T0), 10.0)
    assert lease.observe(first, LeaderRecord("b", 15, T0, T0), 20.0).at == 10.0
    renewed = LeaderRecord("b", 15, T0, T0 + dt.timedelta(seconds=2))
    assert lease.observe(first, renewed, 20.0).at == 20.0


def test_the_lease_object_round_trips_with_microtimes_and_the_read_version() -> None:
    record = LeaderRecord("pod-1", 15, T0, T0 + dt.timedelta(microseconds=1500), 7)
    body = lease.lease_body("ops", "lmms-operator", record, "42")
    assert body["apiVersion"] == "coordination.k8s.io/v1" and body["kind"] == "Lease"
    assert body["metadata"] == {
        "name": "lmms-operator",
        "namespace": "ops",
        "resourceVersion": "42",
    }
    assert body["spec"]["renewTime"] == "2025-01-01T00:00:00.001500Z"
    assert lease.record_of(body) == record
    released = lease.lease_body("ops", "x", lease.released(record, T0))
    assert (
        "holderIdentity" not in released["spec"] and "resourceVersion" not in released["metadata"]
    )
    assert lease.record_of(released).holder == ""


@pytest.mark.parametrize(
    ("timing", "named"),
    [
        (Timing(10, 10, 2), "--lease-duration (10s) must be longer than --renew-deadline"),
        (Timing(15, 2, 2), "--renew-deadline (2s) must be longer than 1.2 x --retry-period"),
        (Timing(15, 10, 0), "--retry-period must be a positive number"),
        (Timing(15.5, 10, 2), "--lease-duration must be whole seconds"),
    ],
)
def test_unusable_timings_name_the_flag(timing: Timing, named: str) -> None:
    assert any(named in p for p in timing.problems()), timing.problems()
    assert Timing().problems() == []


# -- the elector -----------------------------------------------------------------------------
class Server:
    """One Lease as the API server keeps it: a replace must carry the current
    resourceVersion (client-go's optimistic concurrency). ``down`` fails every request."""

    def __init__(self) -> None:
        self.record: LeaderRecord | None = None
        self.version = 0
        self.down = False
        self.events: list[tuple[str, str]] = []


class Lock:
    def __init__(self, server: Server) -> None:
        self.server = server

    def get(self) -> tuple[LeaderRecord, str] | None:
        if self.server.down:
            raise errors.Unavailable("the API server did not answer")
        if self.server.record is None:
            return None
        return self.server.record, str(self.server.version)

    def write(self, record: LeaderRecord, resource_version: str | None) -> str | None:
        if self.server.down:
            raise errors.Unavailable("the API server did not answer")
        current = None if self.server.record is None else str(self.server.version)
        if resource_version != current:
            return None  # 409: created meanwhile, or a stale resourceVersion
        self.server.record, self.server.version = record, self.server.version + 1
        return str(self.server.version)

    def event(self, identity: str, message: str, when: dt.datetime) -> None:
        self.server.events.append((identity, message))


async def inline(fn: Callable[[], Any]) -> Any:
    return fn()


class Candidate:
    """An elector and what its callbacks saw: ('started'|'stopped', term, fence open)."""

    def __init__(self, server: Server, clock: FakeClock, identity: str) -> None:
        self.calls: list[tuple[str, int, bool]] = []
        self.elector = LeaderElector(
            Lock(server),
            identity,
            TIMING,
            on_started=self._record("started"),
            on_stopped=self._record("stopped"),
            clock=clock,
            blocking=inline,
        )

    def _record(self, what: str) -> Callable[[int], Coroutine[Any, Any, None]]:
        async def callback(term: int) -> None:
            self.calls.append((what, term, self.elector.holds(term)))

        return callback

    def kill(self) -> None:
        """SIGKILL: the loop ends, nothing is released."""
        assert self.elector._task is not None
        self.elector._task.cancel()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def until(clock: FakeClock, done: Callable[[], bool], limit: float = 60.0) -> float:
    """Moves the fake clock on in 0.05 s steps until ``done()``; the fake time it took."""
    start = clock.t
    await settle()
    while not done():
        assert clock.t - start < limit, "never happened"
        clock.advance(0.05)
        await settle()
    return clock.t - start


def test_one_candidate_leads_the_other_stands_by_and_the_leader_renews() -> None:
    async def scenario() -> None:
        server, clock = Server(), FakeClock()
        a, b = Candidate(server, clock, "a"), Candidate(server, clock, "b")
        a.elector.start()
        await until(clock, lambda: a.elector.leading)
        b.elector.start()
        await until(clock, lambda: b.elector.holder == "a", limit=5)
        assert a.calls == [("started", 1, True)] and b.calls == []
        assert server.record is not None and server.record.transitions == 0
        version = server.version
        for _ in range(10):  # 10 retry periods: renewed each time, the standby waits
            clock.advance(TIMING.retry_period)
            await settle()
        assert server.version >= version + 9 and server.record.holder == "a"
        assert not b.elector.leading and b.calls == []
        assert ("a", "became leader") in server.events
        await a.elector.stop()
        await b.elector.stop()

    asyncio.run(scenario())


def test_a_killed_leader_is_replaced_within_the_lease_duration() -> None:
    async def scenario() -> None:
        server, clock = Server(), FakeClock()
        a, b = Candidate(server, clock, "a"), Candidate(server, clock, "b")
        a.elector.start()
        await until(clock, lambda: a.elector.leading)
        b.elector.start()
        await until(clock, lambda: b.elector.holder == "a", limit=5)
        clock.advance(7.3)
        await settle()
        a.kill()
        await settle()
        renewed = server.version
        took = await until(clock, lambda: b.elector.leading)
        assert server.version == renewed + 1
        # The standby counts the lease duration from when it saw the last renewal (at most
        # one retry period, with jitter, after it was written), then takes it at once.
        assert TIMING.lease_duration - TIMING.retry_period <= took
        assert took <= TIMING.lease_duration + 1.2 * TIMING.retry_period + 0.1
        assert server.record is not None
        assert (server.record.holder, server.record.transitions) == ("b", 1)
        assert b.calls == [("started", 1, True)]
        await b.elector.stop()

    asyncio.run(scenario())


def test_a_leader_that_cannot_renew_stops_its_work_at_the_deadline_and_campaigns_again() -> None:
    async def scenario() -> None:
        server, clock = Server(), FakeClock()
        a = Candidate(server, clock, "a")
        a.elector.start()
        await until(clock, lambda: a.elector.leading)
        clock.advance(TIMING.retry_period)
        await settle()  # one more renewal
        renewed_at = clock.t
        server.down = True
        lost = await until(clock, lambda: not a.elector.leading)
        # Stopped within the renew deadline of the last renewal, well before a standby
        # may take over (the lease duration), and the fence closed before the work stopped.
        assert TIMING.renew_deadline - 0.05 <= clock.t - renewed_at <= TIMING.renew_deadline + 0.1
        assert lost < TIMING.lease_duration
        assert a.calls == [("started", 1, True), ("stopped", 1, False)]
        assert a.elector.campaigning  # the process goes on: it campaigns again
        server.down = False
        await until(clock, lambda: a.elector.leading, limit=5)
        # Its own identity in the Lease: taken back at once, no transition counted.
        assert server.record is not None and server.record.transitions == 0
        assert a.calls[-1] == ("started", 2, True)
        assert not a.elector.holds(1)  # the old term's stragglers stay fenced
        await a.elector.stop()

    asyncio.run(scenario())


def test_the_fence_closes_at_the_renew_deadline_even_while_a_renewal_hangs() -> None:
    async def scenario() -> None:
        server, clock = Server(), FakeClock()
        a = Candidate(server, clock, "a")
        a.elector.start()
        await until(clock, lambda: a.elector.leading)
        assert a.elector.holds(1)
        clock.t += TIMING.renew_deadline  # time passes, the loop does not run
        assert not a.elector.holds(1)
        a.kill()
        await settle()

    asyncio.run(scenario())


def test_stopping_releases_the_lease_and_a_standby_takes_it_within_a_retry_period() -> None:
    async def scenario() -> None:
        server, clock = Server(), FakeClock()
        a, b = Candidate(server, clock, "a"), Candidate(server, clock, "b")
        a.elector.start()
        await until(clock, lambda: a.elector.leading)
        b.elector.start()
        await until(clock, lambda: b.elector.holder == "a", limit=5)
        await a.elector.stop()
        assert a.calls == [("started", 1, True), ("stopped", 1, False)]
        assert server.record is not None
        assert (server.record.holder, server.record.duration) == ("", 1)
        took = await until(clock, lambda: b.elector.leading)
        assert took <= 1.2 * TIMING.retry_period + 0.1
        assert server.record.holder == "b" and server.record.transitions == 1
        await b.elector.stop()

    asyncio.run(scenario())


def test_a_restarted_leader_with_the_same_identity_takes_its_lease_back_at_once() -> None:
    async def scenario() -> None:
        server, clock = Server(), FakeClock()
        first = Candidate(server, clock, "pod-0")
        first.elector.start()
        await until(clock, lambda: first.elector.leading)
        acquired = server.record.acquire_time if server.record else None
        first.kill()
        await settle()
        clock.advance(1.0)
        again = Candidate(server, clock, "pod-0")
        again.elector.start()
        took = await until(clock, lambda: again.elector.leading)
        assert took == 0.0
        assert server.record is not None
        assert (server.record.acquire_time, server.record.transitions) == (acquired, 0)
        await again.elector.stop()

    asyncio.run(scenario())


def test_two_standbys_racing_for_an_expired_lease_elect_one() -> None:
    async def scenario() -> None:
        server, clock = Server(), FakeClock()
        server.record, server.version = LeaderRecord("gone", 15, T0, T0, 0), 1
        b, c = Candidate(server, clock, "b"), Candidate(server, clock, "c")
        b.elector.start()
        c.elector.start()
        await until(clock, lambda: b.elector.leading or c.elector.leading)
        for _ in range(20):
            clock.advance(TIMING.retry_period)
            await settle()
        assert [b.elector.leading, c.elector.leading].count(True) == 1
        assert server.record.transitions == 1
        await b.elector.stop()
        await c.elector.stop()

    asyncio.run(scenario())


# -- the fence on every other write ------------------------------------------------------------
class Api:
    """Records requests (a unit test of the Writer alone)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def request(self, method: str, path: str, **_: Any) -> Any:
        self.sent.append((method, path))
        return _Response()

    def call(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        self.sent.append((method, path))
        return {"metadata": {"resourceVersion": "1"}}


class _Response:
    data = b"{}"

    def release_conn(self) -> None:
        pass


def test_a_closed_fence_refuses_writes_before_they_are_sent_but_not_the_lease() -> None:
    api, open_ = Api(), [True]
    writer = Writer(api, fence=lambda: open_[0])  # type: ignore[arg-type]
    cm = {"kind": "ConfigMap", "metadata": {"name": "x", "namespace": "ns"}}
    writer.create(cm)
    open_[0] = False
    with pytest.raises(errors.NotLeading):
        writer.create(cm)
    with pytest.raises(errors.NotLeading):
        writer.patch_evalrun_status("ns", "run", {"phase": "Failed"})
    with pytest.raises(errors.NotLeading):
        writer.create_leaderboard({"metadata": {"namespace": "ns", "name": "b"}})
    writer.event({"metadata": {"name": "run", "namespace": "ns"}}, "Normal", "X", "y")
    body = lease.lease_body("ns", "l", LeaderRecord("a", 15, T0, T0), "1")
    writer.replace_lease(body, timeout=5)
    assert api.sent == [
        ("POST", "/api/v1/namespaces/ns/configmaps"),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l"),
    ]


# -- the flags ---------------------------------------------------------------------------------
def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    LeaderElection.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_without_the_flag_there_is_no_election_and_the_defaults_are_client_gos(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAME", "lmms-operator-7d9f-abcde")
    election = LeaderElection.from_args(_args())
    assert not election.enabled
    assert (election.name, election.namespace) == ("lmms-operator", "")
    assert election.identity == "lmms-operator-7d9f-abcde"  # the pod name: stable
    assert election.timing == Timing(15, 10, 2)
    on = LeaderElection.from_args(
        _args(
            "--leader-elect",
            "--lease-name",
            "ops",
            "--lease-namespace",
            "sys",
            "--retry-period",
            "1",
        )
    )
    assert dataclasses.astuple(on)[:3] == (True, "ops", "sys")
    assert on.timing.retry_period == 1


def test_an_unusable_flag_is_named() -> None:
    with pytest.raises(ValueError, match="--lease-name must be a DNS subdomain"):
        LeaderElection.from_args(_args("--lease-name", "Not_A_Name"))
    with pytest.raises(ValueError, match="--renew-deadline"):
        LeaderElection.from_args(_args("--renew-deadline", "20"))
