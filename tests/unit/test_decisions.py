"""The pure decisions over a snapshot (admission, progress), and the applier's answers to
what only trying can tell (``Replan``). Each unit alone; the applier's API calls are
replaced."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from lmms_operator import errors
from lmms_operator.api.runner import Harness, RunnerProgress
from lmms_operator.applier import Applier
from lmms_operator.clock import Clock
from lmms_operator.config import Settings
from lmms_operator.k8s import Api
from lmms_operator.k8s.writes import Writer
from lmms_operator.metrics import Metrics
from lmms_operator.objectstore import ObjectStore, StorePolicy
from lmms_operator.reconcile import admission, progress
from lmms_operator.reconcile import reasons as R
from lmms_operator.reconcile.plan import Evaluation
from lmms_operator.reconcile.validate import validate

NOW = dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC)
RULES = admission.Rules(
    Settings().policy, Settings().runner, Settings().timeouts, reference_timeout=600
)


def _run(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r", "namespace": "team-a", "uid": "u-1", "generation": 1},
        "spec": spec,
        "status": status or {},
    }


SPEC = {"model": {"type": "qwen2_vl"}, "tasks": ["mme"]}


def _snapshot(run: dict[str, Any], **changes: Any) -> admission.Snapshot:
    spec = validate(run["spec"])
    return admission.Snapshot(run=run, spec=spec, now=NOW, new_token="fresh-token", **changes)


def test_a_new_run_plans_its_objects_with_a_fresh_token_and_the_job_last() -> None:
    plan = admission.decide(_snapshot(_run(SPEC)), RULES)
    ev = plan.evaluation
    assert ev is not None and not ev.token_known
    assert ev.token_secret["kind"] == "Secret"
    assert ev.token_secret["stringData"]["token"] == "fresh-token"
    # The namespace's runner NetworkPolicy before any pod exists, then the run's configuration.
    assert [o["kind"] for o in ev.before_job] == ["NetworkPolicy", "ConfigMap"]
    assert ev.job["kind"] == "Job"
    assert [e.reason for e in plan.events] == [R.JOB_CREATED]
    assert not plan.delete  # a fresh run has nothing of another spec to stop
    assert (
        plan.status["phase"] == R.PENDING and plan.status["jobName"] == ev.job["metadata"]["name"]
    )


def test_an_existing_token_is_carried_by_the_job() -> None:
    run = _run(SPEC, {"phase": R.PENDING, "observedGeneration": 1})
    plan = admission.decide(_snapshot(run, token="kept-token"), RULES)
    assert plan.evaluation is not None and plan.evaluation.token_known
    assert plan.evaluation.token_secret["stringData"]["token"] == "kept-token"
    assert plan.delete  # an earlier spec's children are stopped


def test_missing_references_wait_then_fail_naming_the_field() -> None:
    spec = {**SPEC, "cache": {"persistentVolumeClaim": "hf-cache"}}
    waiting = admission.decide(_snapshot(_run(spec)), RULES)
    assert waiting.evaluation is None
    assert (waiting.status["phase"], waiting.status["reason"]) == (
        R.PENDING,
        R.WAITING_FOR_REFERENCES,
    )
    assert waiting.retry_after == admission.REFERENCE_RETRY
    assert "spec.cache.persistentVolumeClaim" in (waiting.status["message"] or "")
    failed = admission.decide(_snapshot(_run(spec), waited=601), RULES)
    assert (failed.status["phase"], failed.status["reason"]) == (
        R.FAILED,
        R.REFERENCES_NOT_FOUND,
    )


def test_a_job_the_api_server_refused_fails_the_run_and_stops_its_objects() -> None:
    plan = admission.decide(_snapshot(_run(SPEC), refused="spec.template: Invalid"), RULES)
    assert plan.evaluation is None
    assert (plan.status["phase"], plan.status["reason"]) == (R.FAILED, R.INVALID_SPEC)
    assert "refused the Job: spec.template: Invalid" in (plan.status["message"] or "")
    assert plan.delete == [admission.run_selector("u-1")]


class _Writes:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, writes: Writer, exists: set[str]) -> None:
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.refuse: str | None = None

        def create(obj: dict[str, Any]) -> bool:
            if obj["kind"] == self.refuse:
                raise errors.Invalid("spec.template: Invalid value")
            self.created.append(obj["kind"])
            return obj["kind"] not in exists

        monkeypatch.setattr(writes, "create", create)
        monkeypatch.setattr(writes, "delete_secret", lambda ns, name: self.deleted.append(name))
        monkeypatch.setattr(writes, "event", lambda *a: None)


def _evaluation(token_known: bool = False) -> Evaluation:
    meta = {"name": "r-j-token", "namespace": "team-a"}
    return Evaluation(
        token_secret={"kind": "Secret", "metadata": meta},
        job={"kind": "Job", "metadata": {"name": "r-j", "namespace": "team-a"}},
        before_job=({"kind": "ConfigMap", "metadata": {"name": "r-j-config"}},),
        token_known=token_known,
    )


def test_the_applier_answers_what_only_trying_tells(monkeypatch: pytest.MonkeyPatch) -> None:
    api = Api()
    applier = Applier(Clock(), ObjectStore(StorePolicy(), api), Metrics(), api)
    run = _run(SPEC)
    # A token Secret there already: the Job must carry its token, so plan again.
    fake = _Writes(monkeypatch, applier.writes, exists={"Secret"})
    replan = applier._evaluation(run, _evaluation())
    assert replan is not None and replan.token_exists and fake.created == ["Secret"]
    # With its token known, the same Secret is fine, and a Job there already is read back.
    fake = _Writes(monkeypatch, applier.writes, exists={"Secret", "Job"})
    replan = applier._evaluation(run, _evaluation(token_known=True))
    assert replan is not None and replan.job_exists
    assert fake.created == ["Secret", "ConfigMap", "Job"]
    # A refused Job leaves nothing half-created: its token Secret goes.
    fake = _Writes(monkeypatch, applier.writes, exists=set())
    fake.refuse = "Job"
    replan = applier._evaluation(run, _evaluation())
    assert replan is not None and replan.refused and "Invalid" in replan.refused
    assert fake.deleted == ["r-j-token"]
    # All new: done.
    fake = _Writes(monkeypatch, applier.writes, exists=set())
    assert applier._evaluation(run, _evaluation()) is None


def test_an_unknown_lmms_eval_shows_as_a_condition_and_a_warning() -> None:
    run = _run(SPEC, {"phase": R.RUNNING})
    plain = RunnerProgress(
        phase="evaluating",
        harness=Harness(lmms_eval_version="0.9.0", patched=False, message="runs plain"),
    )
    plan = progress.answered(run, run["status"], plain, "the runner answers", NOW)
    cond = next(c for c in plan.status["conditions"] if c["type"] == R.HARNESS_PATCHED)
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "False",
        R.UNKNOWN_HARNESS,
        "runs plain",
    )
    assert [e.type for e in plan.events if e.reason == R.UNKNOWN_HARNESS] == ["Warning"]
    # Said once: the same answer again changes nothing of the condition.
    after = {**run["status"], **plan.status}
    again = progress.harness(run, after, plain, NOW)
    assert not again
    patched = RunnerProgress(harness=Harness(lmms_eval_version="0.7.3", patched=True))
    ok = progress.harness(run, after, patched, NOW)
    cond = next(c for c in ok.status["conditions"] if c["type"] == R.HARNESS_PATCHED)
    assert (cond["status"], cond["reason"]) == ("True", R.KNOWN_HARNESS)
    assert not ok.events


def _reused_snapshot(**changes: Any) -> admission.Snapshot:
    """A run every task of which was evaluated before, publishing to a Leaderboard."""
    from lmms_operator.api.runner import Metric, TaskResult
    from lmms_operator.reconcile import reuse

    spec = {**SPEC, "leaderboard": "board", "model": {"type": "qwen2_vl", "version": "v1"}}
    run = _run(spec)
    entry = reuse.Entry(
        task="mme",
        key={"k": 1},
        results=[TaskResult(task="mme", primary="acc", metrics=[Metric(name="acc", value=0.5)])],
        provenance={"model": "qwen2_vl", "configHash": "c", "lmmsEvalVersion": "0.7.3"},
        source=reuse.Source(namespace="team-a", run="earlier", uid="u-0"),
    )
    lookup = admission.Lookup(key={"k": 1}, entries={"mme": entry}, missing=[])
    return _snapshot(run, lookup=lookup, **changes)


def test_reused_results_count_their_publish_tries_as_a_runs_do() -> None:
    from lmms_operator.reconcile.publishing import PUBLISH_TRIES

    plan = admission.decide(_reused_snapshot(publish_failures=PUBLISH_TRIES - 1), RULES)
    assert (plan.status["phase"], plan.status["reason"]) == (R.SUCCEEDED, R.REUSED)
    assert plan.evaluation is None  # no Job, no GPU
    assert [p.attempt for p in plan.publish] == [PUBLISH_TRIES]
    given_up = admission.decide(_reused_snapshot(publish_failed="board is full"), RULES)
    assert not given_up.publish and given_up.status["leaderboardPublished"] is False
    cond = next(c for c in given_up.status["conditions"] if c["type"] == R.LEADERBOARD_PUBLISHED)
    assert (cond["status"], cond["reason"]) == ("False", R.PUBLISH_FAILED)


def test_an_existing_token_secret_is_the_runners_token() -> None:
    run = _run(SPEC)
    plan = admission.decide(_snapshot(run, token_exists=True), RULES)
    # The runner reads its token from the Secret (secretKeyRef): the applier may go on.
    assert plan.evaluation is not None and plan.evaluation.token_known


def test_harness_patched_outlives_the_observations_between_scrapes() -> None:
    from lmms_operator.reconcile import status as st

    run = _run(SPEC, {"phase": R.RUNNING, "observedGeneration": 1, "jobName": "r-j"})
    plain = RunnerProgress(harness=Harness(lmms_eval_version="0.9.0", patched=False))
    scraped = progress.harness(run, run["status"], plain, NOW)
    status = {**run["status"], **scraped.status}
    ob = st.Observation(R.RUNNING, R.RUNNING, "pod p is running")
    observed = st.transition(status, ob, 1, None, "r-j", NOW)
    conditions = observed.status.get("conditions", status["conditions"])
    assert R.HARNESS_PATCHED in {c["type"] for c in conditions}


def test_a_leaderboard_row_edited_by_hand_is_left_out_of_the_summary() -> None:
    from lmms_operator.reconcile import leaderboard as lb

    board = {"metadata": {"name": "b", "namespace": "team-a", "generation": 1}, "spec": {}}
    good = {"rank": 1, "model": "m", "task": "t", "metric": "acc", "value": 0.5, "run": "ns/r"}
    edited = {"rank": 1, "model": {"not": "a string"}, "task": "u", "metric": "acc"}
    status = lb.board_status(board, [good, edited], ["cm"], None, NOW)
    assert [e["model"] for e in status["top"]] == ["m"]
    assert status["entries"] == 2
