"""A publish that keeps failing becomes a condition on the run, not an endless retry: the
applier retries a failed Leaderboard publish (``PublishFailed``) until the run's last
try, then answers ``Replan``; the decision turns that into a condition. Each unit is
tested alone, with the API calls replaced."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from lmms_operator import errors, leaderboards
from lmms_operator.api import EvalRunSpec
from lmms_operator.applier import BACKOFF_BASE, BACKOFF_CAP, Applier, backoff
from lmms_operator.clock import Clock
from lmms_operator.k8s import Api
from lmms_operator.metrics import Metrics
from lmms_operator.objectstore import ObjectStore, StorePolicy
from lmms_operator.reconcile import publishing
from lmms_operator.reconcile.plan import PublishEntries, Replan

RUN: dict[str, Any] = {
    "metadata": {"name": "r", "namespace": "team-a", "uid": "u-1", "generation": 1},
    "spec": {"model": {"type": "qwen2_vl"}, "tasks": ["mme"], "leaderboard": "board"},
}
SPEC = EvalRunSpec.model_validate(RUN["spec"])
STATUS = {
    "jobName": "r-abc",
    "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded"}],
}
MESSAGE = '{"v": 1, "ok": true, "tasks": {"mme": {"acc": 0.5}}}'
NOW = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)


def _step(attempt: int) -> PublishEntries:
    entry = {"model": "m", "task": "mme", "metric": "acc", "value": 0.5, "run": "team-a/r"}
    return PublishEntries("team-a", "board", (entry,), "u-1", attempt=attempt)


@pytest.fixture()
def quota_exceeded(monkeypatch: pytest.MonkeyPatch) -> Applier:
    applier = Applier(Clock(), ObjectStore(StorePolicy(), Api()), Metrics(), Api())

    def refuse(*_: Any) -> bool:
        raise errors.Forbidden("exceeded quota: count/configmaps")

    monkeypatch.setattr(applier, "publish", refuse)
    return applier


def test_a_failing_publish_is_retried_until_the_last_try(quota_exceeded: Applier) -> None:
    for attempt in range(1, publishing.PUBLISH_TRIES):
        with pytest.raises(errors.PublishFailed):
            quota_exceeded._publish(_step(attempt))
    replan = quota_exceeded._publish(_step(publishing.PUBLISH_TRIES))
    assert isinstance(replan, Replan) and replan.publish_failed is not None
    assert "exceeded quota" in replan.publish_failed
    assert f"after {publishing.PUBLISH_TRIES} tries" in replan.publish_failed


def test_a_full_leaderboard_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    applier = Applier(Clock(), ObjectStore(StorePolicy(), Api()), Metrics(), Api())

    def full(*_: Any) -> bool:
        raise leaderboards.LeaderboardFull("holds 10000 entries")

    monkeypatch.setattr(applier, "publish", full)
    replan = applier._publish(_step(1))
    assert replan is not None and "holds 10000 entries" in (replan.publish_failed or "")


def test_the_decision_counts_the_tries_and_ends_in_a_condition() -> None:
    inputs = publishing.Inputs(termination=MESSAGE, publish_failures=publishing.PUBLISH_TRIES - 1)
    plan = publishing.decide(RUN, SPEC, STATUS, inputs, NOW)
    assert [p.attempt for p in plan.publish] == [publishing.PUBLISH_TRIES]
    assert plan.status["leaderboardPublished"] is True  # once the publish step succeeds

    failed = publishing.Inputs(termination=MESSAGE, publish_failed="not published: quota")
    plan = publishing.decide(RUN, SPEC, STATUS, failed, NOW)
    assert not plan.publish
    assert plan.status["leaderboardPublished"] is False
    assert plan.status["results"] == [{"task": "mme", "metric": "acc", "value": 0.5}]
    ready, published = plan.status["conditions"]
    assert ready["type"] == "Ready"  # the other conditions stay
    assert (published["type"], published["status"], published["reason"]) == (
        "LeaderboardPublished",
        "False",
        "PublishFailed",
    )
    assert "quota" in published["message"]
    assert [e.reason for e in plan.events] == ["ResultsCollected", "PublishFailed"]


def test_a_writer_that_lost_the_race_pauses_a_random_time_that_grows() -> None:
    """Writers that collided on the index ConfigMap do not try again in lockstep: each
    waits a random time, up to a bound that doubles with each lost race, then levels."""
    slept: list[float] = []
    for attempt in range(12):
        for _ in range(50):
            backoff(attempt, sleep=slept.append)
        bound = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
        pauses, slept[:] = slept[:], []
        assert all(0 <= p <= bound for p in pauses), (attempt, max(pauses))
        assert len(set(pauses)) == len(pauses)  # random: no two writers wait alike
        assert max(pauses) > bound / 2  # and the range is used, up to the bound
