"""Publishing to a Leaderboard against the real API server: many runs at once, from
several processes (optimistic concurrency), lose no entry; a re-publish changes nothing."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
from kubernetes import client

from lmms_devcluster.devcluster import DevCluster
from lmms_operator.api import GROUP, VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]


def _publish(args: tuple[str, str, int]) -> bool:
    kubeconfig, namespace, i = args
    os.environ["KUBECONFIG"] = kubeconfig
    from lmms_operator import leaderboards

    entry = {
        "model": f"org/model-{i:02d}",
        "revision": None,
        "task": "mme",
        "metric": "score",
        "value": float(1000 + i),
        "stderr": None,
        "higherIsBetter": True,
        "run": f"{namespace}/run-{i}",
        "finishedAt": "2026-11-27T10:00:00Z",
    }
    return leaderboards.publish(namespace, "board", [entry])


def test_fifty_runs_finishing_at_once_lose_no_entry(
    cluster: DevCluster, api: client.ApiClient, namespace: str
) -> None:
    jobs = [(str(cluster.kubeconfig), namespace, i) for i in range(50)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=4, mp_context=ctx) as pool:
        assert all(pool.map(_publish, jobs))
    board = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "leaderboards", "board"
    )
    assert board["status"]["entries"] == 50 and board["status"]["models"] == 50
    top = board["status"]["top"]
    assert [t["model"] for t in top] == [f"org/model-{i:02d}" for i in (49, 48, 47, 46, 45)]
    assert [t["rank"] for t in top] == [1, 2, 3, 4, 5]
    # The table is complete in its ConfigMaps, old generations are gone.
    core = client.CoreV1Api(api)
    cms = core.list_namespaced_config_map(
        namespace, label_selector="eval.lmms.dev/leaderboard=board"
    ).items
    names = {c.metadata.name for c in cms}
    assert set(board["status"]["configMaps"]) == names
    # The same run published again changes nothing (no write at all).
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        assert list(pool.map(_publish, jobs[:1])) == [False]
