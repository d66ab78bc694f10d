"""The GPU script's own parts (tests/gpu/), which run here only in CPU mode: a rendered
container's environment made local, the served-model checks, the skip of what a build
lacks, the one poll the engine stand-in answers, the wheel list."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lmms_operator.api import parse_spec
from lmms_operator.reconcile import job
from tests.gpu import chat_server, paths

ROOT = Path(__file__).resolve().parents[2]


def test_local_env_runs_the_rendered_runner_here(tmp_path: Path) -> None:
    doc = paths.manifest("tiny", {"type": "qwen2_vl", "pretrained": "/m"})
    desired = job.build(
        job.RunRef("tiny", "default", "uid-1"),
        parse_spec(doc["spec"]),
        job.RunnerDefaults(),
        token="secret-token",
    )
    container = desired.job["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "LMMS_MODEL_URL", "value": "http://127.0.0.1:8000/v1"})
    p = paths.Paths(tmp_path, "cpu", 10)
    env = p.local_env(container, tmp_path / "run")
    # The plain values as rendered, the contract's URL among them.
    assert env["LMMS_MODEL_URL"] == "http://127.0.0.1:8000/v1"
    # The pod's folders are moved here, and exist.
    for name in ("LMMS_OUTPUT_DIR", "HF_HOME", "HOME", "TMPDIR"):
        assert env[name] == str(tmp_path / "run" / name.lower())
        assert Path(env[name]).is_dir()
    assert env["LMMS_RUN_CONFIG"] == str(tmp_path / "run" / "config.json")
    assert env["LMMS_TASKS_DIR"] == str(tmp_path / "tasks")
    # No pod address: the runner neither listens nor holds its results for 600 s.
    assert "POD_IP" not in env
    assert env["LMMS_HOLD_TIMEOUT"] == "0"
    # Secret references never resolve to anything but a local token.
    assert env["LMMS_RUNNER_TOKEN"] == "local"
    assert "secret-token" not in json.dumps(env)


def test_check_served_args() -> None:
    def result(margs: str) -> dict[str, object]:
        return {"provenance": {"argv": ["python", "--model", "openai", "--model_args", margs]}}

    url = "http://127.0.0.1:8000/v1"
    paths.check_served_args(result(f"base_url={url},model_version=/m,num_concurrent=4"), url, "/m")
    for wrong in (f"base_url={url}", f"base_url={url},model_version=/m,pretrained=/m", ""):
        with pytest.raises(paths.Fail, match="expected base_url"):
            paths.check_served_args(result(wrong), url, "/m")


def test_require_skips_what_the_build_lacks_and_fails_on_other_refusals() -> None:
    doc = paths.manifest("tiny", {"type": "qwen2_vl", "noSuchField": "x"})
    with pytest.raises(paths.Skip, match=r"spec\.model\.noSuchField is not in this build"):
        paths.require(doc, "spec.model.noSuchField")
    with pytest.raises(paths.Fail, match=r"the spec is refused: spec\.model\.noSuchField"):
        paths.require(doc, "spec.model.engine")
    paths.require(paths.manifest("tiny", {"type": "qwen2_vl", "pretrained": "/m"}))


def test_answer_one_poll_answers_the_runner_503(tmp_path: Path) -> None:
    port = paths.free_port()
    client = (
        "import time, urllib.request, urllib.error\n"
        "for _ in range(100):\n"
        "    try:\n"
        f"        urllib.request.urlopen('http://127.0.0.1:{port}/v1/models', timeout=5)\n"
        "    except urllib.error.HTTPError as e:\n"
        "        print(e.code); break\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", client], stdout=subprocess.PIPE)
    waited = paths.answer_one_poll(port, proc, 20, tmp_path / "log")
    out, _ = proc.communicate(timeout=20)
    assert out.decode().strip() == "503"
    assert 0 <= waited < 20


def test_answer_one_poll_fails_when_the_runner_exits(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(paths.Fail, match="never asked for the model"):
        paths.answer_one_poll(paths.free_port(), proc, 5, tmp_path / "log")


def test_chat_server_reads_openai_messages() -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    body: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "What colour?"},
                ],
            },
        ]
    }
    messages, images = chat_server.messages_for(body)
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
    ]
    assert [i.size for i in images] == [(8, 8)]
    body["messages"][1]["content"][0]["image_url"]["url"] = "http://example.invalid/x.png"
    with pytest.raises(ValueError, match="data: image URLs"):
        chat_server.messages_for(body)


def test_wheel_list_pins_one_version_each_and_stays_out_of_git() -> None:
    lines = [
        line.split("#")[0].strip()
        for line in (ROOT / "tests/gpu/wheels.txt").read_text().splitlines()
    ]
    pins = [line for line in lines if line]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+", p) for p in pins), pins
    names = [re.sub(r"[-_.]+", "-", p.split("==")[0]).lower() for p in pins]
    assert len(names) == len(set(names))
    # lmms-eval, the qwen2_vl backend's needs, the openai backend, the stand-in server.
    for name in ("lmms-eval", "decord", "multiprocess", "pydantic", "openai", "fastapi", "uvicorn"):
        assert name in names
    # The wheels land in .gpu/wheels, which git ignores (the device tool carries it).
    assert "/.gpu/" in (ROOT / ".gitignore").read_text().splitlines()
