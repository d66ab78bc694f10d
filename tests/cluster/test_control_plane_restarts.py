"""The control plane fails, too: the API server and etcd restart in the middle of runs.

A devcluster of its own (its API server and etcd are stopped and started again, etcd
keeping its data, on the same ports and certificates) and the real operator process. The
executor's node must behave as a kubelet's: after every outage it lists its pods again,
starts those bound meanwhile, and writes each status the API server did not take, so that
the Job controller and the operator see every runner's real end. Every run must end as its
script says, with one Job, and (when it succeeds) one Leaderboard entry.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from lmms_devcluster import devcluster
from lmms_operator.api import GROUP, VERSION
from tests import evalruns as er
from tests.helpers import wait_for
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devcluster.DevCluster]:
    """A devcluster for this module alone: its control plane goes down and up."""
    with devcluster.running(tmp_path_factory.mktemp("restarts")) as dc:
        dc.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        dc.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        yield dc


@pytest.fixture(scope="module")
def own_api(own_cluster: devcluster.DevCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(own_cluster.kubeconfig))


@pytest.fixture(scope="module")
def operator(
    own_cluster: devcluster.DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    # The operator's default for a Job that makes no pod (300 s), not the tests' 15 s: after
    # an outage the controller-manager's informers back off (up to 30 s) before its Job
    # controller sees a new Job, which no operator should take for a refused pod.
    env = {"LMMS_POD_CREATION_TIMEOUT": "300"}
    proc = OperatorProcess(own_cluster, tmp_path_factory.mktemp("operator"), env=env)
    proc.start()
    yield proc
    proc.stop()


def _scores(value: float) -> str:
    message = {"v": 1, "ok": True, "truncated": False, "tasks": {"mme": {"score": value}}}
    return base64.b64encode(json.dumps(message).encode()).decode().rstrip("=")


class Campaign:
    """The runs created so far, and how each must end."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.expected: dict[str, str] = {}  # name -> "Succeeded" or "RunnerError"

    def launch(self, prefix: str, count: int, sleep: float, failing: int = 1) -> list[str]:
        """``count`` runs on the executor's node, each runner sleeping ``sleep`` s; the
        last ``failing`` of them exit 3 (a runner error, not retried)."""
        names = []
        for i in range(count):
            name = f"{prefix}{i}"
            args = {"scripted_sleep": str(sleep)}
            if i >= count - failing:
                args |= {"scripted_exit": "3", "scripted_message": "scripted failure"}
                self.expected[name] = "RunnerError"
            else:
                args["scripted_message_b64"] = _scores(round(0.1 + len(self.expected) / 100, 2))
                self.expected[name] = "Succeeded"
            # One model per run: each run's score is an entry of its own.
            model = {"type": "dummy", "pretrained": f"org/{name}", "args": args}
            er.create(
                self.api, self.namespace, er.manifest(name, er.EXECUTOR, model=model, retries=0)
            )
            names.append(name)
        return names

    def wait_running(self, names: list[str], timeout: float = 120) -> None:
        for name in names:
            er.wait_phase(self.api, self.namespace, name, "Running", timeout=timeout)

    def ended(self) -> dict[str, dict[str, Any]]:
        runs = client.CustomObjectsApi(self.api).list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "evalruns"
        )["items"]
        return {r["metadata"]["name"]: r for r in runs}


