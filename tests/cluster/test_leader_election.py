"""Two replicas (``lmms-operator run --leader-elect``) against the real control plane: one
does the work while it holds the ``coordination.k8s.io`` Lease, the other stands by.

The figures these tests measure (time from the signal to the standby holding the Lease)
are printed (``-s``) and bounded by what the flags promise: the lease duration after a
SIGKILL, about one retry period after a SIGTERM (the Lease is released). The timing is
client-go's default (15 s, 10 s, 2 s), as the chart runs it.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from lmms_devcluster import devcluster
from lmms_operator.engine.leader import STANDBY_READ
from tests import evalruns as er
from tests.helpers import wait_for
from tests.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster]

LEASE = "lmms-operator"
LEASE_DURATION, RETRY_PERIOD = 15.0, 2.0
#: A standby tries every retry period plus up to 20% jitter; then one read and one write
#: (on a loaded CI machine, allow 1.5 s for them and the test's own polling).
TRY = 1.2 * RETRY_PERIOD + 1.5


def _scripted(name: str, sleep: float) -> dict[str, Any]:
    message = {"v": 1, "ok": True, "truncated": False, "tasks": {"mme": {"score": 0.5}}}
    args = {
        "scripted_message_b64": base64.b64encode(json.dumps(message).encode()).decode().rstrip("="),
        "scripted_sleep": str(sleep),
    }
    return er.manifest(
        name,
        er.EXECUTOR,
        model={"type": "dummy", "pretrained": f"org/{name}", "args": args},
        leaderboard="ha",
        retries=0,
    )


def _lease(api: client.ApiClient, namespace: str) -> dict[str, Any] | None:
    try:
        found = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(api.sanitize_for_serialization(found))


def _holder(api: client.ApiClient, namespace: str) -> str:
    return str(((_lease(api, namespace) or {}).get("spec") or {}).get("holderIdentity") or "")


def _leading(proc: OperatorProcess) -> float | None:
    found = re.search(r"^lmms_operator_leader (\S+)$", proc.metrics(), re.MULTILINE)
    return float(found.group(1)) if found else None


def _healthy(proc: OperatorProcess) -> dict[str, Any]:
    """What the liveness endpoint says (its probe is ``watches``)."""
    url = f"http://127.0.0.1:{proc.liveness_port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        return dict(json.loads(resp.read())["watches"])


@pytest.fixture()
def elected(
    cluster: devcluster.DevCluster,
    operator_process: OperatorProcess,
    namespace: str,
    tmp_path: Path,
) -> Iterator[Callable[[str], OperatorProcess]]:
    """Starts replicas with ``--leader-elect`` (identity: ``POD_NAME``), watching and
    electing in the test's namespace. The admin-credential operator of the other tests
    steps aside meanwhile: it would do the work beside them."""
    operator_process.stop()
    started: list[OperatorProcess] = []

    def start(identity: str) -> OperatorProcess:
        workdir = tmp_path / f"{identity}-{len(started)}"
        workdir.mkdir()
        args = ["--leader-elect", "--lease-namespace", namespace, "--namespace", namespace]
        proc = OperatorProcess(cluster, workdir, env={"POD_NAME": identity}, args=args)
        started.append(proc)
        proc.start()
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop(signal.SIGKILL)
        operator_process.start()


def _leader_and_standby(
    api: client.ApiClient, namespace: str, elected: Callable[[str], OperatorProcess]
) -> tuple[OperatorProcess, OperatorProcess]:
    a = elected("op-a")
    wait_for(lambda: _holder(api, namespace) == "op-a", timeout=30)
    b = elected("op-b")
    wait_for(lambda: _leading(a) == 1.0 and _leading(b) == 0.0, timeout=10)
    assert _healthy(b)["leader"] is False  # a standby is live (and ready)
    return a, b


def test_a_killed_leader_is_replaced_within_the_lease_time_and_the_run_finishes_once(
    api: client.ApiClient, namespace: str, elected: Callable[[str], OperatorProcess]
) -> None:
    a, b = _leader_and_standby(api, namespace, elected)
    er.create(api, namespace, _scripted("ha", sleep=20))
    running = er.wait_phase(api, namespace, "ha", "Running", timeout=60)
    a.stop(signal.SIGKILL)  # in the middle of the run: nothing is released
    killed = time.monotonic()
    wait_for(lambda: _holder(api, namespace) == "op-b", timeout=60, interval=0.1)
    took = time.monotonic() - killed
    print(f"\nSIGKILL of the leader -> the standby holds the Lease: {took:.1f}s")
    # The standby counts the lease duration from when it saw the last renewal (it reads
    # the Lease every 0.5 s: engine/leader.STANDBY_READ), which came before the kill, and
    # takes the Lease right then: within the lease duration of the kill, plus one read
    # and one write (on a loaded CI machine, allow 1.5 s for them and the test's polling).
    assert took <= LEASE_DURATION + STANDBY_READ + 1.5
    lease = _lease(api, namespace)
    assert lease is not None and lease["spec"]["leaseTransitions"] == 1
    wait_for(lambda: _leading(b) == 1.0, timeout=10)

    done = er.wait_phase(api, namespace, "ha", "Succeeded", timeout=120)
    assert done["status"]["jobName"] == running["status"]["jobName"]
    assert [j.metadata.name for j in er.jobs_of(api, namespace, done)] == [
        running["status"]["jobName"]
    ]
    boards = client.CustomObjectsApi(api)
    board = wait_for(
        lambda: boards.get_namespaced_custom_object(
            "eval.lmms.dev", "v1alpha1", namespace, "leaderboards", "ha"
        ).get("status"),
        timeout=30,
    )
    assert board["entries"] == 1
    assert er.event_reasons(api, namespace, "ha").count("JobCreated") == 1
    assert "op-b became the leader" in b.log()


def test_sigterm_releases_the_lease_and_the_standby_takes_over_in_a_retry_period(
    api: client.ApiClient, namespace: str, elected: Callable[[str], OperatorProcess]
) -> None:
    a, b = _leader_and_standby(api, namespace, elected)
    asked = time.monotonic()
    a.stop(signal.SIGTERM)
    stopped = time.monotonic() - asked
    assert a.proc is not None and a.proc.returncode == 0
    assert "released by op-a" in a.log()
    wait_for(lambda: _holder(api, namespace) == "op-b", timeout=30, interval=0.1)
    took = time.monotonic() - asked
    print(
        f"\nSIGTERM of the leader -> the standby holds the Lease: {took:.1f}s ({stopped:.1f}s to exit)"
    )
    assert took - stopped <= TRY  # the Lease was free: no wait for its duration
    assert took < LEASE_DURATION
    wait_for(lambda: _leading(b) == 1.0, timeout=10)
    er.create(api, namespace, _scripted("after", sleep=0))
    er.wait_phase(api, namespace, "after", "Succeeded", timeout=60)


def test_a_restarted_leader_takes_its_lease_back_at_once(
    api: client.ApiClient, namespace: str, elected: Callable[[str], OperatorProcess]
) -> None:
    a, b = _leader_and_standby(api, namespace, elected)
    a.stop(signal.SIGKILL)
    killed = time.monotonic()
    again = elected("op-a")  # the same pod name: a restarted container
    wait_for(lambda: _leading(again) == 1.0, timeout=30, interval=0.1)
    took = time.monotonic() - killed
    print(f"\nrestarted leader (same identity) leads again after {took:.1f}s")
    assert took < LEASE_DURATION - RETRY_PERIOD  # before the standby may take it
    lease = _lease(api, namespace)
    assert lease is not None
    assert (lease["spec"]["holderIdentity"], lease["spec"]["leaseTransitions"]) == ("op-a", 0)
    assert _leading(b) == 0.0
    er.create(api, namespace, _scripted("back", sleep=0))
    er.wait_phase(api, namespace, "back", "Succeeded", timeout=60)


def test_losing_the_lease_stops_the_work_without_exiting(
    cluster: devcluster.DevCluster,
    api: client.ApiClient,
    namespace: str,
    elected: Callable[[str], OperatorProcess],
) -> None:
    a = elected("op-a")
    wait_for(lambda: _holder(api, namespace) == "op-a", timeout=30)
    # Another holder (a replica the leader cannot see, say) writes the Lease.
    lease = _lease(api, namespace)
    assert lease is not None
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())  # a MicroTime
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEASE, "resourceVersion": lease["metadata"]["resourceVersion"]},
        "spec": {
            "holderIdentity": "elsewhere",
            "leaseDurationSeconds": int(LEASE_DURATION),
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": 1,
        },
    }
    # (kubectl: the Python client rewrites MicroTimes in a form the API server refuses.)
    cluster.kubectl("replace", "-n", namespace, "-f", "-", input=json.dumps(body))
    wait_for(lambda: _leading(a) == 0.0, timeout=TRY + 2, interval=0.1)
    assert a.proc is not None and a.proc.poll() is None  # still running
    # (Kopf keeps a probe's answer for up to 10 s.)
    wait_for(lambda: _healthy(a)["leader"] is False, timeout=12)
    assert "stopped leading: the Lease is held by 'elsewhere'" in a.log()
    er.create(api, namespace, _scripted("held", sleep=0))
    time.sleep(3)  # a standby does not admit it
    assert not (er.get(api, namespace, "held").get("status") or {}).get("phase")
    # "elsewhere" never renews: once its term ends, op-a takes the Lease and the work back.
    wait_for(lambda: _holder(api, namespace) == "op-a", timeout=LEASE_DURATION + 10)
    er.wait_phase(api, namespace, "held", "Succeeded", timeout=60)
    assert _leading(a) == 1.0


def test_without_the_flag_no_lease_is_written(
    api: client.ApiClient, namespace: str, operator_process: OperatorProcess
) -> None:
    er.create(api, namespace, _scripted("plain", sleep=0))
    er.wait_phase(api, namespace, "plain", "Succeeded", timeout=60)
    assert _leading(operator_process) == 1.0  # it does the work
    leases = client.CoordinationV1Api(api).list_lease_for_all_namespaces().items
    ours = [
        f"{x.metadata.namespace}/{x.metadata.name}"
        for x in leases
        if x.metadata.name == LEASE and x.metadata.namespace in (namespace, "default")
    ]
    assert not ours
