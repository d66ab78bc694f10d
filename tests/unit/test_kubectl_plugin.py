"""`kubectl lmms` (the `kubectl-lmms` executable; the same commands under `lmms-operator`):
its flags, its outputs, its exit codes, and its errors as one line on stderr. It talks
through the real client and kubeconfig to a stand-in API server on loopback
(``tests.apistub``); tests/cluster/test_kubectl_plugin.py runs it against the real one."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmms_operator import cli
from lmms_operator.api import GROUP
from lmms_operator.cli import output as out
from lmms_operator.cli import views
from lmms_operator.cli import wait as waiting
from lmms_operator.clock import Clock
from lmms_operator.k8s import Api
from tests import apistub

REPO = Path(__file__).resolve().parents[2]
NOW = dt.datetime.now(dt.UTC)


def ts(seconds_ago: float) -> str:
    """A timestamp that long before now (when called: ages and active durations are
    measured from the real clock)."""
    now = dt.datetime.now(dt.UTC)
    return (now - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def evalrun(
    name: str, namespace: str = "team-a", generation: int = 1, **status: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "generation": generation,
            "creationTimestamp": ts(9 * 3600 + 30),
        },
        "spec": {
            "model": {
                "type": "llava_onevision",
                "pretrained": "lmms-lab/llava-onevision-qwen2-0.5b-ov",
                "revision": "main",
            },
            "tasks": ["mme", "docvqa_val"],
        },
        "status": {"observedGeneration": 1, **status} if status else {},
    }


def results(mme: float, stderr: float = 0.01) -> list[dict[str, Any]]:
    return [
        {"task": "mme", "metric": "acc", "value": mme, "stderr": stderr, "higherIsBetter": True},
        {"task": "docvqa_val", "metric": "anls", "value": 0.61, "stderr": 0.02},
    ]


def big() -> dict[str, Any]:
    """As the operator writes a finished run's status today (the columns' fields included)."""
    return evalrun(
        "big",
        phase="Succeeded",
        reason="Succeeded",
        jobName="big-1a2b3c",
        summary="100%",
        model="lmms-lab/llava-onevision-qwen2-0.5b-ov@0123456789ab",
        tasks="mme, docvqa_val",
        score="mme=0.8 (+1)",
        duration="4m12s",
        startTime=ts(600),
        completionTime=ts(348),
        results=results(0.80),
    )


def small() -> dict[str, Any]:
    """As an operator that did not write the columns' fields left it: computed from the rest."""
    return evalrun(
        "small",
        phase="Succeeded",
        reason="Succeeded",
        startTime=ts(400),
        completionTime=ts(100),
        results=results(0.70),
    )


def live() -> dict[str, Any]:
    return evalrun("live", "team-b", phase="Running", summary="45%", startTime=ts(90))


@pytest.fixture()
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[apistub.ApiStub]:
    """The stand-in API server as the current kubeconfig's cluster (namespace team-a)."""
    for server in apistub.serve():
        for run in (big(), small(), live()):
            server.put(run)
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path)))
        yield server


