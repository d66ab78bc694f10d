"""A publish that keeps failing becomes a condition on the run, not an endless retry
(publishing.publish_results, with the API calls replaced: one function under test)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from lmms_operator import errors, k8s, leaderboards, publishing

RUN: dict[str, Any] = {
    "metadata": {"name": "r", "namespace": "team-a", "uid": "u-1", "generation": 1},
    "spec": {"model": {"type": "qwen2_vl"}, "tasks": ["mme"], "leaderboard": "board"},
}
STATUS = {
    "jobName": "r-abc",
    "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded"}],
}
MESSAGE = '{"v": 1, "ok": true, "tasks": {"mme": {"acc": 0.5}}}'


@pytest.fixture()
def quota_exceeded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    created: list[str] = []
    monkeypatch.setattr(k8s, "create", lambda obj: created.append(obj["metadata"]["name"]))

    def refuse(*_: Any) -> bool:
        raise errors.Forbidden("exceeded quota: count/configmaps")

    monkeypatch.setattr(leaderboards, "publish", refuse)
    return created


def test_a_failing_publish_ends_in_a_condition_after_bounded_tries(
    quota_exceeded: list[str],
) -> None:
    for _ in range(publishing.PUBLISH_TRIES - 1):
        with pytest.raises(errors.Forbidden):
            publishing.publish_results(RUN, STATUS, None, MESSAGE)
    plan = publishing.publish_results(RUN, STATUS, None, MESSAGE)
    assert plan.status["leaderboardPublished"] is False
    assert plan.status["results"] == [{"task": "mme", "metric": "acc", "value": 0.5}]
    ready, published = plan.status["conditions"]
    assert ready["type"] == "Ready"  # the other conditions stay
    assert (published["type"], published["status"], published["reason"]) == (
        "LeaderboardPublished",
        "False",
        "PublishFailed",
    )
    assert "exceeded quota" in published["message"]
    assert [e.reason for e in plan.events] == ["ResultsCollected", "PublishFailed"]
    assert not publishing._publish_failures  # nothing kept for the run


def test_a_full_leaderboard_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(k8s, "create", lambda obj: True)

    def full(*_: Any) -> bool:
        raise leaderboards.LeaderboardFull("holds 10000 entries")

    monkeypatch.setattr(leaderboards, "publish", full)
    plan = publishing.publish_results(RUN, STATUS, None, MESSAGE)
    assert plan.status["leaderboardPublished"] is False


def test_a_writer_that_lost_the_race_pauses_a_random_time_that_grows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writers that collided on the index ConfigMap do not try again in lockstep: each
    waits a random time, up to a bound that doubles with each lost race, then levels."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    for attempt in range(12):
        for _ in range(50):
            leaderboards._backoff(attempt)
        bound = min(leaderboards.BACKOFF_CAP, leaderboards.BACKOFF_BASE * 2**attempt)
        pauses, slept[:] = slept[:], []
        assert all(0 <= p <= bound for p in pauses), (attempt, max(pauses))
        assert len(set(pauses)) == len(pauses)  # random: no two writers wait alike
        assert max(pauses) > bound / 2  # and the range is used, up to the bound
