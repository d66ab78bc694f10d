"""Runner results and progress -> the EvalRun's status (pure parts)."""

from __future__ import annotations

import datetime as dt
import json

from lmms_operator.api.runner import Metric, Provenance, ResultsSummary, RunnerProgress, TaskResult
from lmms_operator.reconcile import results as res
from lmms_operator.reconcile.progress import progress_plan

NOW = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)

SUMMARY = ResultsSummary(
    provenance=Provenance(model="qwen2_vl", config_hash="h"),
    tasks=[
        TaskResult(
            task="mme",
            primary="mme_perception_score",
            metrics=[
                Metric(name="mme_perception_score", value=1450.2, higher_is_better=True),
                Metric(name="mme_cognition_score", value=320.5, higher_is_better=True),
            ],
        ),
        TaskResult(
            task="asr",
            primary="wer",
            metrics=[Metric(name="wer", value=0.12, stderr=0.01, higher_is_better=False)],
        ),
    ],
)


def test_status_results_hold_the_primary_metric_with_direction() -> None:
    assert res.primary_results(SUMMARY) == [
        {"task": "mme", "metric": "mme_perception_score", "value": 1450.2, "higherIsBetter": True},
        {"task": "asr", "metric": "wer", "value": 0.12, "stderr": 0.01, "higherIsBetter": False},
    ]


def test_termination_message_fallback() -> None:
    msg = json.dumps(
        {"v": 1, "ok": True, "tasks": {"mme": {"mme_perception_score": 1450.2, "other": 1}}}
    )
    assert res.from_termination_message(msg) == [
        {"task": "mme", "metric": "mme_perception_score", "value": 1450.2}
    ]
    assert res.from_termination_message('{"ok": false, "reason": "x"}') is None
    assert res.from_termination_message("not json") is None
    assert res.location_from_termination_message(msg) is None
    uploaded = json.dumps({"v": 1, "ok": True, "tasks": {}, "s3": "s3://b/runs/x/"})
    assert res.location_from_termination_message(uploaded) == "s3://b/runs/x/"


def test_large_results_stay_under_the_configmap_limit() -> None:
    primaries = [{"task": "mme", "metric": "score", "value": 1.0}]
    data = res.config_map_data("x" * (2 * 1024 * 1024), primaries, "runner", None)
    assert "results.json" not in data and "spec.output.s3" in data["note"]
    assert json.loads(data["primary.json"]) == primaries
    assert sum(len(v) for v in data.values()) < res.CONFIG_MAP_BUDGET
    stored = res.config_map_data("x" * (2 * 1024 * 1024), primaries, "runner", "s3://b/k/")
    assert stored["location"] == "s3://b/k/" and "s3://b/k/" in stored["note"]
    small = res.config_map_data('{"tasks": []}', primaries, "runner", "s3://b/k/")
    assert small["results.json"] == '{"tasks": []}' and "note" not in small
    # Every key counts: a summary just under the budget, with 256 long primaries beside
    # it, would pass the 1 MiB object limit, so it is left out.
    many = [{"task": "t" * 253 + str(i), "metric": "m" * 200, "value": 0.5} for i in range(256)]
    just_under = "x" * (res.CONFIG_MAP_BUDGET - 1000)
    data = res.config_map_data(just_under, many, "runner", None)
    assert "results.json" not in data
    assert sum(len(k) + len(v) for k, v in data.items()) < res.CONFIG_MAP_BUDGET


def test_progress_is_written_only_when_it_changed() -> None:
    p = RunnerProgress(
        phase="evaluating",
        percent=42.04,
        done=42,
        total=100,
        samples_per_second=3.21,
        eta_seconds=18.2,
    )
    first = progress_plan({}, p, NOW).status
    written = first["progress"]
    assert written is not None
    assert first["summary"] == "42%" and written["percent"] == 42.0
    assert written["lastUpdate"]
    assert written["samplesPerSecond"] == 3.21  # the typed Progress, camelCase
    assert not progress_plan({"progress": written}, p, NOW)
    later = RunnerProgress(phase="evaluating", percent=50, done=50, total=100)
    assert progress_plan({"progress": written}, later, NOW).status["summary"] == "50%"


def test_non_finite_scores_become_null() -> None:
    message = (
        '{"ok": true, "tasks": {"a": {"acc": NaN}, "b": {"acc": Infinity}, "c": {"acc": 0.5}}}'
    )
    values = {r["task"]: r["value"] for r in res.from_termination_message(message) or []}
    assert values == {"a": None, "b": None, "c": 0.5}


def test_progress_from_a_runner_is_bounded() -> None:
    from lmms_operator.api.runner import TaskState
    from lmms_operator.reconcile.progress import MAX_PROGRESS_TASKS, MAX_TASK_NAME

    tasks = [TaskState(name="t" * 5000 + str(i), done=1, total=2) for i in range(1000)]
    p = RunnerProgress(phase="evaluating", percent=1, done=1, total=2, tasks=tasks)
    progress = progress_plan({}, p, NOW).status["progress"]
    assert progress is not None
    written = progress["tasks"]
    assert len(written) == MAX_PROGRESS_TASKS
    assert all(len(t["name"]) == MAX_TASK_NAME for t in written)
