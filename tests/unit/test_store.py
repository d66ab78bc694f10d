"""The store: what it keeps of runs and their children, and what it drops."""

from __future__ import annotations

from typing import Any

from lmms_operator.metrics import Metrics
from lmms_operator.store import Store, keep

metrics = Metrics()

MANAGED = {"app.kubernetes.io/managed-by": "lmms-operator"}


def run(
    uid: str, phase: str | None, generation: int = 1, observed: int | None = 1, namespace: str = "a"
) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status = {"phase": phase, "observedGeneration": observed}
    return {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {
            "name": f"r-{uid}",
            "namespace": namespace,
            "uid": uid,
            "generation": generation,
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 4000},
        },
        "spec": {"model": {"type": "dummy"}, "tasks": ["mme"]},
        "status": status,
    }


def pod(name: str, run_uid: str, namespace: str = "a") -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"pod-{name}",
            "labels": {**MANAGED, "eval.lmms.dev/run-uid": run_uid, "job-name": "j"},
            "managedFields": [{"manager": "kubelet"}],
        },
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "runner", "image": "i", "env": []}],
            "volumes": [{"name": "v"}],
        },
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }


def make() -> tuple[Store, list[tuple[str, bool]]]:
    woken: list[tuple[str, bool]] = []
    return Store(metrics, lambda uid, observe: woken.append((uid, observe))), woken


def test_keep_only_what_needs_the_operator() -> None:
    assert keep(run("1", None))  # new
    assert keep(run("1", "Running"))
    assert not keep(run("1", "Succeeded"))
    assert keep(run("1", "Succeeded", generation=2, observed=1))  # edited since it finished
    deleting = run("1", "Running")
    deleting["metadata"]["deletionTimestamp"] = "2026-11-27T00:00:00Z"
    assert not keep(deleting)


def test_finished_runs_cost_nothing_but_a_phase_count() -> None:
    store, woken = make()
    runs = [run(str(i), "Succeeded") for i in range(50)] + [run("new", None)]
    store.listed("evalruns", None, runs, final=True)
    assert list(store.runs) == ["new"]
    assert woken == [("new", False)]
    # Children of finished runs are not kept either.
    store.listed("pods", None, [pod("p0", "0"), pod("p1", "new")], final=True)
    assert store.sizes() == {"runs": 1, "jobs": 0, "pods": 1}
    assert sum(1 for _, phase in metrics._phases.values() if phase == "Succeeded") >= 50


def test_kept_objects_are_trimmed() -> None:
    store, _ = make()
    store.event("evalruns", "ADDED", run("x", "Running"))
    store.event("pods", "ADDED", pod("p", "x"))
    body = store.runs["x"].body
    assert "managedFields" not in body["metadata"] and "annotations" not in body["metadata"]
    (kept,) = store.pods_of("x", "j")
    assert set(kept["spec"]) == {"nodeName", "containers"}
    assert kept["spec"]["containers"] == [{"name": "runner", "image": "i"}]
    assert "managedFields" not in kept["metadata"]


def test_a_run_that_finishes_or_goes_takes_everything_with_it() -> None:
    store, _ = make()
    store.event("evalruns", "ADDED", run("x", "Running"))
    store.event("pods", "ADDED", pod("p", "x"))
    store.remember("x", 1, {"phase": "Running", "progress": {"percent": 50}})
    store.entry("x").token = "secret"  # type: ignore[union-attr]
    store.event("evalruns", "MODIFIED", run("x", "Succeeded"))
    assert store.runs == {} and store.children == {}
    store.event("evalruns", "ADDED", run("y", "Running"))
    store.event("pods", "ADDED", pod("q", "y"))
    store.event("evalruns", "DELETED", run("y", "Running"))
    assert store.runs == {} and store.children == {}
    assert "y" not in metrics._phases


def test_a_relist_drops_what_went_missing_in_its_scope_only() -> None:
    store, _ = make()
    store.listed(
        "evalruns", None, [run("a1", "Running"), run("b1", "Running", namespace="b")], final=True
    )
    store.listed("pods", None, [pod("p", "a1"), pod("q", "b1", namespace="b")], final=True)
    # A relist of namespace a (paged) no longer holds a1 nor its pod.
    store.listed("evalruns", "a", [], final=False)
    store.listed("evalruns", "a", [run("a2", None)], final=True)
    assert set(store.runs) == {"b1", "a2"}
    assert "a1" not in metrics._phases and "b1" in metrics._phases
    store.listed("pods", "b", [], final=True)
    assert store.sizes()["pods"] == 0


