"""The inference engines' images (spec.model.engine): apart from the runner image, each
from its own lock, built only when asked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lmms_operator.api import EvalRunSpec
from lmms_operator.reconcile import inference

REPO = Path(__file__).resolve().parents[2]
ENGINES = REPO / "runner-image" / "engines"


@pytest.mark.parametrize("engine", inference.ENGINES)
def test_each_engine_image_installs_its_own_lock_and_runs_as_the_pods_user(engine: str) -> None:
    dockerfile = (ENGINES / engine / "Dockerfile").read_text()
    lock = (ENGINES / engine / "requirements.txt").read_text()
    assert f"COPY runner-image/engines/{engine}/requirements.txt" in dockerfile
    assert "--require-hashes --no-deps" in dockerfile
    assert "USER 1000:1000" in dockerfile  # LMMS_RUNNER_UID, the pod's securityContext
    assert "requirements/runner" not in dockerfile  # not the runner's lock
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+) \\$", lock, re.MULTILINE)
    assert dict(pins)[engine]  # the engine itself, pinned
    blocks = re.split(r"^(?=[A-Za-z0-9_.\-]+==)", lock, flags=re.MULTILINE)
    assert all("--hash=sha256:" in b for b in blocks if "==" in b)
    # The operator's command for it runs what the lock installs.
    spec_cmd = {"vllm": "vllm serve", "sglang": "sglang.launch_server"}[engine]
    assert spec_cmd in " ".join(inference.command(_spec(engine)))


def _spec(engine: str) -> EvalRunSpec:
    return EvalRunSpec.model_validate(
        {"model": {"type": "openai", "engine": engine, "pretrained": "org/m"}, "tasks": ["mme"]}
    )


def test_make_images_builds_the_engines_only_when_asked() -> None:
    script = (REPO / "tests/infra/lmms_devcluster/images.sh").read_text()
    assert re.search(r"^  all\) operator && runner ;;$", script, re.MULTILINE)
    for engine in inference.ENGINES:
        assert f"engine-{engine}) engine {engine} ;;" in script
    makefile = (REPO / "Makefile").read_text()
    assert "ENGINES ?=\n" in makefile
    assert "images.sh engine-$$engine" in makefile
