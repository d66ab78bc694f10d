"""`kubectl lmms compare` (and `lmms-operator compare`): per task and metric, the
difference and its significance, and an exit code a pipeline can gate on. (The EvalRuns
come from a stand-in API server, ``tests.apistub``; the e2e and cluster tests run it
for real.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmms_operator import cli
from lmms_operator.cli import output as out
from tests import apistub


def run(name: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": "EvalRun",
        "metadata": {"name": name, "namespace": "team-a", "generation": 1},
        "spec": {"model": {"type": "dummy", "pretrained": name}, "tasks": ["mme", "docvqa"]},
        "status": {"phase": "Succeeded", "observedGeneration": 1, "results": results},
    }


BIG = [
    {"task": "mme", "metric": "acc", "value": 0.80, "stderr": 0.01, "higherIsBetter": True},
    {"task": "docvqa", "metric": "anls", "value": 0.61, "stderr": 0.02},
]
SMALL = [
    {"task": "mme", "metric": "acc", "value": 0.70, "stderr": 0.01, "higherIsBetter": True},
    {"task": "docvqa", "metric": "anls", "value": 0.60, "stderr": 0.02},
]


@pytest.fixture(autouse=True)
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[apistub.ApiStub]:
    for server in apistub.serve():
        server.put(run("big", BIG))
        server.put(run("small", SMALL))
        server.put(run("pending", []))
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path)))
        yield server


def compare(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = cli.kubectl_main(["compare", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_table_names_the_significant_differences(capsys: pytest.CaptureFixture[str]) -> None:
    # A better than B: no regression of B against A.
    code, stdout, err = compare(capsys, "small", "team-a/big")
    assert (code, err) == (out.OK, "")
    assert "A = team-a/small" in stdout and "B = team-a/big" in stdout
    mme = next(line for line in stdout.splitlines() if line.startswith("mme"))
    assert "-0.1" in mme and "significant" in mme and mme.rstrip().endswith("B")
    docvqa = next(line for line in stdout.splitlines() if line.startswith("docvqa"))
    assert "not significant" in docvqa
    assert "p < 0.05" in stdout


def test_a_regression_of_the_candidate_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = compare(capsys, "big", "small")
    assert code == out.REGRESSION
    assert stdout.strip().endswith("a regression (--fail-on regression): mme acc")
    # The gate can be opened, or widened to any significant difference.
    assert compare(capsys, "big", "small", "--fail-on", "never")[0] == out.OK
    assert compare(capsys, "small", "big", "--fail-on", "difference")[0] == out.REGRESSION
    # A run against itself never fails the gate.
    assert compare(capsys, "big", "big", "--fail-on", "difference")[0] == out.OK


def test_json_output_and_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = compare(capsys, "big", "small", "--alpha", "1e-6", "-o", "json")
    rows = {r["task"]: r for r in json.loads(stdout)}
    assert code == out.REGRESSION
    assert rows["mme"]["z"] == pytest.approx(7.07, abs=0.01)
    assert rows["mme"]["significant"] is True and rows["mme"]["regression"] is True  # p = 1.5e-12
    assert rows["docvqa"]["significant"] is False and rows["docvqa"]["better"] is None


def test_two_models_of_a_leaderboard(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.put({"kind": "Leaderboard", "metadata": {"name": "default", "namespace": "team-a"}})
    entries = [
        {**r, "model": model, "finishedAt": "2026-01-01T00:00:00Z"}
        for model, results in (("m-big", BIG), ("m-small", SMALL))
        for r in results
    ]
    index = {"configMaps": ["leaderboard-default-1-a-0"]}
    stub.config_map("team-a", "leaderboard-default", {"index.json": json.dumps(index)})
    stub.config_map("team-a", "leaderboard-default-1-a-0", {"table.json": json.dumps(entries)})
    code, stdout, _ = compare(capsys, "-l", "default", "m-big", "m-small", "-o", "yaml")
    assert code == out.REGRESSION and "task: mme" in stdout
    code, _, err = compare(capsys, "-l", "default", "m-big", "m-none")
    assert (code, err.strip()) == (
        out.ERROR,
        "error: Leaderboard team-a/default has no model m-none",
    )


def test_a_missing_run_is_an_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = compare(capsys, "big", "gone")
    assert (code, stdout) == (out.ERROR, "")
    assert err == "error: EvalRun team-a/gone not found\n"
    code, _, err = compare(capsys, "big", "pending")
    assert (code, err) == (
        out.ERROR,
        "error: EvalRun team-a/pending has no results (phase Succeeded)\n",
    )


def test_a_level_outside_zero_and_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = compare(capsys, "big", "small", "--alpha", "5")
    assert code == out.USAGE and "--alpha must be between 0 and 1" in err
