"""The runner against a model server it does not start (an engine sidecar, or
spec.model.endpoint): it waits for the server, asks it which model it serves, and
evaluates that model through lmms-eval's openai backend. Real lmms-eval, a real server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from tests.e2e.test_runner import API_KEY, RUNNER_TOKEN, ModelServer, Runner, _free_port
from tests.fixtures import colortask


def _config(tmp_path: Path) -> Path:
    """An engine run's configuration: type openai, the checkpoint the engine serves, and
    no base_url or model_version (the runner takes them from the server)."""
    doc = {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "served-colors"},
        "spec": {
            "model": {
                "type": "openai",
                "pretrained": "Qwen/Qwen2-VL-72B-Instruct",
                "args": {"num_concurrent": "2"},
            },
            "tasks": ["shades"],
            "evaluation": {"seed": 7},
        },
    }
    path = tmp_path / "evalrun.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_runner_waits_for_a_late_server_and_evaluates_the_model_it_serves(
    tmp_path: Path,
) -> None:
    tasks = tmp_path / "tasks"
    colortask.write(tasks, "shades", samples=8)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    runner = Runner(
        tmp_path,
        _config(tmp_path),
        tasks,
        hold=60,
        extra_env={
            "LMMS_MODEL_URL": url,
            "LMMS_MODEL_WAIT_SECONDS": "120",
            # No key: a server that needs none (an engine sidecar) still gets requests.
            "OPENAI_API_KEY": "",
        },
    )
    server: ModelServer | None = None
    try:
        loading: list[dict[str, object]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(loading) < 3:
            try:
                code, progress = runner.get("/progress")
            except OSError:
                time.sleep(0.2)
                continue
            assert code == 200 and runner.proc.poll() is None, runner.output()[-2000:]
            if progress["phase"] == "loading" and progress.get("reason") == "ModelLoading":
                loading.append(progress)
            time.sleep(0.5)
        # Nothing listens yet: the runner says what it waits for, and has not started lmms-eval.
        assert len(loading) == 3, runner.output()[-2000:]
        assert url in str(loading[-1]["message"])
        assert "running:" not in runner.output()

        server = ModelServer(delay=0.05, port=port)
        phase = ""
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and phase != "done":
            assert runner.proc.poll() is None, runner.output()[-3000:]
            phase = runner.get("/progress")[1]["phase"]
            time.sleep(0.5)
        assert phase == "done", runner.output()[-3000:]
        code, results = runner.get("/results", token=RUNNER_TOKEN)
        assert code == 200
        prov = results["provenance"]
        assert prov["servedModel"] == "local"
        assert prov["endpoint"] == url
        assert prov["pretrained"] == "Qwen/Qwen2-VL-72B-Instruct"
        argv = " ".join(prov["argv"])
        assert f"base_url={url}" in argv and "model_version=local" in argv
        assert "pretrained=" not in argv
        (metric,) = [m for m in results["tasks"][0]["metrics"] if m["name"] == "exact_match"]
        assert metric["value"] == 1.0  # the fixture knows every answer
        assert API_KEY not in runner.output() + json.dumps(results)
    finally:
        runner.kill()
        if server is not None:
            server.stop()


def test_a_server_that_never_comes_up_fails_the_run_as_model_not_ready(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    colortask.write(tasks, "shades", samples=8)
    url = f"http://127.0.0.1:{_free_port()}/v1"
    runner = Runner(
        tmp_path,
        _config(tmp_path),
        tasks,
        extra_env={"LMMS_MODEL_URL": url, "LMMS_MODEL_WAIT_SECONDS": "3"},
    )
    assert runner.wait(60) == 3, runner.output()[-2000:]
    term = json.loads(runner.term.read_text())
    assert term["reason"] == "ModelNotReady"
    assert url in term["message"] and "not ready after 3 s" in term["message"]
