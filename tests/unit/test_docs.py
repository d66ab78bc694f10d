"""The docs say one thing: what the README, the chart and the Dockerfiles state agrees
with the code that decides it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmms_operator import __main__ as cli_main
from lmms_operator.reconcile.validate import DEFAULT_FEATURES, FEATURES

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
VALUES = yaml.safe_load((REPO / "helm" / "lmms-operator" / "values.yaml").read_text())
#: Every page that may tell how to install or upgrade: the README, docs/, the chart's.
PAGES = ["README.md", "docs/**/*.md", "helm/**/*.md", "helm/**/NOTES.txt"]
DOCS = {p.relative_to(REPO): p.read_text() for pattern in PAGES for p in REPO.glob(pattern)}


def _run_defaults(monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """`lmms-operator run`'s parsed defaults (the operator itself is not started)."""
    seen: list[argparse.Namespace] = []

    def record(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(cli_main, "_run", record)
    assert cli_main.main(["run"]) == 0
    return seen[0]


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1].split("/")[0])


def test_one_metrics_port_and_one_health_port(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _run_defaults(monkeypatch)
    metrics, health = _port(args.metrics_address), _port(args.liveness)
    # The chart: the container's ports and the metrics Service.
    assert VALUES["metricsPort"] == VALUES["service"]["port"] == metrics
    assert VALUES["healthPort"] == health
    # The operator image.
    expose = re.search(r"^EXPOSE (.+)$", (REPO / "operator/Dockerfile").read_text(), re.M)
    assert expose is not None and set(expose.group(1).split()) == {str(metrics), str(health)}
    # The README.
    said = re.search(r"`--metrics-address` \(default\s+`0\.0\.0\.0:(\d+)`", README)
    assert said is not None and int(said.group(1)) == metrics
    assert f":{health}/healthz" in README


def test_the_readme_says_what_unset_allowed_features_means() -> None:
    assert frozenset(FEATURES) - {"remoteCode"} == DEFAULT_FEATURES
    said = re.search(r"`LMMS_ALLOWED_FEATURES` \(([^)]*)\)", README)
    assert said is not None
    listed = set(re.findall(r"`(\w+)`", said.group(1)))
    assert listed == set(FEATURES)
    assert "unset: all but `remoteCode`" in said.group(1)
    assert "null allows all but remoteCode" in " ".join(
        (REPO / "helm/lmms-operator/values.yaml").read_text().split()
    )


def test_upgrades_never_reuse_old_values() -> None:
    # --reuse-values keeps the old chart's defaults too, so a new default never applies.
    for path, text in DOCS.items():
        for command in re.findall(r"helm upgrade[^\n]*(?:\\\n[^\n]*)*", text):
            assert "--reuse-values" not in command, (path, command)
    upgrades = [c for t in DOCS.values() for c in re.findall(r"helm upgrade[^`\n]*", t)]
    assert any("--reset-then-reuse-values" in c for c in upgrades)


def test_the_readme_starts_with_the_two_commands() -> None:
    first = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first is not None
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines()]
    assert commands == ["make demo", "make test"]


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_install_section_leads_with_what_a_cluster_user_needs() -> None:
    install = _section("Installing on a cluster")
    first = re.search(r"```sh\n(.*?)```", install, re.S)
    assert first is not None
    steps = first.group(1)
    for needed in (
        "helm install",
        "kubectl get crd",
        r"kubectl apply .*-f examples/",
        "kubectl get er",
    ):
        assert re.search(needed, steps), needed
    # The build details live with the development docs.
    assert "mmdebstrap" not in install and "docs/development.md" in install
    assert "mmdebstrap" in (REPO / "docs/development.md").read_text()


def _driver_requirement() -> dict[str, Any]:
    from lmms_runner import gpucheck

    lock = (REPO / "requirements" / "runner.txt").read_text()
    torch = re.search(r"^torch==(\S+)", lock, re.M)
    cuda = re.search(r"^nvidia-cuda-runtime==(\d+)\.(\d+)", lock, re.M)
    assert torch and cuda
    major = int(cuda.group(1))
    return {"torch": torch.group(1), "cuda": major, "driver": gpucheck.MIN_DRIVER[major]}


def test_the_runner_images_driver_requirement_is_stated() -> None:
    need = _driver_requirement()
    text = f"NVIDIA driver {need['driver']} or newer"
    for path in (Path("README.md"), Path("docs/operations.md")):
        assert text in DOCS[path], (path, text)
        assert f"CUDA {need['cuda']}" in DOCS[path]
