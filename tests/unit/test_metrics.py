"""Score series: labels bounded, and gone with their run or Leaderboard."""

from __future__ import annotations

from lmms_operator import metrics as m
from lmms_operator.metrics import Metrics

# One process's metrics; the module keeps none of its own.
metrics = Metrics()


def _series(name: str = "lmms_operator_score") -> list[dict[str, str]]:
    return [
        dict(s.labels, value=str(s.value))
        for family in metrics.registry.collect()
        if family.name == name
        for s in family.samples
    ]


def _entry(model: str, task: str = "mme", value: float = 0.5) -> dict[str, object]:
    return {"model": model, "task": task, "metric": "acc", "value": value, "higherIsBetter": True}


def test_tenant_supplied_labels_are_bounded() -> None:
    long_model = "org/" + "m" * 1000
    metrics.published("ns-bound", "board", [_entry(long_model, task="t" * 500)], "uid-bound")
    (series,) = [s for s in _series() if s["namespace"] == "ns-bound"]
    assert len(series["model"]) <= m.MAX_LABEL and len(series["task"]) <= m.MAX_LABEL
    # Cut values stay distinct.
    assert m.bounded("x" * 200 + "a") != m.bounded("x" * 200 + "b")
    metrics.run_scores_gone("uid-bound")


def test_score_series_go_with_their_runs_and_their_leaderboard() -> None:
    metrics.published("ns-a", "board", [_entry("org/a")], "run-1")
    metrics.published("ns-a", "board", [_entry("org/a")], "run-2")  # a re-run: same series
    metrics.published("ns-a", "board", [_entry("org/b")], "run-3")
    metrics.published("ns-b", "board", [_entry("org/a")], "run-4")  # same names, other team
    models = sorted(
        (s["namespace"], s["model"]) for s in _series() if s["namespace"] in ("ns-a", "ns-b")
    )
    assert models == [("ns-a", "org/a"), ("ns-a", "org/b"), ("ns-b", "org/a")]
    metrics.run_scores_gone("run-1")  # run-2 still stands behind org/a
    assert ("ns-a", "org/a") in {(s["namespace"], s["model"]) for s in _series()}
    metrics.run_scores_gone("run-2")
    assert ("ns-a", "org/a") not in {(s["namespace"], s["model"]) for s in _series()}
    metrics.leaderboard_gone("ns-a", "board")
    left = {(s["namespace"], s["model"]) for s in _series() if s["namespace"] in ("ns-a", "ns-b")}
    assert left == {("ns-b", "org/a")}
    # A relist that no longer holds ns-b's board drops its series too.
    metrics.retain_leaderboards("ns-b", set())
    assert not [s for s in _series() if s["namespace"] == "ns-b"]


def test_gpu_seconds_come_from_each_pods_own_start_and_end() -> None:
    import datetime as dt

    run = {"spec": {"resources": {"gpus": 2}}}

    def pod(
        start: str | None, end: str | None = None, deleted: str | None = None
    ) -> dict[str, object]:
        status: dict[str, object] = {}
        if start:
            status["startTime"] = start
        if end:
            status["containerStatuses"] = [{"state": {"terminated": {"finishedAt": end}}}]
        return {"metadata": {"deletionTimestamp": deleted}, "status": status}

    now = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.UTC)
    pods = [
        pod("2026-11-27T10:00:00Z", "2026-11-27T10:30:00Z"),  # a failed first attempt
        pod("2026-11-27T11:00:00Z", "2026-11-27T11:20:00Z"),  # the retry
        pod("2026-11-27T11:50:00Z", deleted="2026-11-27T11:55:00Z"),  # deleted mid-run
        pod("2026-11-27T11:59:00Z"),  # still running: until now
        pod(None),  # never started: no GPU held
    ]
    seconds = m.gpu_seconds(run, pods, now)
    assert seconds == 2 * (30 + 20 + 5 + 1) * 60
    # A model served by reference: its runner pods request no GPU, whatever gpus says.
    served = {"spec": {"model": {"endpoint": {"url": "x"}}, "resources": {"gpus": 2}}}
    assert m.gpu_seconds(served, pods, now) == 0