def test_status_written_here_overlays_a_lagging_watch() -> None:
    store, _ = make()
    store.event("evalruns", "ADDED", run("x", "Pending"))
    store.remember("x", 1, {"phase": "Running", "jobName": "j"})
    got = store.get("x")
    assert got is not None and got["status"]["phase"] == "Running"
    store.remember("x", 2, {"observedGeneration": 2})
    got = store.get("x")
    assert got is not None and got.get("_stale")


def test_an_interrupted_relist_does_not_keep_what_it_saw() -> None:
    store, _ = make()
    store.listed("evalruns", None, [run("x", "Running"), run("y", "Running")], final=True)
    store.relisting("evalruns", None)
    store.listed("evalruns", None, [run("x", "Running")], final=False)  # then the list fails
    store.relisting("evalruns", None)  # the next list starts afresh
    store.listed("evalruns", None, [run("y", "Running")], final=True)
    assert set(store.runs) == {"y"}


def test_children_are_the_runs_only_when_namespace_and_owner_say_so() -> None:
    store, _ = make()
    store.event("evalruns", "ADDED", run("x", "Running", namespace="a"))
    # Another tenant labels a pod of its own with the run's uid: not the run's.
    store.event("pods", "ADDED", pod("forged", "x", namespace="b"))
    assert store.pods_of("x", "j") == []
    job: dict[str, Any] = {
        "kind": "Job",
        "metadata": {
            "name": "j",
            "namespace": "a",
            "uid": "job-uid",
            "labels": {**MANAGED, "eval.lmms.dev/run-uid": "x"},
        },
        "spec": {},
        "status": {},
    }
    store.event("jobs", "ADDED", job)  # labelled, but not controlled by the run
    assert store.job("x", "j") is None
    job["metadata"]["ownerReferences"] = [{"uid": "x", "controller": True, "kind": "EvalRun"}]
    store.event("jobs", "ADDED", job)
    assert store.job("x", "j") is not None
    store.event("pods", "ADDED", pod("real", "x", namespace="a"))
    assert [p["metadata"]["name"] for p in store.pods_of("x", "j")] == ["real"]


def test_an_undecodable_run_is_dropped_and_told_once_per_generation() -> None:
    told: list[tuple[str, str, str]] = []
    gone: list[str] = []
    store = Store(
        metrics,
        lambda uid, observe: None,
        gone.append,
        lambda kind, meta, reason: told.append((kind, meta["uid"], reason)),
    )
    sink = store.run_sink()
    sink.listed(None, [run("u1", None)], final=True)
    assert store.get("u1") is not None
    meta = {"name": "r-u1", "namespace": "a", "uid": "u1", "generation": 2}
    sink.undecodable("EvalRun", meta, "too deep")
    # Its spec is no longer known: nothing held for it acts on the old one.
    assert store.get("u1") is None and gone == ["u1"]
    sink.undecodable("EvalRun", meta, "too deep")  # the echo of the status written
    sink.undecodable("EvalRun", {**meta, "generation": 3}, "too deep")  # edited, still bad
    assert told == [("evalruns", "u1", "too deep")] * 2
    counted = metrics.registry.get_sample_value(
        "lmms_operator_undecodable_objects_total", {"kind": "evalruns"}
    )
    assert counted is not None and counted >= 2


def test_one_unreadable_item_does_not_stop_its_page() -> None:
    told: list[str] = []
    store = Store(metrics, lambda uid, observe: None, on_undecodable=lambda k, m, r: told.append(r))
    bad = run("u2", None)
    bad["status"] = "not an object"  # what no schema would store: reading it raises
    store.run_sink().listed(None, [run("u1", None), bad, run("u3", None)], final=True)
    assert sorted(store.uids()) == ["u1", "u3"]
    assert len(told) == 1 and "cannot be read" in told[0]


def test_one_run_whose_scheduling_fails_does_not_keep_the_others_waiting() -> None:
    woken: list[str] = []

    def on_run(uid: str, observe: bool) -> None:
        if uid == "u2":
            raise RuntimeError("the pool is full")
        woken.append(uid)

    store = Store(metrics, on_run)
    store.run_sink().listed(None, [run(u, None) for u in ("u1", "u2", "u3")], final=True)
    assert woken == ["u1", "u3"]
    assert sorted(store.uids()) == ["u1", "u2", "u3"]
