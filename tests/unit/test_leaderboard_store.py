"""A Leaderboard whose object store is refused (by the endpoint check, by the connector,
or by boto3 itself) still gets its table published in its ConfigMaps, once: its
ObjectStoreSynced condition turns False with a message that names
spec.storage.s3.endpoint, and nothing is retried. The API writes are replaced."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from lmms_operator.applier import Applier
from lmms_operator.clock import Clock
from lmms_operator.k8s import Api
from lmms_operator.metrics import Metrics
from lmms_operator.objectstore import ObjectStore, StorePolicy
from lmms_operator.reconcile import leaderboard as lb
from lmms_operator.reconcile import reasons as R

ROWS = [{"model": "m", "task": "mme", "metric": "acc", "value": 0.5, "run": "team-a/r"}]


class _Secrets(Api):
    def read_tenant_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return {"AWS_ACCESS_KEY_ID": b"AKIATESTTESTTEST", "AWS_SECRET_ACCESS_KEY": b"s3cr3t-x"}


def _board(endpoint: str, bucket: str = "boards") -> dict[str, Any]:
    s3 = {"bucket": bucket, "endpoint": endpoint, "credentialsSecret": "creds"}
    return {
        "metadata": {"name": "board", "namespace": "team-a", "uid": "b-1", "generation": 1},
        "spec": {"storage": {"s3": s3}},
    }


class _Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.statuses: list[dict[str, Any]] = []


def _applier(monkeypatch: pytest.MonkeyPatch, resolver: Any = None) -> tuple[Applier, _Recorded]:
    store = ObjectStore(StorePolicy(), _Secrets(), resolver=resolver)
    applier = Applier(Clock(), store, Metrics(), Api())
    seen = _Recorded()
    monkeypatch.setattr(
        applier.writes,
        "event",
        lambda obj, kind, reason, message: seen.events.append((reason, message)),
    )
    monkeypatch.setattr(
        applier.writes,
        "patch_leaderboard_status",
        lambda namespace, name, status: seen.statuses.append(status),
    )
    monkeypatch.setattr(applier, "_swap", lambda *args: ["board-1-abc-0"])
    return applier, seen


def _private(host: str, port: int) -> Sequence[str]:
    return ["10.0.0.7"]


@pytest.mark.parametrize(
    ("endpoint", "resolver", "expected"),
    [
        # Refused by the endpoint check: a metadata address in an odd spelling.
        ("http://0251.0376.0251.0376", None, "spec.storage.s3.endpoint: 169.254.169.254"),
        # Refused by the connector: a name that resolves to a private address.
        ("http://store.example:9000", _private, "spec.storage.s3.endpoint: 'store.example'"),
    ],
)
def test_a_refused_store_is_a_condition_not_a_retry(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, resolver: Any, expected: str
) -> None:
    applier, seen = _applier(monkeypatch, resolver)
    ranked = lb.rank(ROWS, {})
    assert applier._write_table("team-a", _board(endpoint), ranked, None) is True
    (status,) = seen.statuses
    assert status["configMaps"] == ["leaderboard-board", "board-1-abc-0"]
    (cond,) = status["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == (
        R.OBJECT_STORE_SYNCED,
        "False",
        R.LEADERBOARD_STORE_FAILED,
    )
    assert cond["message"].startswith(expected), cond["message"]
    assert "tableLocation" not in status
    assert seen.events == [(R.LEADERBOARD_STORE_FAILED, cond["message"])]


def test_whatever_boto3_raises_is_a_condition(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    def refuse(*_: Any, **__: Any) -> Any:
        raise ValueError("Invalid endpoint: http://store.example")

    monkeypatch.setattr(boto3, "client", refuse)
    applier, _ = _applier(monkeypatch)
    stored = applier._store("team-a", _board("http://store.example"), lb.rank(ROWS, {}))
    assert stored is not None and stored[0] is None
    assert (stored[1] or "").startswith("spec.storage.s3: no client for the store: ValueError")


def test_a_storage_spec_the_operator_cannot_read_is_a_condition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    applier, _ = _applier(monkeypatch)
    stored = applier._store("team-a", _board("http://store.example", bucket="x"), [])
    assert stored is not None and stored[0] is None
    assert (stored[1] or "").startswith("spec.storage.s3: ")
