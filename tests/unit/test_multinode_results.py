"""A multi-node run's results come from node 0 (lmms-eval writes them on global rank 0)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from lmms_operator.api import EvalRunSpec
from lmms_operator.config import Settings
from lmms_operator.reconcile import observation
from lmms_operator.reconcile import pods as publishing
from lmms_operator.reconcile.publishing import Inputs

NOW = dt.datetime(2026, 11, 27, 10, 5, tzinfo=dt.UTC)


def _pod(index: int | None, message: str, created: str) -> dict[str, Any]:
    labels = {} if index is None else {"batch.kubernetes.io/job-completion-index": str(index)}
    return {
        "metadata": {"name": f"p{index}", "labels": labels, "creationTimestamp": created},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": message}}}],
        },
    }


def test_node_0_holds_the_results_even_when_another_node_finished_later() -> None:
    node0 = _pod(0, '{"v": 1, "ok": true, "tasks": {"mme": {"acc": 0.5}}}', "2026-11-27T10:00:00Z")
    node1 = _pod(1, '{"v": 1, "ok": true, "tasks": {}, "node": 1}', "2026-11-27T10:00:01Z")
    assert (
        publishing.termination_message([node1, node0])
        == node0["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    )
    assert sorted([node1, node0], key=publishing.completion_index)[0] is node0
    # A single-node run's pods have no index: the newest succeeded one.
    old, new = _pod(None, "old", "2026-11-27T10:00:00Z"), _pod(None, "new", "2026-11-27T11:00:00Z")
    assert publishing.termination_message([old, new]) == "new"


def test_a_runner_that_exits_0_without_results_fails_with_its_own_reason() -> None:
    run = {
        "metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"model": {"type": "qwen2_vl"}, "tasks": ["mme"]},
        "status": {"phase": "Running", "observedGeneration": 1, "jobName": "r-j", "specHash": "h"},
    }
    job = {
        "metadata": {"name": "r-j"},
        "spec": {},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    }
    empty = _pod(
        None, '{"v": 1, "ok": true, "truncated": false, "tasks": {}}', "2026-11-27T10:00:00Z"
    )
    spec = EvalRunSpec.model_validate(run["spec"])
    timeouts = Settings().timeouts
    # The pass asks for the results first (its snapshot had none), then decides on them:
    # here the runner was not reached and no object store holds any.
    asked = observation.decide(run, spec, job, [empty], NOW, timeouts)
    assert asked.needs is not None and asked.needs.termination is not None
    inputs = Inputs(termination=asked.needs.termination)
    plan = observation.decide(run, spec, job, [empty], NOW, timeouts, results=inputs)
    assert (plan.status["phase"], plan.status["reason"]) == ("Failed", "NoResults")
    # A pod that left no termination message at all is not the runner: nothing to judge.
    silent = _pod(None, "", "2026-11-27T10:00:00Z")
    plan = observation.decide(run, spec, job, [silent], NOW, timeouts, results=Inputs())
    assert plan.status["phase"] == "Succeeded"


def test_a_run_whose_results_were_kept_is_never_job_deleted() -> None:
    status = {
        "phase": "Running",
        "observedGeneration": 1,
        "jobName": "r-j",
        "specHash": "h",
        "resultsConfigMap": "r-j-results",
    }
    gone = observation.job_deleted("r-j", status, NOW)
    assert (gone.phase, gone.reason) == ("Succeeded", "Succeeded")
    assert "r-j-results" in gone.message
    lost = observation.job_deleted("r-j", {**status, "resultsConfigMap": None}, NOW)
    assert (lost.phase, lost.reason) == ("Failed", "JobDeleted")
