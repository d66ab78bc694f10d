"""Publishing to a Leaderboard against the real API server: many runs at once, from
several processes (optimistic concurrency), lose no entry; a re-publish changes nothing."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
from kubernetes import client

from lmms_devcluster.devcluster import DevCluster
from lmms_operator.api import GROUP, VERSION
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]


def _publish(args: tuple[str, str, int], board: str = "board") -> bool:
    kubeconfig, namespace, i = args
    os.environ["KUBECONFIG"] = kubeconfig
    from lmms_operator.applier import Applier
    from lmms_operator.clock import Clock
    from lmms_operator.k8s import Api
    from lmms_operator.metrics import Metrics
    from lmms_operator.objectstore import ObjectStore, StorePolicy

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
    return Applier(Clock(), ObjectStore(StorePolicy(), Api()), Metrics(), Api()).publish(
        namespace, board, [entry]
    )


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


def test_a_leaderboard_name_longer_than_a_label_value_works(
    cluster: DevCluster, api: client.ApiClient, namespace: str
) -> None:
    name = "a-very-long-leaderboard-name-" + "x" * 180  # 209 characters: a valid name
    assert _publish((str(cluster.kubeconfig), namespace, 1), board=name)
    board = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "leaderboards", name
    )
    assert board["status"]["entries"] == 1
    from lmms_operator.leaderboards import board_label

    cms = (
        client.CoreV1Api(api)
        .list_namespaced_config_map(
            namespace, label_selector=f"eval.lmms.dev/leaderboard={board_label(name)}"
        )
        .items
    )
    assert {c.metadata.name for c in cms} == set(board["status"]["configMaps"])
    assert all(len(c.metadata.name) <= 253 for c in cms)


def test_a_failed_publish_leaves_no_configmap_behind(
    cluster: DevCluster, api: client.ApiClient, namespace: str
) -> None:
    """A quota lets the table's ConfigMap in but not the index: the publish fails (and
    would be retried), and what it wrote is gone."""
    core = client.CoreV1Api(api)
    core.create_namespaced_resource_quota(
        namespace,
        {"metadata": {"name": "cm"}, "spec": {"hard": {"count/configmaps": "2"}}},
    )
    wait_for(
        lambda: (core.read_namespaced_resource_quota("cm", namespace).status.used or {}).get(
            "count/configmaps"
        ),
        timeout=60,
        message="quota usage computed",
    )
    from lmms_operator import errors

    with pytest.raises(errors.Forbidden):
        _publish((str(cluster.kubeconfig), namespace, 1))
    left = core.list_namespaced_config_map(
        namespace, label_selector="eval.lmms.dev/leaderboard=board"
    ).items
    assert left == []


@pytest.mark.usefixtures("operator_process")
def test_editing_rank_by_or_top_re_renders_the_table_at_once(
    cluster: DevCluster, api: client.ApiClient, namespace: str
) -> None:
    for i in range(3):
        assert _publish((str(cluster.kubeconfig), namespace, i), board="edited")
    # A second metric per model, ranked the other way round.
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    from lmms_operator import leaderboards
    from lmms_operator.applier import Applier
    from lmms_operator.clock import Clock
    from lmms_operator.k8s import Api
    from lmms_operator.metrics import Metrics
    from lmms_operator.objectstore import ObjectStore, StorePolicy

    Applier(Clock(), ObjectStore(StorePolicy(), Api()), Metrics(), Api()).publish(
        namespace,
        "edited",
        [
            {
                "model": f"org/model-{i:02d}",
                "task": "mme",
                "metric": "cognition",
                "value": float(100 - i),
                "higherIsBetter": True,
                "run": f"{namespace}/run-{i}",
                "finishedAt": "2026-11-27T10:00:00Z",
            }
            for i in range(3)
        ],
    )
    co = client.CustomObjectsApi(api)

    def board() -> dict[str, object]:
        return dict(
            co.get_namespaced_custom_object(GROUP, VERSION, namespace, "leaderboards", "edited")
        )

    first = board()["status"]["top"]  # type: ignore[index]
    # Without rankBy, the task's first metric (cognition) ranks.
    assert first[0]["model"] == "org/model-00" and first[0]["metric"] == "cognition"
    co.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "leaderboards",
        "edited",
        {"spec": {"rankBy": {"mme": "score"}, "top": 2}},
    )

    def re_ranked() -> list[dict[str, object]] | None:
        status = board()["status"]
        top = status["top"]  # type: ignore[index]
        return top if top and top[0]["metric"] == "score" else None

    top = wait_for(re_ranked, timeout=30)
    assert [e["model"] for e in top] == ["org/model-02", "org/model-01"]  # top: 2
    entries, _ = leaderboards.read(Api(), namespace, board())
    best = next(e for e in entries if e["rank"] == 1)
    assert (best["metric"], best["model"]) == ("score", "org/model-02")


def test_a_table_edited_by_hand_is_refused_not_followed(
    cluster: DevCluster, api: client.ApiClient, namespace: str
) -> None:
    """The table's ConfigMaps are in the tenant's namespace: an index pointing at other
    ConfigMaps, or a table that is not a table, is refused (not retried, not read)."""
    assert _publish((str(cluster.kubeconfig), namespace, 1), board="edited-by-hand")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    from lmms_operator import leaderboards

    core = client.CoreV1Api(api)
    index = "leaderboard-edited-by-hand"
    for data in (
        {"index.json": '{"configMaps": ["kube-root-ca.crt"]}'},
        {"index.json": '{"configMaps": ' + json.dumps([f"{index}-x"] * 1000) + "}"},
        {"index.json": "not json"},
    ):
        core.patch_namespaced_config_map(index, namespace, {"data": data})
        with pytest.raises(leaderboards.LeaderboardCorrupt):
            _publish((str(cluster.kubeconfig), namespace, 2), board="edited-by-hand")