def kubectl_lmms(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Runs the plugin in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.kubectl_main(list(args))
    except SystemExit as exc:  # --help, --version and usage errors end in argparse
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """Errors are one line on stderr, never a traceback."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def rows(text: str) -> list[list[str]]:
    """A table's cells (columns are three or more spaces apart)."""
    import re

    return [re.split(r"\s{3,}", line.strip()) for line in text.strip().splitlines()]


# -- runs ----------------------------------------------------------------------------------------


def test_runs_shows_model_identity_tasks_score_duration_and_age(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, err = kubectl_lmms(capsys, "runs")
    assert (code, err) == (0, "")
    head, *body = rows(stdout)
    assert head == ["NAME", "PHASE", "PROGRESS", "MODEL", "TASKS", "SCORE", "DURATION", "AGE"]
    by_name = {r[0]: dict(zip(head, r, strict=True)) for r in body}
    assert set(by_name) == {"big", "small"}  # the context's namespace only
    big = by_name["big"]
    # The checkpoint (with the commit the runner resolved), not the backend type.
    assert big["MODEL"] == "lmms-lab/llava-onevision-qwen2-0.5b-ov@0123456789ab"
    assert (big["TASKS"], big["SCORE"], big["DURATION"], big["AGE"]) == (
        "mme, docvqa_val",
        "mme=0.8 (+1)",
        "4m12s",
        "9h",
    )
    # An older status without those fields: the same columns, computed from the spec.
    small = by_name["small"]
    assert small["MODEL"] == "lmms-lab/llava-onevision-qwen2-0.5b-ov@main"
    assert (small["TASKS"], small["SCORE"], small["DURATION"]) == (
        "mme, docvqa_val",
        "mme=0.7 (+1)",
        "5m",
    )


def test_runs_in_every_namespace_and_wide(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, _ = kubectl_lmms(capsys, "runs", "-A", "-o", "wide")
    assert code == 0
    head, *body = rows(stdout)
    assert head[:2] == ["NAMESPACE", "NAME"] and head[-3:] == ["REASON", "JOB", "RESULTS"]
    by_name = {r[1]: dict(zip(head, r, strict=True)) for r in body}
    assert by_name["live"]["NAMESPACE"] == "team-b" and by_name["live"]["PROGRESS"] == "45%"
    # An active run's duration grows from its start.
    live = by_name["live"]["DURATION"]
    assert live.endswith("s") and 90 <= int(live[:-1]) < 119, live
    assert by_name["live"]["SCORE"] == "-"
    assert by_name["big"]["RESULTS"] == "mme=0.8, docvqa_val=0.61"
    assert by_name["big"]["JOB"] == "big-1a2b3c"


def test_runs_as_json_and_yaml_are_the_same_records(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    _, as_json, _ = kubectl_lmms(capsys, "runs", "-A", "-o", "json")
    _, as_yaml, _ = kubectl_lmms(capsys, "-o", "yaml", "runs", "-A")
    records = json.loads(as_json)
    assert yaml.safe_load(as_yaml) == records
    big = next(r for r in records if r["name"] == "big")
    assert big["namespace"] == "team-a" and big["phase"] == "Succeeded"
    assert big["model"] == "lmms-lab/llava-onevision-qwen2-0.5b-ov@0123456789ab"
    assert big["tasks"] == ["mme", "docvqa_val"] and big["score"] == "mme=0.8 (+1)"
    assert big["durationSeconds"] == 252 and big["results"] == results(0.80)
    assert big["status"]["jobName"] == "big-1a2b3c" and big["upToDate"] is True


def test_an_empty_namespace_says_so(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kubectl_lmms(capsys, "runs", "-n", "nobody") == (
        0,
        "No EvalRuns found in namespace nobody.\n",
        "",
    )


# -- flags ---------------------------------------------------------------------------------------


def test_connection_flags_go_before_or_after_the_command(
    stub: apistub.ApiStub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = str(stub.kubeconfig(tmp_path))
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")  # the flag wins
    before = kubectl_lmms(capsys, "--kubeconfig", config, "-n", "team-b", "runs")
    after = kubectl_lmms(capsys, "runs", "--kubeconfig", config, "--namespace", "team-b")
    assert before[0] == after[0] == 0 and before[2] == after[2] == ""
    assert [r[0] for r in rows(before[1])] == [r[0] for r in rows(after[1])] == ["NAME", "live"]
    # --context picks another cluster of the kubeconfig: nothing listens there.
    code, stdout, err = kubectl_lmms(
        capsys, "--kubeconfig", config, "--context", "elsewhere", "runs"
    )
    assert code == 1 and stdout == ""
    line = one_error_line(err)
    assert line.startswith("error: the API server did not answer") and "127.0.0.1:9" in line


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = kubectl_lmms(capsys, "--version")
    assert code == 0 and stdout.strip() == f"kubectl-lmms {cli.version()}"
    code, stdout, _ = kubectl_lmms(capsys, "--help")
    assert code == 0 and "kubectl lmms" in stdout and "exit codes: 0 ok; 1 error" in stdout
    for command in ("runs", "compare", "wait"):
        code, stdout, _ = kubectl_lmms(capsys, command, "--help")
        assert code == 0 and "--context" in stdout and "{table,wide,json,yaml}" in stdout


@pytest.mark.parametrize(
    "args, says",
    [
        ((), "the following arguments are required"),
        (("rns",), "invalid choice: 'rns'"),
        (("runs", "-o", "xml"), "invalid choice: 'xml'"),
        (("wait", "x", "--timeout", "soon"), "not a duration: 'soon'"),
        (("compare", "a"), "the following arguments are required: b"),
        (("compare", "a", "b", "--fail-on", "always"), "invalid choice: 'always'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], says: str
) -> None:
    code, stdout, err = kubectl_lmms(capsys, *args)
    line = one_error_line(err)
    assert (code, stdout) == (out.USAGE, "") and says in line and "--help" in line


# -- errors --------------------------------------------------------------------------------------


def test_api_errors_are_one_line_with_the_servers_words(
    stub: apistub.ApiStub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, err = kubectl_lmms(capsys, "leaderboard", "show", "nope")
    assert (code, stdout) == (1, "")
    assert one_error_line(err) == "error: Leaderboard team-a/nope not found"
    stub.forbidden = True
    code, _, err = kubectl_lmms(capsys, "runs")
    assert code == 1
    assert one_error_line(err) == (
        f'error: evalruns.{GROUP} is forbidden: User "alice" cannot list resource '
        f'"evalruns" in API group "{GROUP}" in the namespace "team-a"'
    )
    stub.forbidden = False
    stub.crds = False  # a cluster without the CRDs
    code, _, err = kubectl_lmms(capsys, "runs")
    assert code == 1 and "the lmms-operator CRDs installed" in one_error_line(err)
    (tmp_path / "broken").write_text("clusters: [")
    code, _, err = kubectl_lmms(capsys, "--kubeconfig", str(tmp_path / "broken"), "runs")
    assert code == 1 and one_error_line(err).startswith(
        f"error: cannot use the kubeconfig {tmp_path / 'broken'}: "
    )


def test_a_bug_is_still_one_line(stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]) -> None:
    stub.put(evalrun("odd", phase="Succeeded", results="not a list"))
    code, _, err = kubectl_lmms(capsys, "runs")
    assert code == 1 and one_error_line(err).startswith("error: internal error: ")


# -- leaderboard show ----------------------------------------------------------------------------

ENTRY = {
    "task": "mme",
    "metric": "acc",
    "model": "lmms-lab/llava-onevision-qwen2-0.5b-ov@main",
    "rank": 1,
    "value": 0.8,
    "stderr": 0.01,
    "higherIsBetter": True,
    "settings": "lmms-eval=0.7.3",
    "run": "team-a/big",
    "finishedAt": "2026-01-01T00:00:00Z",
}


def test_leaderboard_show_json_is_the_stored_entries(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    board = {"kind": "Leaderboard", "metadata": {"name": "default", "namespace": "team-a"}}
    stub.put(board)
    stub.config_map(
        "team-a",
        "leaderboard-default",
        {"index.json": '{"configMaps": ["leaderboard-default-1-a-0"]}'},
    )
    stub.config_map("team-a", "leaderboard-default-1-a-0", {"table.json": json.dumps([ENTRY])})
    code, stdout, _ = kubectl_lmms(capsys, "leaderboard", "show", "default", "-o", "json")
    assert code == 0 and json.loads(stdout) == [ENTRY]
    code, stdout, _ = kubectl_lmms(capsys, "leaderboard", "show", "default")
    head, row = rows(stdout)
    assert head == ["TASK", "RANK", "MODEL", "METRIC", "VALUE", "STDERR", "SETTINGS", "RUN"]
    assert row == [
        "mme",
        "1",
        ENTRY["model"],
        "acc ↑",
        "0.8",
        "0.01",
        "lmms-eval=0.7.3",
        "team-a/big",
    ]
    _, wide, _ = kubectl_lmms(capsys, "leaderboard", "show", "default", "-o", "wide")
    assert rows(wide)[1][-1] == "2026-01-01T00:00:00Z"


# -- wait ----------------------------------------------------------------------------------------


class FakeClock(Clock):
    """Time that moves only when the code waits."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> dt.datetime:
        return NOW + dt.timedelta(seconds=self.t)

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def wait(
    stub: apistub.ApiStub, names: list[str], timeout: float | None, output: str = "table"
) -> tuple[str, int, FakeClock]:
    clock = FakeClock()
    target = views.Target(Api(kubeconfig_first=True), "team-a")
    text, code = asyncio.run(waiting.wait(target, names, timeout, 2.0, output, clock))
    return text, code, clock


def test_wait_ends_with_the_runs_outcome(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    pending = evalrun("w", phase="Pending", reason="JobPending")
    running = evalrun("w", phase="Running", summary="10%")
    # An edit the operator has yet to see: the old outcome does not count.
    stale = evalrun("w", generation=2, phase="Succeeded", reason="Succeeded")
    done = evalrun(
        "w",
        generation=2,
        phase="Succeeded",
        reason="Succeeded",
        startTime=ts(60),
        completionTime=ts(0),
        score="mme=0.5",
    )
    done["status"]["observedGeneration"] = 2
    stub.put(pending, running, stale, done)
    text, code, clock = wait(stub, ["w"], timeout=None)
    assert code == out.OK and clock.sleeps == [2.0, 2.0, 2.0]
    assert rows(text)[1] == ["team-a", "w", "Succeeded", "Succeeded", "mme=0.5", "60s"]
    told = capsys.readouterr().err.splitlines()  # each change once, on stderr
    assert told[0] == "EvalRun team-a/w: Pending (JobPending)"
    assert told[1] == "EvalRun team-a/w: Running (10%)"
    assert told[-1] == "EvalRun team-a/w: Succeeded (Succeeded)"

    stub.put(evalrun("bad", phase="Failed", reason="OOMKilled"))
    stub.put(evalrun("off", phase="Cancelled", reason="Cancelled"))
    _, code, _ = wait(stub, ["bad", "team-a/big"], timeout=None)
    assert code == out.RUN_FAILED
    text, code, _ = wait(stub, ["off"], timeout=None, output="json")
    assert code == out.RUN_FAILED and json.loads(text)[0]["reason"] == "Cancelled"


def test_wait_times_out_and_zero_looks_once(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.put(evalrun("slow", phase="Running"))
    _, code, clock = wait(stub, ["slow", "big"], timeout=5.0)
    assert code == out.TIMED_OUT and clock.t == 5.0 and clock.sleeps == [2.0, 2.0, 1.0]
    assert capsys.readouterr().err.splitlines()[-1] == (
        "timed out after 5s: still waiting for team-a/slow"
    )
    _, code, clock = wait(stub, ["slow"], timeout=0.0)
    assert code == out.TIMED_OUT and clock.sleeps == []


def test_waiting_for_a_run_that_does_not_exist_is_an_error(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = kubectl_lmms(capsys, "wait", "ghost", "--timeout", "1m")
    assert code == 1 and one_error_line(err) == "error: EvalRun team-a/ghost not found"


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90", 90),
        ("90s", 90),
        ("30m", 1800),
        ("1h30m", 5400),
        ("2.5m", 150),
        ("0", 0),
        ("-1s", None),
    ],
)
def test_timeouts_read_as_kubectl_reads_them(text: str, seconds: float | None) -> None:
    assert waiting.parse_timeout(text) == seconds


# -- the entry points ----------------------------------------------------------------------------


def test_the_package_installs_kubectl_lmms_and_python_m_keeps_working(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-lmms"] == "lmms_operator.cli:kubectl_main"
    assert scripts["lmms-operator"] == "lmms_operator.__main__:main"
    _, plugin, _ = kubectl_lmms(capsys, "runs", "-o", "json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    module = subprocess.run(
        [sys.executable, "-m", "lmms_operator", "runs", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    # (durationSeconds of active runs aside, both print the same records)
    assert json.loads(module.stdout) == json.loads(plugin)
    usage = subprocess.run(
        [sys.executable, "-m", "lmms_operator", "compare", "a"], capture_output=True, env=env
    )
    assert usage.returncode == 2
