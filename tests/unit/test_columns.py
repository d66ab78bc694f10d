"""What `kubectl get evalruns` shows (pure): the model's identity, not the backend; the
tasks as a readable list; the headline score and the duration in columns of their own;
and the Complete/Failed pair of conditions that `kubectl wait` reads."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from lmms_operator.api.crdgen import all_crds
from lmms_operator.api.runner import Metric, Provenance, ResultsSummary, TaskResult
from lmms_operator.api.status import COLUMN
from lmms_operator.config import Settings
from lmms_operator.reconcile import admission, publishing
from lmms_operator.reconcile import reasons as R
from lmms_operator.reconcile import status as st
from lmms_operator.reconcile.columns import headline_score, tasks_label
from lmms_operator.reconcile.times import duration, human_duration
from lmms_operator.reconcile.validate import validate

NOW = dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC)
SPEC = {
    "model": {"type": "qwen2_vl", "pretrained": "Qwen/Qwen2-VL-2B-Instruct"},
    "tasks": ["mme", "mmmu_val"],
    "customTasks": [{"configMap": "mine", "tasks": ["colors", "mme"]}],
}


def test_the_printer_columns_read_the_status_fields() -> None:
    crd = all_crds()["eval.lmms.dev_evalruns.yaml"]
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    default = [n for n, c in columns.items() if not c.get("priority")]
    assert default == ["Model", "Tasks", "Phase", "Progress", "Score", "Duration", "Age"]
    assert columns["Model"]["jsonPath"] == ".status.model"  # the identity, not .spec.model.type
    assert columns["Backend"]["jsonPath"] == ".spec.model.type" and columns["Backend"]["priority"]
    assert columns["Tasks"]["jsonPath"] == ".status.tasks"
    assert columns["Score"]["jsonPath"] == ".status.score"
    assert columns["Duration"]["jsonPath"] == ".status.duration"


@pytest.mark.parametrize(
    "names, width, label",
    [
        (["mme"], 60, "mme"),
        (["mme", "mmmu_val", "mme"], 60, "mme, mmmu_val"),
        ([f"task_{i}" for i in range(20)], 40, "task_0, task_1, task_2, task_3, … (+16)"),
        (["a" * 80, "b"], 30, "a" * 20 + "… (+1)"),
    ],
)
def test_tasks_read_as_a_list_shortened_to_fit(names: list[str], width: int, label: str) -> None:
    assert tasks_label(names, width) == label
    assert len(tasks_label(names, width)) <= width


def test_the_headline_score_is_the_first_tasks_primary_metric() -> None:
    results: list[dict[str, Any]] = [
        {"task": "colors", "metric": "exact_match", "value": 0.8},
        {"task": "mme", "metric": "acc", "value": 0.812345},
        {"task": "mmmu_val", "metric": "acc", "value": None},
    ]
    assert headline_score(results, ["mme", "mmmu_val", "colors"]) == "mme=0.8123 (+1)"
    assert headline_score(results[:1], ["mme"]) == "colors=0.8"
    assert headline_score(results[2:], ["mmmu_val"]) is None
    # Within the schema's bound, whatever the task's name.
    long = [{"task": "t" * 253, "metric": "acc", "value": 0.5}, *results[:1]]
    score = headline_score(long, ["t" * 253])
    assert score is not None and len(score) == COLUMN and score.endswith("=0.5 (+1)")


@pytest.mark.parametrize(
    "seconds, text",
    # k8s.io/apimachinery/pkg/util/duration.HumanDuration, as `kubectl get` writes ages.
    [
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (252, "4m12s"),
        (599, "9m59s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (5 * 3600 + 3 * 60, "5h3m"),
        (47 * 3600, "47h"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (9 * 86400, "9d"),
        (3 * 365 * 86400 + 86400, "3y1d"),
        (-5, "<invalid>"),
    ],
)
def test_durations_read_as_kubectl_writes_ages(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def _run(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "r", "namespace": "team-a", "uid": "u-1", "generation": 1},
        "spec": SPEC,
        "status": status or {},
    }


def test_admission_names_the_model_and_the_tasks() -> None:
    rules = admission.Rules(Settings().policy, Settings().runner, Settings().timeouts)
    snap = admission.Snapshot(
        run=_run(), spec=validate(SPEC), now=NOW, new_token="t", references=_refs()
    )
    plan = admission.decide(snap, rules)
    assert plan.status["model"] == "Qwen/Qwen2-VL-2B-Instruct"  # the checkpoint, not qwen2_vl
    assert plan.status["tasks"] == "mme, mmmu_val, colors"


def _refs() -> admission.References:
    return admission.References(config_maps=frozenset({"mine"}))


def _observation(phase: str, reason: str, **kw: Any) -> st.Observation:
    return st.Observation(phase, reason, "m", **kw)


def test_a_finished_run_has_its_duration_and_an_outcome_condition() -> None:
    status = {"startTime": "2026-12-07T11:55:48Z", "conditions": []}
    done = _observation(R.SUCCEEDED, R.SUCCEEDED, completion_time="2026-12-07T12:00:00Z")
    plan = st.transition(status, done, 1, "h", "j", NOW)
    assert plan.status["duration"] == "4m12s"
    conditions = {c["type"]: c["status"] for c in plan.status["conditions"]}
    assert (conditions[R.COMPLETE], conditions[R.FAILED_CONDITION]) == ("True", "False")
    for phase in (R.FAILED, R.CANCELLED):
        ended = _observation(phase, phase, completion_time="2026-12-07T12:00:00Z")
        plan = st.transition(status, ended, 1, "h", "j", NOW)
        conditions = {c["type"]: c for c in plan.status["conditions"]}
        assert (conditions[R.COMPLETE]["status"], conditions[R.FAILED_CONDITION]["status"]) == (
            "False",
            "True",
        )
        assert conditions[R.FAILED_CONDITION]["reason"] == phase
    # While it runs: both False, and no duration (Age and the CLI show how long).
    running = st.transition(status, _observation(R.RUNNING, R.RUNNING), 1, "h", "j", NOW)
    conditions = {c["type"]: c["status"] for c in running.status["conditions"]}
    assert conditions[R.COMPLETE] == conditions[R.FAILED_CONDITION] == "False"
    assert "duration" not in running.status
    # A run that never started has no duration.
    assert duration(None, "2026-12-07T12:00:00Z") is None


def test_publishing_writes_the_headline_score_and_the_resolved_commit() -> None:
    summary = ResultsSummary(
        tasks=[
            TaskResult(
                task="colors",
                primary="exact_match",
                metrics=[Metric(name="exact_match", value=0.8)],
            ),
            TaskResult(task="mme", primary="acc", metrics=[Metric(name="acc", value=0.5)]),
        ],
        provenance=Provenance(model="qwen2_vl", config_hash="c", commit="0123456789abcdef"),
    )
    inputs = publishing.Inputs(summary=summary)
    plan = publishing.decide(_run({"jobName": "r-1"}), validate(SPEC), {}, inputs, NOW)
    assert plan.status["score"] == "mme=0.5 (+1)"
    # The model as the run's Leaderboard entries name it.
    assert plan.status["model"] == "Qwen/Qwen2-VL-2B-Instruct@0123456789ab"
