"""`pip install .[runner]` in a clean virtualenv gives a working `lmms-runner`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_a_clean_install_gives_a_working_runner_command(tmp_path: Path) -> None:
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    # uv installs like pip, from its cache when it can (the wheels are the same).
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(python), f"{REPO}[runner]"],
        check=True,
        timeout=1200,
    )
    runner = venv / "bin" / "lmms-runner"
    help_text = subprocess.run([str(runner), "--help"], capture_output=True, text=True, check=True)
    assert "--config" in help_text.stdout and "--listen" in help_text.stdout
    check = subprocess.run(
        [
            str(python),
            "-c",
            "import filelock, lmms_eval, lmms_runner, importlib.metadata as m;"
            "print(m.version('lmms-eval'), filelock.__version__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lmms_version, filelock_version = check.stdout.split()
    assert lmms_version == "0.7.3" and int(filelock_version.split(".")[0]) < 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "spec": {
                    "model": {"type": "dummy"},
                    "tasks": ["mme"],
                    "evaluation": {"batchSize": -1},
                }
            }
        )
    )
    term = tmp_path / "term"
    rc = subprocess.run(
        [str(runner), "--config", str(bad), "--termination-log", str(term)],
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 2, rc.stderr
    assert "spec.evaluation.batchSize" in term.read_text()