def _leaderboard_rows(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    """The default Leaderboard's whole table, from its ConfigMaps."""
    core = client.CoreV1Api(api)
    index = json.loads(
        core.read_namespaced_config_map("leaderboard-default", namespace).data["index.json"]
    )
    rows: list[dict[str, Any]] = []
    for name in index["configMaps"]:
        rows += json.loads(core.read_namespaced_config_map(name, namespace).data["table.json"])
    return rows


def _operator_live(operator: OperatorProcess) -> bool:
    url = f"http://127.0.0.1:{operator.liveness_port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bool(resp.status == 200)


def test_runs_end_right_through_api_server_and_etcd_restarts(
    own_cluster: devcluster.DevCluster, own_api: client.ApiClient, operator: OperatorProcess
) -> None:
    began = time.monotonic()
    api, dc = own_api, own_cluster
    core = client.CoreV1Api(api)
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    wait_for(lambda: core.read_namespaced_service_account("default", namespace), timeout=30)
    runs = Campaign(api, namespace)
    restarts = 0

    # 1. Runners running: the API server restarts, then etcd.
    first = runs.launch("a", 4, sleep=30)
    runs.wait_running(first)
    dc.restart("kube-apiserver", downtime=3)
    dc.restart("etcd", downtime=3)
    restarts += 2

    # 2. Pods bound while the node's watch is away. The executor is paused across a
    #    crash of the API server, and runs are created once the API server is back: their
    #    pods are bound to the node before the executor, resumed, finds its watch broken.
    #    Its relist must start them. Then runs created just as the API server crashes.
    executor = json.loads(dc.state_file.read_text())["pids"]["executor"]
    os.kill(executor, signal.SIGSTOP)
    try:
        dc.restart("kube-apiserver", downtime=2, kill=True)
        restarts += 1
        runs.launch("b", 3, sleep=5)

        def bound() -> bool:
            pods = core.list_namespaced_pod(namespace).items
            return sum(1 for p in pods if p.metadata.name[0] == "b" and p.spec.node_name) == 3

        wait_for(bound, timeout=120, message="the b runs' pods bound")
    finally:
        os.kill(executor, signal.SIGCONT)
    runs.launch("f", 2, sleep=5)
    time.sleep(1.5)
    dc.restart("kube-apiserver", downtime=5, kill=True)
    restarts += 1

    # 3. Runners that end while the API server is away: their pods' statuses cannot be
    #    written then, and must be once it is back.
    third = runs.launch("c", 3, sleep=4)
    runs.wait_running(third)
    with dc.outage("kube-apiserver"):
        time.sleep(12)
    restarts += 1

    # 4. The same with etcd away: the API server answers, every write fails.
    fourth = runs.launch("d", 3, sleep=4)
    runs.wait_running(fourth)
    with dc.outage("etcd"):
        time.sleep(12)
    restarts += 1

    # 5. Restarts in quick succession, with runs starting and ending in between.
    runs.launch("e", 3, sleep=6)
    for component, kill in (("etcd", True), ("kube-apiserver", False), ("etcd", False)):
        time.sleep(2)
        dc.restart(component, downtime=2, kill=kill)
        restarts += 1

    # Every run ends as its script says.
    def all_ended() -> dict[str, dict[str, Any]] | None:
        seen = runs.ended()
        phases = {n: (r.get("status") or {}).get("phase") for n, r in seen.items()}
        return seen if all(p in ("Succeeded", "Failed") for p in phases.values()) else None

    try:
        ended = wait_for(all_ended, timeout=240, interval=1)
    except AssertionError:
        left = {n: (r.get("status") or {}).get("phase") for n, r in runs.ended().items()}
        raise AssertionError(f"runs that did not end: {left}") from None
    assert set(ended) == set(runs.expected)
    outcomes = {}
    for name, run in ended.items():
        status = run["status"]
        outcomes[name] = status["phase"] if status["phase"] == "Succeeded" else status["reason"]
    assert outcomes == runs.expected
    for name, run in ended.items():
        if runs.expected[name] == "RunnerError":
            assert "exit code 3" in run["status"]["message"], (name, run["status"])
        # One Job each: no restart made the operator create a second one.
        assert len(er.jobs_of(api, namespace, run)) == 1, name

    # One Leaderboard entry for each run that succeeded, none for the others.
    succeeded = sorted(n for n, outcome in runs.expected.items() if outcome == "Succeeded")
    wait_for(
        lambda: all(runs.ended()[n]["status"].get("leaderboardPublished") for n in succeeded),
        timeout=60,
        message="every successful run published",
    )
    rows = _leaderboard_rows(api, namespace)
    assert sorted(r["run"] for r in rows) == [f"{namespace}/{n}" for n in succeeded]
    board = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "leaderboards", "default"
    )
    assert board["status"]["entries"] == len(succeeded)

    # The operator lived through it all, and is still live.
    assert operator.proc is not None and operator.proc.poll() is None
    assert _operator_live(operator)
    # The outages did what they were meant to: statuses were kept and written later.
    executor_log = (dc.log_dir / "executor.log").read_text(errors="replace")
    assert "status written after an outage" in executor_log
    assert "pod(s) to start" in executor_log
    print(
        f"\n{restarts} control-plane restarts, {len(ended)} runs, {time.monotonic() - began:.0f}s"
    )
