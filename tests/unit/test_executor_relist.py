"""The executor's relist: after its watch broke, it makes its runners match the pods bound
to its node, as a kubelet does, and keeps each status until the API server takes it."""

from __future__ import annotations

from typing import Any

import urllib3
from kubernetes.client.rest import ApiException

from lmms_devcluster.executor import PodView, Relist, StatusWriter, plan_relist, pod_action


def pending(uid: str, phase: str | None = "Pending") -> PodView:
    return PodView(uid=uid, phase=phase, deleting=False)


def deleting(uid: str, phase: str | None = "Running") -> PodView:
    return PodView(uid=uid, phase=phase, deleting=True)


def test_pods_bound_while_away_are_started() -> None:
    pods = [pending("new"), pending("fresh", phase=None), pending("old", phase="Running")]
    plan = plan_relist(pods, running=["old"], unwritten=[])
    assert plan == Relist(start=("new", "fresh"))


def test_a_pod_already_run_is_not_started_again() -> None:
    # Its runner may have finished (the pod is still Pending in the API because that
    # write failed): it is not started a second time, its status is written again.
    plan = plan_relist([pending("done")], running=["done"], unwritten=["done"])
    assert plan == Relist(report=("done",))


def test_finished_pods_without_a_runner_are_left_alone() -> None:
    pods = [pending("a", "Succeeded"), pending("b", "Failed")]
    assert plan_relist(pods, running=[], unwritten=[]) == Relist()


def test_pods_deleted_while_away_are_stopped() -> None:
    plan = plan_relist([pending("kept", "Running")], running=["kept", "gone"], unwritten=[])
    assert plan == Relist(stop=("gone",))


def test_pods_being_deleted_are_stopped_and_their_deletion_confirmed() -> None:
    pods = [deleting("running"), deleting("never-started", phase="Pending")]
    plan = plan_relist(pods, running=["running"], unwritten=["running"])
    # Both are confirmed (the executor stops the one it runs first); no status is
    # written for a pod on its way out.
    assert plan == Relist(delete=("running", "never-started"))


def test_unwritten_statuses_are_reported_again_for_pods_still_there() -> None:
    pods = [pending("a", "Running"), pending("b", "Pending"), pending("c", "Running")]
    plan = plan_relist(pods, running=["a", "b", "c", "gone"], unwritten=["b", "c", "gone"])
    assert plan == Relist(stop=("gone",), report=("b", "c"))


def test_a_watch_event_and_a_relist_decide_alike() -> None:
    assert pod_action(pending("x"), running=False) == "start"
    assert pod_action(pending("x"), running=True) is None
    assert pod_action(pending("x", "Running"), running=False) is None
    assert pod_action(deleting("x"), running=False) == "delete"


class FlakyCore:
    """Stands in for CoreV1Api's patch_namespaced_pod_status: fails while ``down``."""

    def __init__(self) -> None:
        self.down: BaseException | None = None
        self.written: list[dict[str, Any]] = []

    def patch_namespaced_pod_status(
        self, name: str, namespace: str, body: dict[str, Any], **_: Any
    ) -> None:
        if self.down is not None:
            raise self.down
        self.written.append(body["status"])


def test_a_status_the_api_server_did_not_take_is_kept_merged_and_written_later() -> None:
    core = FlakyCore()
    writer = StatusWriter(core)
    writer.report("u", "ns", "p", {"phase": "Pending", "containerStatuses": ["waiting"]})
    assert core.written and writer.unwritten() == set()

    core.down = urllib3.exceptions.MaxRetryError(None, "/", "connection refused")  # type: ignore[arg-type]
    writer.report("u", "ns", "p", {"phase": "Running", "podIP": "10.0.0.2"})
    writer.report("u", "ns", "p", {"phase": "Succeeded", "containerStatuses": ["done"]})
    assert writer.unwritten() == {"u"}
    assert not writer.write("u")  # still away: kept
    core.down = ApiException(status=503, reason="etcd unavailable")
    assert not writer.write("u")

    core.down = None
    assert writer.write("u")
    # One write of the latest status, with what the failed writes carried.
    assert core.written[-1] == {
        "phase": "Succeeded",
        "podIP": "10.0.0.2",
        "containerStatuses": ["done"],
    }
    assert writer.unwritten() == set()


def test_a_status_for_a_pod_that_is_gone_is_dropped() -> None:
    core = FlakyCore()
    writer = StatusWriter(core)
    core.down = ApiException(status=404, reason="Not Found")
    assert writer.write("u")  # nothing pending: nothing to do
    writer.report("u", "ns", "p", {"phase": "Running"})
    assert writer.unwritten() == set()
    core.down = OSError("reset")
    writer.report("v", "ns", "q", {"phase": "Running"})
    writer.forget("v")  # its runner was stopped
    assert writer.unwritten() == set()
