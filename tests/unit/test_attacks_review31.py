"""Review of issue 31's additions, as a tenant would attack them: ``kubectl lmms`` prints
what tenants wrote (task and metric names a runner reported, Leaderboard tables in
ConfigMaps anyone who may edit the namespace may rewrite) on an admin's terminal, and a
pipeline gates on ``compare``'s and ``wait``'s exit codes. The CLI talks through the
real client to the stand-in API server (``tests.apistub``)."""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from lmms_operator import cli
from lmms_operator.cli import output as out
from lmms_operator.cli import views
from lmms_operator.cli import wait as waiting
from lmms_operator.k8s import Api
from lmms_operator.reconcile.grammar import invisible
from tests import apistub
from tests.unit.test_kubectl_plugin import FakeClock, evalrun

#: What a terminal acts on or a reader cannot see: escape sequences (ESC, CSI, OSC), line
#: breaks, tabs, bidi overrides, zero-width characters.
HOSTILE = "mme\x1b]0;owned\x07\x1b[2J\r\n\tforged   row\u202edecoy\u200b\x9b31m\u2028end"


def unsafe(text: str, allow: str = "\n") -> list[str]:
    """The characters of ``text`` a terminal would act on or hide (``allow``: the line
    breaks between a table's or a document's own lines)."""
    return [
        c
        for c in text
        if c not in allow
        and (unicodedata.category(c) in {"Cc", "Cf", "Co", "Cs", "Zl", "Zp", "Cn"} or invisible(c))
    ]


@pytest.fixture()
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[apistub.ApiStub]:
    for server in apistub.serve():
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path)))
        yield server