def test_standard_errors_are_exported_with_their_scores_and_go_with_them() -> None:
    with_err = dict(_entry("org/e"), stderr=0.02)
    metrics.published("ns-err", "board", [with_err], "run-e1")
    (err,) = [s for s in _series("lmms_operator_score_stderr") if s["namespace"] == "ns-err"]
    assert err["model"] == "org/e" and float(err["value"]) == 0.02
    # A later score without a standard error: no stale one stands for it.
    metrics.published("ns-err", "board", [_entry("org/e")], "run-e2")
    assert not [s for s in _series("lmms_operator_score_stderr") if s["namespace"] == "ns-err"]
    metrics.published("ns-err", "board", [with_err], "run-e3")
    metrics.leaderboard_gone("ns-err", "board")
    assert not [s for s in _series("lmms_operator_score_stderr") if s["namespace"] == "ns-err"]


def test_process_and_gc_series_are_served_for_sizing() -> None:
    # docs/operations.md sizes the operator by its CPU and resident memory: the series
    # that show them in production are on the operator's own registry.
    from prometheus_client import generate_latest

    text = generate_latest(Metrics().registry).decode()
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_gc_"):
        assert name in text, name


def _run(namespace: str, name: str, uid: str) -> dict[str, object]:
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "uid": uid,
            "creationTimestamp": "2026-11-27T10:00:00Z",
        },
        "spec": {"model": {"type": "dummy"}, "tasks": ["mme"]},
    }


def test_run_series_carry_the_runs_namespace_and_no_run_names() -> None:
    """What the dashboard's namespace variable and the alert texts read: runs by phase,
    transitions, durations and failures per namespace; the counts never name a run."""
    own = Metrics()

    def series(name: str) -> list[dict[str, str]]:
        return [
            dict(s.labels, value=str(s.value))
            for family in own.registry.collect()
            for s in family.samples
            if s.name == name
        ]

    a1, a2, b1 = _run("team-a", "r1", "u1"), _run("team-a", "r2", "u2"), _run("team-b", "r1", "u3")
    for run in (a1, a2, b1):
        own.observe_status(run, {}, {"phase": "Pending"})
        own.observe_status(run, {"phase": "Pending"}, {"phase": "Running"})
    own.observe_status(
        a1,
        {"phase": "Running"},
        {"phase": "Failed", "reason": "OOMKilled", "completionTime": "2026-11-27T10:05:00Z"},
    )
    own.observe_status(
        b1, {"phase": "Running"}, {"phase": "Succeeded", "completionTime": "2026-11-27T10:01:00Z"}
    )
    runs = {
        (s["namespace"], s["phase"]): float(s["value"]) for s in series("lmms_operator_evalruns")
    }
    assert runs[("team-a", "Failed")] == 1 and runs[("team-a", "Running")] == 1
    assert runs[("team-b", "Succeeded")] == 1 and runs[("team-b", "Running")] == 0
    assert {ns for ns, _ in runs} == {"team-a", "team-b"}  # every phase of each, zeros too
    failures = {
        (s["namespace"], s["reason"]): float(s["value"])
        for s in series("lmms_operator_evalrun_failures_total")
    }
    assert failures[("team-a", "OOMKilled")] == 1
    # Each namespace's reasons start at 0: rates and alerts see them before a failure.
    assert failures[("team-b", "OOMKilled")] == 0 and ("team-b", "Unschedulable") in failures
    (moved,) = [
        s for s in series("lmms_operator_evalrun_transitions_total") if s["to_phase"] == "Succeeded"
    ]
    assert moved["namespace"] == "team-b" and moved["from_phase"] == "Running"
    (took,) = [
        s for s in series("lmms_operator_evalrun_duration_seconds_count") if s["phase"] == "Failed"
    ]
    assert took["namespace"] == "team-a" and float(took["value"]) == 1
    counted = ("lmms_operator_evalruns", "lmms_operator_evalrun_failures_total")
    assert not [s for n in counted for s in series(n) if "name" in s]
    # A relist that no longer holds team-b's run: its namespace leaves the gauge.
    own.retain("team-b", set())
    assert {s["namespace"] for s in series("lmms_operator_evalruns")} == {"team-a"}
