"""The runner with the real lmms-eval 0.7.3 on CPU, fully offline: a local task of
generated images, and a local OpenAI-compatible server as the model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures import colortask
from tests.fixtures.s3 import s3_server
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FAKE_HF_TOKEN = "hf_FAKEfakeFAKEfakeFAKEfake1234"
API_KEY = "sk-local-secret-0123456789abcdef"
RUNNER_TOKEN = "runner-token-0123456789"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ModelServer:
    def __init__(self, delay: float, wrong_every: int = 0, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests/fixtures/openai_server.py"),
                "--delay",
                str(delay),
                "--wrong-every",
                str(wrong_every),
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = json.loads(self.proc.stdout.readline())["port"]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def requests(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as r:
            return int(json.load(r)["requests"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture()
def model_server() -> Iterator[ModelServer]:
    server = ModelServer(delay=0.25, wrong_every=4)
    yield server
    server.stop()


@pytest.fixture()
def tasks_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tasks"
    colortask.write(d, "colors", samples=16)
    colortask.write(d, "shades", samples=8)
    return d


def run_config(
    tmp_path: Path, base_url: str, tasks: list[str], custom: bool = False, **model_args: str
) -> Path:
    """The EvalRun the runner reads; ``custom``: the tasks are the run's customTasks (in
    the cluster a mounted ConfigMap; here the --include-path directory)."""
    args = {
        "model_version": "local",
        "base_url": base_url,
        "api_key": API_KEY,
        "num_concurrent": "1",
        **model_args,
    }
    doc: dict[str, Any] = {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "local-colors"},
        "spec": {
            "model": {"type": "openai", "args": args},
            "tasks": [] if custom else tasks,
            "evaluation": {"seed": 7},
        },
    }
    if custom:
        doc["spec"]["customTasks"] = [{"configMap": "local-tasks", "tasks": tasks}]
    path = tmp_path / "evalrun.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Runner:
    def __init__(
        self,
        tmp_path: Path,
        config: Path,
        tasks_dir: Path,
        hold: float = 0,
        state: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = _free_port()
        self.out_dir = tmp_path / "out"
        self.term = tmp_path / "termination-log"
        self.stdout = tmp_path / "runner.stdout"
        self.stderr = tmp_path / "runner.stderr"
        env = dict(os.environ)
        env.update(
            {
                "HF_HOME": str(tmp_path / "hf"),
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
                "HF_TOKEN": FAKE_HF_TOKEN,
                "LMMS_RUNNER_TOKEN": RUNNER_TOKEN,
                "LMMS_TERMINATION_LOG": str(self.term),
                **(extra_env or {}),
            }
        )
        argv = [
            sys.executable,
            "-m",
            "lmms_runner",
            "--config",
            str(config),
            "--include-path",
            str(tasks_dir),
            "--output",
            str(self.out_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--hold-timeout",
            str(hold),
        ]
        if state is not None:
            argv += ["--state-dir", str(state)]
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=self.stdout.open("w"),
            stderr=self.stderr.open("w"),
            start_new_session=True,
        )

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                body = r.read()
                return r.status, json.loads(body) if path != "/metrics" else body.decode()
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def post(self, path: str, token: str) -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=b"{}",
            method="POST",
            headers={"Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def wait(self, timeout: float = 240) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def test_progress_results_termination_message_and_ack(
    tmp_path: Path, model_server: ModelServer, tasks_dir: Path
) -> None:
    config = run_config(tmp_path, model_server.url, ["colors", "shades"])
    runner = Runner(tmp_path, config, tasks_dir, hold=120)
    seen: list[float] = []
    phases: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            code, progress = runner.get("/progress")
        except OSError:
            time.sleep(0.2)
            continue
        assert code == 200
        seen.append(progress["percent"])
        phases.append(progress["phase"])
        if progress["phase"] == "done":
            break
        assert runner.proc.poll() is None, runner.output()
        time.sleep(0.2)
    assert phases[-1] == "done", (phases[-5:], runner.output()[-3000:])
    assert seen == sorted(seen), "progress went backwards"
    assert any(0 < p < 100 for p in seen), f"no intermediate progress in {sorted(set(seen))}"
    assert seen[-1] == 100
    assert "evaluating" in phases

    # /results needs the token, and equals the results file.
    assert runner.get("/results")[0] == 401
    assert runner.get("/results", token="wrong")[0] == 401
    code, served = runner.get("/results", token=RUNNER_TOKEN)
    assert code == 200
    (results_file,) = runner.out_dir.rglob("*_results.json")
    data = json.loads(results_file.read_text())
    by_task = {t["task"]: t for t in served["tasks"]}
    assert set(by_task) == {"colors", "shades"}
    for task, values in data["results"].items():
        metrics = {m["name"]: m for m in by_task[task]["metrics"]}
        assert metrics["exact_match"]["value"] == values["exact_match,none"]
        assert metrics["exact_match"]["higherIsBetter"] is True
        assert metrics["error_rate"]["higherIsBetter"] is False
        assert by_task[task]["primary"] == "exact_match"
    # One answer in four is wrong on purpose: the score is real, not a constant.
    assert 0 < by_task["colors"]["metrics"][0]["value"] < 1
    prov = served["provenance"]
    assert prov["lmmsEvalVersion"] == "0.7.3" and prov["torchVersion"]
    assert prov["seed"] == 7 and prov["configHash"]
    assert "--timezone" in prov["argv"] and API_KEY not in json.dumps(prov)

    term = json.loads(runner.term.read_text())
    assert term["ok"] is True
    assert term["tasks"]["colors"]["exact_match"] == by_task["colors"]["metrics"][0]["value"]
    assert len(runner.term.read_bytes()) <= 4096

    code, metrics_text = runner.get("/metrics")
    assert 'lmms_runner_phase{phase="done"} 1.0' in metrics_text
    assert "lmms_runner_samples_done 24.0" in metrics_text

    # The runner holds until acknowledged, then exits 0.
    assert runner.proc.poll() is None
    assert runner.post("/ack", "wrong") == 401
    assert runner.post("/ack", RUNNER_TOKEN) == 200
    assert runner.wait(30) == 0
    provenance = json.loads((runner.out_dir / "lmms-runner.json").read_text())
    assert provenance["versions"]["lmms-eval"] == "0.7.3"

    # No secret anywhere the runner wrote.
    everything = runner.output() + runner.term.read_text() + json.dumps(served)
    for secret in (FAKE_HF_TOKEN, API_KEY, RUNNER_TOKEN):
        assert secret not in everything


def test_unknown_task_fails_instead_of_a_false_success(
    tmp_path: Path, model_server: ModelServer, tasks_dir: Path
) -> None:
    config = run_config(tmp_path, model_server.url, ["colors", "no_such_task_anywhere"])
    runner = Runner(tmp_path, config, tasks_dir)
    assert runner.wait() == 3, runner.output()[-2000:]
    term = json.loads(runner.term.read_text())
    assert term["ok"] is False and term["reason"] == "EvaluationFailed"
    assert "no_such_task_anywhere" in term["message"] or "no results" in term["message"]


def test_a_model_server_that_is_down_fails_the_run(tmp_path: Path, tasks_dir: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    config = run_config(
        tmp_path, url, ["shades"], max_retries="1", timeout="2", retry_backoff_s="0"
    )
    runner = Runner(tmp_path, config, tasks_dir)
    assert runner.wait() == 3, runner.output()[-2000:]
    term = json.loads(runner.term.read_text())
    assert term["reason"] == "EvaluationFailed"
    assert "model request(s) failed" in term["message"]


def test_a_crash_mid_run_fails_the_run(
    tmp_path: Path, model_server: ModelServer, tasks_dir: Path
) -> None:
    config = run_config(tmp_path, model_server.url, ["colors"])
    runner = Runner(tmp_path, config, tasks_dir)
    wait_for(lambda: model_server.requests() >= 3, timeout=180, interval=0.5)
    # Kill lmms-eval (the runner's child) as an OOM killer would.
    children = Path(f"/proc/{runner.proc.pid}/task/{runner.proc.pid}/children").read_text().split()
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    assert runner.wait() == 3
    term = json.loads(runner.term.read_text())
    assert term["reason"] == "EvaluationFailed"
    assert "-9" in term["message"] or "no results file" in term["message"]


def test_a_bad_configuration_exits_2(tmp_path: Path, tasks_dir: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {"spec": {"model": {"type": "openai"}, "tasks": [], "evaluation": {"batchSize": 0}}}
        )
    )
    runner = Runner(tmp_path, config, tasks_dir)
    assert runner.wait(60) == 2
    term = json.loads(runner.term.read_text())
    assert term["reason"] == "ConfigError" and "spec.evaluation.batchSize" in term["message"]


def test_a_restarted_run_resumes_from_the_cache_volume(tmp_path: Path, tasks_dir: Path) -> None:
    server = ModelServer(delay=0.3)
    try:
        state = tmp_path / "volume"
        config = run_config(tmp_path, server.url, ["colors", "shades"])
        (tmp_path / "a").mkdir()
        first = Runner(tmp_path / "a", config, tasks_dir, state=state)
        # Kill the whole pod once the first task has finished (its results are on the
        # volume) and the second has started.
        wait_for(lambda: list(state.glob("*/tasks/colors.json")), timeout=240, interval=0.2)
        first.kill()
        answered_before = server.requests()
        assert answered_before >= 16
        (tmp_path / "b").mkdir()
        second = Runner(tmp_path / "b", config, tasks_dir, state=state)
        assert second.wait() == 0, second.output()[-2000:]
        asked_again = server.requests() - answered_before
        assert asked_again == 8, (answered_before, asked_again)  # only "shades" again
        assert "task colors finished in an earlier attempt" in second.output()
        served = json.loads((tmp_path / "b" / "out" / "combined_results.json").read_text())
        assert set(served["results"]) == {"colors", "shades"}
        # A third start after success reuses the finished results: no model call at all.
        (tmp_path / "c").mkdir()
        before = server.requests()
        third = Runner(tmp_path / "c", config, tasks_dir, state=state)
        assert third.wait(120) == 0
        assert server.requests() == before
        assert "reusing" in third.output()
    finally:
        server.stop()


def test_a_run_killed_inside_a_task_resumes_inside_it(tmp_path: Path, tasks_dir: Path) -> None:
    """lmms-eval commits its response cache every LMMS_CACHE_CHECKPOINT_INTERVAL (8)
    answers: a runner killed in the middle of a task asks the model again only for what
    was not committed, not for the whole task."""
    server = ModelServer(delay=0.3)
    try:
        state = tmp_path / "volume"
        # 16 samples; as customTasks, which --include-path provides locally.
        config = run_config(tmp_path, server.url, ["colors"], custom=True)
        (tmp_path / "a").mkdir()
        first = Runner(tmp_path / "a", config, tasks_dir, state=state)
        wait_for(lambda: server.requests() >= 11, timeout=240, interval=0.1)
        first.kill()
        answered_before = server.requests()
        assert answered_before < 16
        (tmp_path / "b").mkdir()
        second = Runner(tmp_path / "b", config, tasks_dir, state=state)
        assert second.wait() == 0, second.output()[-2000:]
        asked_again = server.requests() - answered_before
        # Without the chunked cache all 16 are asked again (lmms-eval 0.7.3 stores a
        # request type's answers only once all are in). The first chunk of 8 was kept;
        # one request may have been in flight when the pod was killed.
        assert asked_again <= 16 - 8 + 1, (answered_before, asked_again)
        assert "resuming:" in second.output()
        assert "colors" in json.loads(second.term.read_text())["tasks"]
    finally:
        server.stop()


def test_upload_to_a_real_s3_compatible_server(
    tmp_path: Path, model_server: ModelServer, tasks_dir: Path
) -> None:
    with s3_server("evals") as store:
        endpoint, s3, creds = store.endpoint, store.client, store.env
        config = run_config(tmp_path, model_server.url, ["shades"])
        doc = yaml.safe_load(config.read_text())
        doc["spec"]["output"] = {"s3": {"bucket": "evals", "prefix": "runs/", "endpoint": endpoint}}
        config.write_text(yaml.safe_dump(doc))
        runner = Runner(
            tmp_path, config, tasks_dir, hold=60, extra_env={**creds, "POD_NAMESPACE": "team-a"}
        )
        wait_for(lambda: runner.get("/progress")[1]["phase"] == "done", timeout=240, interval=0.5)
        _, served = runner.get("/results", token=RUNNER_TOKEN)
        location = served["s3Location"]
        assert location.startswith("s3://evals/runs/team-a/local-colors/")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="evals")["Contents"]]
        assert any(k.endswith("_results.json") for k in keys)
        assert any(k.endswith("lmms-runner.json") for k in keys)
        summary_key = next(k for k in keys if k.endswith("results-summary.json"))
        stored = json.loads(s3.get_object(Bucket="evals", Key=summary_key)["Body"].read())
        assert stored["tasks"][0]["task"] == "shades"
        assert json.loads(runner.term.read_text())["s3"] == location
        runner.post("/ack", RUNNER_TOKEN)
        assert runner.wait(30) == 0
        assert creds["AWS_SECRET_ACCESS_KEY"] not in runner.output()