def lmms(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = cli.kubectl_main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def result(
    task: str, metric: str, value: float | None, stderr: float | None = 0.01
) -> dict[str, Any]:
    r: dict[str, Any] = {"task": task, "metric": metric, "value": value, "higherIsBetter": True}
    if stderr is not None:
        r["stderr"] = stderr
    return r


def finished(name: str, results: list[dict[str, Any]], **status: Any) -> dict[str, Any]:
    return evalrun(name, phase="Succeeded", reason="Succeeded", results=results, **status)


# -- terminal injection: tenant strings on the admin's terminal -----------------------------------


def test_runs_table_escapes_what_a_runner_reported(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    """status.results' task names come from the runner (the tenant's code, lmms-eval's
    output): in SCORE and RESULTS they must not move the cursor, retitle the terminal,
    add rows or reorder text."""
    stub.put(finished("r", [result(HOSTILE, "acc", 0.5)], score=f"{HOSTILE}=0.5"))
    code, stdout, _ = lmms(capsys, "runs", "-o", "wide")
    assert code == 0
    assert unsafe(stdout) == []
    assert len(stdout.strip().splitlines()) == 2  # the header and one run
    assert "\\x1b" in stdout  # shown, escaped: the reader sees something is there


def test_leaderboard_table_escapes_an_edited_configmap(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table lives in ConfigMaps of the tenant's namespace: every field of an entry
    is the tenant's text."""
    stub.put({"kind": "Leaderboard", "metadata": {"name": "b", "namespace": "team-a"}})
    entry = {
        "task": HOSTILE,
        "metric": HOSTILE,
        "model": HOSTILE,
        "rank": 1,
        "value": 0.5,
        "stderr": 0.01,
        "settings": HOSTILE,
        "run": HOSTILE,
        "finishedAt": HOSTILE,
    }
    stub.config_map(
        "team-a", "leaderboard-b", {"index.json": '{"configMaps": ["leaderboard-b-0"]}'}
    )
    stub.config_map("team-a", "leaderboard-b-0", {"table.json": json.dumps([entry])})
    code, stdout, _ = lmms(capsys, "leaderboard", "show", "b", "-o", "wide")
    assert code == 0 and unsafe(stdout) == [] and len(stdout.strip().splitlines()) == 2
    for fmt, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        code, stdout, _ = lmms(capsys, "leaderboard", "show", "b", "-o", fmt)
        assert code == 0 and unsafe(stdout) == [], fmt
        assert load(stdout) == [entry], fmt  # escaped, not changed: scripts read the same


def test_compare_table_escapes_task_and_metric_names(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.put(finished("a", [result(HOSTILE, HOSTILE, 0.9)]))
    stub.put(finished("b", [result(HOSTILE, HOSTILE, 0.1)]))
    code, stdout, _ = lmms(capsys, "compare", "a", "b")
    assert code == out.REGRESSION
    assert unsafe(stdout) == []


def test_wait_progress_lines_escape_the_status(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    """wait tells each change of phase on stderr, with status.summary and status.reason."""
    stub.put(evalrun("w", phase="Failed", reason=HOSTILE, summary=HOSTILE))
    code, stdout, err = lmms(capsys, "wait", "w")
    assert code == out.RUN_FAILED
    assert unsafe(err) == [] and unsafe(stdout) == []
    assert len(err.strip().splitlines()) == 1


@given(st.text(max_size=40))
def test_a_table_cell_is_one_line_of_visible_characters(cell: str) -> None:
    """Whatever a cell holds, the table has its header and one row, no character a
    terminal acts on, and printable text stays as it was."""
    text = out.table([["HEAD", "X"], [cell, "y"]])
    assert len(text.split("\n")) == 2
    assert unsafe(text) == []
    if cell.isprintable():
        assert cell.rstrip() in text


@given(st.recursive(st.text(max_size=20), lambda inner: st.lists(inner, max_size=3), max_leaves=8))
@example(["\xa0"])  # found by hypothesis: a no-break space that str.rstrip() took away
def test_json_and_yaml_escape_but_keep_the_data(value: Any) -> None:
    for fmt, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        text = out.data(value, fmt)
        assert unsafe(text) == [], fmt
        assert load(text) == value, fmt


# -- compare as a gate ----------------------------------------------------------------------------


def test_a_candidate_that_lost_a_metric_does_not_pass_the_gate(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    """The baseline scored mme; the candidate has no mme at all (a task dropped or not
    evaluated): a pipeline gating on compare must not read that as "no regression"."""
    stub.put(finished("a", [result("mme", "acc", 0.9), result("pope", "acc", 0.8)]))
    stub.put(finished("b", [result("pope", "acc", 0.8)]))
    code, stdout, _ = lmms(capsys, "compare", "a", "b")
    assert code == out.REGRESSION, stdout


def test_a_candidate_whose_score_is_not_a_number_does_not_pass_the_gate(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    """lmms-eval reports NaN for a broken model; the operator stores it as null (NaN is
    not JSON): the candidate has no score, which is no pass."""
    stub.put(finished("a", [result("mme", "acc", 0.9)]))
    stub.put(finished("b", [result("mme", "acc", None)]))
    code, stdout, _ = lmms(capsys, "compare", "a", "b")
    assert code == out.REGRESSION, stdout
    # The same from a Leaderboard table, where a tenant may write NaN itself.
    stub.put({"kind": "Leaderboard", "metadata": {"name": "b", "namespace": "team-a"}})
    rows = [
        {"task": "mme", "metric": "acc", "model": "m1", "value": 0.9, "stderr": 0.01},
        {"task": "mme", "metric": "acc", "model": "m2", "value": float("nan"), "stderr": 0.01},
    ]
    stub.config_map(
        "team-a", "leaderboard-b", {"index.json": '{"configMaps": ["leaderboard-b-0"]}'}
    )
    stub.config_map("team-a", "leaderboard-b-0", {"table.json": json.dumps(rows)})
    code, stdout, _ = lmms(capsys, "compare", "-l", "b", "m1", "m2")
    assert code == out.REGRESSION, stdout


def test_a_metric_new_in_the_candidate_is_no_regression(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.put(finished("a", [result("mme", "acc", 0.9)]))
    stub.put(finished("b", [result("mme", "acc", 0.9), result("pope", "acc", 0.1)]))
    code, _, _ = lmms(capsys, "compare", "a", "b")
    assert code == out.OK


def test_a_large_drop_without_stderr_does_not_pass_the_gate(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tenant can strip the candidate's standard errors (keep the operator from its
    runner with a NetworkPolicy: the results then come from the termination message,
    which carries none). The default gate fails safe: worse with its significance
    unknown is a regression; only ``--fail-on significant-regression`` lets it pass."""
    stub.put(finished("a", [result("mme", "acc", 0.9)]))
    stub.put(finished("b", [result("mme", "acc", 0.1, stderr=None)]))
    code, stdout, _ = lmms(capsys, "compare", "a", "b")
    assert code == out.REGRESSION
    assert "B worse, significance unknown" in stdout
    assert stdout.strip().endswith("a regression (--fail-on regression): mme acc")
    code, stdout, _ = lmms(capsys, "compare", "a", "b", "-o", "json")
    (row,) = json.loads(stdout)
    assert (code, row["significant"], row["regression"]) == (out.REGRESSION, None, True)
    # The explicit opt-out keeps the old rule: only a significant drop fails.
    code, stdout, _ = lmms(capsys, "compare", "a", "b", "--fail-on", "significant-regression")
    assert code == out.OK, stdout
    # Better, or equal, without standard errors: no regression either way.
    code, stdout, _ = lmms(capsys, "compare", "b", "a")
    assert code == out.OK and "unknown (no stderr)" in stdout
    stub.put(finished("c", [result("mme", "acc", 0.9, stderr=None)]))
    assert lmms(capsys, "compare", "a", "c")[0] == out.OK


def test_worse_follows_the_metric_direction_where_significance_is_unknown(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lower WER is better: a candidate with a higher WER and no standard error fails
    the default gate; one with a lower WER passes."""
    wer = {"task": "asr", "metric": "wer", "higherIsBetter": False}
    stub.put(finished("a", [{**wer, "value": 0.2}]))
    stub.put(finished("b", [{**wer, "value": 0.4}]))
    assert lmms(capsys, "compare", "a", "b")[0] == out.REGRESSION
    assert lmms(capsys, "compare", "b", "a")[0] == out.OK


# -- wait on a run that is deleted and created again ----------------------------------------------


def test_wait_does_not_take_a_recreated_run_for_the_one_it_waited_for(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run waited for is deleted and another one is created under its name (a run
    that would fail, replaced by a trivial one that succeeds): the outcome is not the
    first run's, so wait must not exit 0."""
    first = evalrun("w", phase="Running", summary="10%")
    first["metadata"]["uid"] = "uid-first"
    second = evalrun("w", phase="Succeeded", reason="Succeeded")
    second["metadata"]["uid"] = "uid-second"
    stub.put(first, second)
    target = views.Target(Api(kubeconfig_first=True), "team-a")
    with pytest.raises(out.Failure) as failure:
        asyncio.run(waiting.wait(target, ["w"], None, 2.0, "table", FakeClock()))
    assert "team-a/w" in str(failure.value) and failure.value.code != out.OK


# -- the runner's words in the status, its conditions and Events ---------------------------------


def failed_pod(message: str, exit_code: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "runner",
                    "state": {"terminated": {"exitCode": exit_code, "message": message}},
                }
            ],
        },
    }


def test_a_forged_driver_failure_cannot_inject_into_the_status_or_events() -> None:
    """The termination message is written by whatever runs in the runner's container (the
    tenant's code with remote code or its own image). Its reason is allow-listed; its
    message must not carry terminal controls or bidi tricks into status.message, the
    conditions and the Event that kubectl describe prints as a table."""
    from lmms_operator.reconcile import status as st_

    forged = json.dumps({"ok": False, "reason": "DriverTooOld", "message": HOSTILE})
    for pods in ([failed_pod(forged)], [failed_pod(HOSTILE)], [failed_pod(HOSTILE, 137)]):
        found = st_._failed_pod_reason(pods)
        assert found is not None
        reason, message = found
        assert reason.isascii() and reason.isalnum()
        assert unsafe(message, allow="\n") == [], message


def test_task_and_metric_names_a_runner_reports_reach_the_status_escaped() -> None:
    """Task and metric names go to status.results, status.score (a kubectl get column),
    the Leaderboard and the metrics' labels."""
    from lmms_operator.api.runner import ResultsSummary
    from lmms_operator.reconcile import results as res

    message = json.dumps({"ok": True, "tasks": {HOSTILE: {HOSTILE: 0.5}}})
    from_message = res.from_termination_message(message) or []
    assert from_message and all(
        unsafe(r["task"] + r["metric"], allow="") == [] for r in from_message
    )
    summary = ResultsSummary.model_validate(
        {
            "tasks": [
                {"task": HOSTILE, "primary": HOSTILE, "metrics": [{"name": HOSTILE, "value": 0.5}]}
            ],
            "provenance": {"model": "dummy", "configHash": "0"},
        }
    )
    primaries = res.primary_results(summary)
    assert primaries and all(unsafe(r["task"] + r["metric"], allow="") == [] for r in primaries)


def test_progress_a_runner_reports_reaches_the_status_escaped() -> None:
    """status.progress.tasks[].name (what `kubectl lmms wait` prints and a client shows)
    and the HarnessPatched condition and Event come from the runner's /progress: the
    tenant's code."""
    import datetime as dt

    from lmms_operator.api.runner import RunnerProgress
    from lmms_operator.reconcile import progress as prog

    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    answer = RunnerProgress.model_validate(
        {
            "phase": "evaluating",
            "percent": 10,
            "tasks": [{"name": HOSTILE, "done": 1, "total": 10}, {"name": "pope", "total": 5}],
            "harness": {"lmmsEvalVersion": HOSTILE, "patched": False, "message": HOSTILE},
        }
    )
    run = {"metadata": {"name": "r", "namespace": "team-a", "generation": 1}}
    plan = prog.answered(run, {}, answer, "ok", now)
    progress = plan.status["progress"]
    assert progress is not None
    names = [t["name"] for t in progress["tasks"]]
    assert unsafe("".join(names), allow="") == [] and names[1] == "pope"
    assert "\\x1b" in names[0]  # shown, escaped
    words = [c["message"] for c in plan.status["conditions"]] + [e.message for e in plan.events]
    assert words and all(unsafe(w, allow="\n") == [] for w in words), words
    # A fan-out's overall progress goes the same way.
    shards = {"shards": [{"index": 0}, {"index": 1}]}
    plan = prog.shards_progress_plan(shards, {0: answer, 1: answer}, now)
    progress = plan.status["progress"]
    assert progress is not None
    names = [t["name"] for t in progress["tasks"]]
    assert names and unsafe("".join(names), allow="") == []


@given(st.text(max_size=60))
def test_escaping_leaves_nothing_hidden_and_printable_text_alone(text: str) -> None:
    from lmms_operator.reconcile.grammar import escape_hidden

    assert unsafe(escape_hidden(text), allow="") == []
    assert unsafe(escape_hidden(text, keep="\n"), allow="\n") == []
    if text.isprintable():
        assert escape_hidden(text) == text
