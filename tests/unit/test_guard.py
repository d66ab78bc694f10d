"""The guard around a pass (``reconcile.guard``): transient errors are retried; anything
else ends the run Failed once, naming the field (InvalidSpec) or saying it is the
operator's bug (InternalError)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import BaseModel

from lmms_operator import errors
from lmms_operator.reconcile import guard
from lmms_operator.reconcile import reasons as R
from lmms_operator.reconcile.validate import validate

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def run(spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": "r", "namespace": "a", "uid": "u", "generation": 3}
    return {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": meta,
        "spec": spec,
    }


def spec_with_affinity(depth: int) -> dict[str, Any]:
    return {
        "model": {"type": "qwen2_vl"},
        "tasks": ["mme"],
        "scheduling": {"affinity": nested(depth)},
    }


@pytest.mark.parametrize(
    "exc",
    [
        errors.api_error(500, "x"),
        errors.api_error(429, "x"),
        errors.Conflict("x"),
        errors.Unavailable("x"),
        errors.ObjectStoreError("x"),
        errors.RetryLater("x"),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_transient_errors_are_retried(exc: Exception) -> None:
    assert guard.failed(run({}), exc, NOW, "admitting") is None


def test_a_spec_too_deep_for_validation_fails_once_naming_the_field() -> None:
    body = run(spec_with_affinity(5000))
    try:
        validate(body["spec"])
    except Exception as exc:  # RecursionError today; InvalidSpec once it is typed
        plan = guard.failed(body, exc, NOW, "admitting")
    else:
        raise AssertionError("a 5000-deep affinity was accepted")
    assert plan is not None
    assert (plan.status["phase"], plan.status["reason"]) == (R.FAILED, R.INVALID_SPEC)
    assert plan.status["observedGeneration"] == 3
    assert "spec.scheduling.affinity" in str(plan.status["message"])
    assert plan.delete == ["eval.lmms.dev/run-uid=u"]  # whatever ran before is stopped


def test_a_recursion_error_names_the_deepest_field() -> None:
    reason, [problem] = guard.problems(RecursionError(), spec_with_affinity(200), "admitting")
    assert reason == R.INVALID_SPEC
    assert problem.field == "spec.scheduling.affinity.x"
    assert "nested too deeply" in problem.message


def test_a_model_error_names_its_field() -> None:
    class Model(BaseModel):
        gpus: int

    try:
        Model.model_validate({"gpus": "many"})
    except Exception as exc:
        reason, [problem] = guard.problems(exc, {}, "admitting")
    assert (reason, problem.field) == (R.INVALID_SPEC, "spec.gpus")
    assert "many" not in problem.message  # the tenant's value is not echoed


def test_any_other_exception_is_an_internal_error_that_quotes_no_value() -> None:
    try:
        {"a": 1}["hf_SENTINEL"]
    except KeyError as exc:
        plan = guard.failed(run({}), exc, NOW, "observing")
    assert plan is not None and plan.status["reason"] == R.INTERNAL_ERROR
    message = str(plan.status["message"])
    assert "KeyError" in message and "while observing" in message
    assert "SENTINEL" not in message


def test_an_undecodable_run_fails_with_a_warning_event() -> None:
    meta = {"name": "r", "namespace": "a", "uid": "u", "generation": 2}
    found = guard.undecodable(meta, "spec.scheduling.affinity: nested too deeply", NOW)
    assert found is not None
    obj, plan = found
    assert obj["metadata"] == meta and obj["kind"] == "EvalRun"
    assert plan.status["phase"] == R.FAILED and plan.status["observedGeneration"] == 2
    assert "spec.scheduling.affinity" in str(plan.status["message"])
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", R.INVALID_SPEC)]
    # Too little metadata to write anything about it.
    assert guard.undecodable({"name": "r"}, "why", NOW) is None


def test_deepest_is_iterative() -> None:
    assert guard.deepest({"a": nested(100_000)}) == "spec.a" + ".x" * guard.MAX_DEPTH
    assert guard.deepest({"a": [[1]], "b": "x" * 10}) is None
