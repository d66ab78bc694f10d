"""`lmms-operator compare`: per task and metric, the difference and its significance.
(The EvalRuns come from a stand-in for the API read; the e2e test runs it for real.)"""

from __future__ import annotations

import json
from typing import Any

import pytest

from lmms_operator import cli, k8s

RUNS = {
    ("team-a", "big"): [
        {"task": "mme", "metric": "acc", "value": 0.80, "stderr": 0.01, "higherIsBetter": True},
        {"task": "docvqa", "metric": "anls", "value": 0.61, "stderr": 0.02},
    ],
    ("team-a", "small"): [
        {"task": "mme", "metric": "acc", "value": 0.70, "stderr": 0.01, "higherIsBetter": True},
        {"task": "docvqa", "metric": "anls", "value": 0.60, "stderr": 0.02},
    ],
}


@pytest.fixture(autouse=True)
def _runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def get_evalrun(_api: k8s.Api, ns: str, name: str) -> dict[str, Any] | None:
        results = RUNS.get((ns, name))
        return None if results is None else {"status": {"phase": "Succeeded", "results": results}}

    monkeypatch.setattr(k8s.Api, "get_evalrun", get_evalrun)


def test_the_table_names_the_significant_differences(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.compare_results("big", "team-a/small", "team-a", None, 0.05, "table") == 0
    out = capsys.readouterr().out
    assert "A = team-a/big" in out and "B = team-a/small" in out
    mme = next(line for line in out.splitlines() if line.startswith("mme"))
    assert "+0.1" in mme and "significant" in mme and mme.rstrip().endswith("A")
    docvqa = next(line for line in out.splitlines() if line.startswith("docvqa"))
    assert "not significant" in docvqa
    assert "p < 0.05" in out


def test_json_output_and_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.compare_results("big", "small", "team-a", None, 1e-6, "json") == 0
    rows = {r["task"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mme"]["z"] == pytest.approx(7.07, abs=0.01)
    assert rows["mme"]["significant"] is True  # p = 1.5e-12
    assert rows["docvqa"]["significant"] is False and rows["docvqa"]["better"] is None


def test_a_missing_run_is_an_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.compare_results("big", "gone", "team-a", None, 0.05, "table") == 1
    assert "EvalRun team-a/gone not found" in capsys.readouterr().out


def test_a_level_outside_zero_and_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.compare_results("big", "small", "team-a", None, 5.0, "table") == 2
    assert "--alpha must be between 0 and 1" in capsys.readouterr().out
