"""The image build script and the Dockerfiles agree (the build itself runs with
`make images`; docs/benchmarks.md has its figures)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "infra" / "lmms_devcluster" / "images.sh"
DOCKERFILE = (REPO / "operator" / "Dockerfile").read_text()


def test_the_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_operator_dockerfile_takes_its_base_as_an_argument() -> None:
    # The public default for users; make images passes a base made from Debian packages.
    assert re.search(r"^ARG PYTHON_BASE=python:3\.11-slim$", DOCKERFILE, re.M)
    assert len(re.findall(r"^FROM \$\{PYTHON_BASE\}", DOCKERFILE, re.M)) == 2
    assert "--build-arg PYTHON_BASE=" in SCRIPT.read_text()
    # Installed from the lock with hashes, the project without resolving again.
    assert "--require-hashes -r /src/requirements/operator.txt" in DOCKERFILE
    assert "pip install --no-deps /src" in DOCKERFILE
