"""`kubectl lmms` as a kubectl plugin, and `kubectl get` / `kubectl wait` on EvalRuns,
against the real API server, the real operator and the real kubectl: runs that the
scripted runner ends (a success with a score, another model's lower score, a failure)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from lmms_devcluster import devcluster
from lmms_operator.api import GROUP, VERSION
from tests import evalruns as er
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator_process")]

REPO = Path(__file__).resolve().parents[2]


def scored(pretrained: str, value: float, **args: str) -> dict[str, Any]:
    """A model the scripted runner evaluates: its termination message scores mme."""
    doc = {"v": 1, "ok": True, "truncated": False, "tasks": {"mme": {"acc,none": value}}}
    b64 = base64.b64encode(json.dumps(doc).encode()).decode().rstrip("=")
    return {
        "type": "dummy",
        "pretrained": pretrained,
        "args": {"scripted_sleep": "1", "scripted_message_b64": b64, **args},
    }


@pytest.fixture()
def plugin_path(tmp_path: Path) -> str:
    """A PATH on which kubectl finds the plugin: the ``kubectl-lmms`` the package
    installs (beside this Python), else the same entry point written as pip writes it
    (an environment installed before the plugin existed); and the devcluster's kubectl."""
    installed = Path(sys.executable).parent / "kubectl-lmms"
    if not installed.exists():
        target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"][
            "kubectl-lmms"
        ]
        module, func = target.split(":")
        installed = tmp_path / "bin" / "kubectl-lmms"
        installed.parent.mkdir()
        installed.write_text(
            f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n"
        )
        installed.chmod(0o755)
    kubectl = Path(devcluster.find_binaries()["kubectl"]).parent
    return os.pathsep.join([str(installed.parent), str(kubectl), os.environ.get("PATH", "")])


def kubectl(
    cluster: devcluster.DevCluster, path: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """The real kubectl (``kubectl lmms ...`` runs the plugin), with the devcluster's
    kubeconfig in $KUBECONFIG, as a user has it."""
    env = {**os.environ, "PATH": path, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env, timeout=120)


def columns(text: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """kubectl's table, by row name and column (cells cut at the headers' offsets: a
    column may be empty)."""
    head, *lines = text.splitlines()
    names = head.split()
    starts = [head.index(f"{n} " if i < len(names) - 1 else n) for i, n in enumerate(names)]
    ends = [*starts[1:], None]
    rows = {}
    for line in lines:
        cells = [line[a:b].strip() for a, b in zip(starts, ends, strict=True)]
        rows[cells[0]] = dict(zip(names, cells, strict=True))
    return names, rows


def test_kubectl_lmms_and_kubectl_get_and_wait(
    cluster: devcluster.DevCluster,
    api: client.ApiClient,
    namespace: str,
    plugin_path: str,
) -> None:
    ns = ["-n", namespace]
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "leaderboards",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Leaderboard",
            "metadata": {"name": "board"},
            "spec": {},
        },
    )
    for name, model in (
        ("base", scored("acme/vlm-7b", 0.8)),
        ("cand", scored("acme/vlm-7b-distilled", 0.5)),
        ("broken", scored("acme/vlm-broken", 0, scripted_exit="3")),
    ):
        er.create(api, namespace, er.manifest(name, er.EXECUTOR, model=model, leaderboard="board"))

    # `kubectl lmms wait`: the exit code says how the runs ended.
    done = kubectl(cluster, plugin_path, "lmms", "wait", "base", "cand", *ns, "--timeout", "2m")
    assert done.returncode == 0, done.stderr
    assert f"EvalRun {namespace}/base: Succeeded" in done.stderr
    failed = kubectl(
        cluster, plugin_path, "lmms", "wait", "broken", *ns, "--timeout=2m", "-o", "json"
    )
    assert failed.returncode == 4, failed.stderr
    (record,) = json.loads(failed.stdout)
    assert (record["phase"], record["reason"]) == ("Failed", "RunnerError")

    # `kubectl wait` for either outcome: the Complete/Failed pair, or a jsonpath.
    for args in (
        ("--for=condition=Complete", "evalrun/base"),
        ("--for=condition=Failed", "evalrun/broken"),
        ("--for=jsonpath={.status.phase}=Succeeded", "evalrun/cand"),
        ("--for=jsonpath={.status.completionTime}", "evalrun/broken"),
    ):
        waited = kubectl(cluster, plugin_path, "wait", *args, *ns, "--timeout=20s")
        assert waited.returncode == 0, (args, waited.stderr)
    never = kubectl(
        cluster, plugin_path, "wait", "--for=condition=Failed", "evalrun/base", *ns, "--timeout=2s"
    )
    assert never.returncode != 0

    # `kubectl get evalruns`: the identity, the tasks, the score and the duration.
    head, rows = columns(kubectl(cluster, plugin_path, "get", "evalruns", *ns).stdout)
    assert head == ["NAME", "MODEL", "TASKS", "PHASE", "PROGRESS", "SCORE", "DURATION", "AGE"]
    assert rows["base"]["MODEL"] == "acme/vlm-7b"  # not the backend, dummy
    assert (rows["base"]["TASKS"], rows["base"]["SCORE"]) == ("mme", "mme=0.8")
    assert re.fullmatch(r"\d+s", rows["base"]["DURATION"]), rows["base"]
    assert rows["broken"]["PHASE"] == "Failed" and re.fullmatch(r"\d+s", rows["broken"]["DURATION"])
    wide = kubectl(cluster, plugin_path, "get", "er", *ns, "-o", "wide").stdout
    assert "BACKEND" in wide and "dummy" in wide

    # `kubectl lmms runs -A -o json`.
    listed = kubectl(cluster, plugin_path, "lmms", "runs", "-A", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    mine = {r["name"]: r for r in json.loads(listed.stdout) if r["namespace"] == namespace}
    assert set(mine) == {"base", "cand", "broken"}
    assert mine["base"]["model"] == "acme/vlm-7b" and mine["base"]["score"] == "mme=0.8"
    assert mine["base"]["tasks"] == ["mme"] and mine["base"]["durationSeconds"] >= 1

    # `kubectl lmms leaderboard show`: the entries the operator published, as stored.
    def published() -> list[dict[str, Any]] | None:
        shown = kubectl(
            cluster, plugin_path, "lmms", "leaderboard", "show", "board", *ns, "-o", "json"
        )
        entries = json.loads(shown.stdout) if shown.returncode == 0 else []
        return entries if len(entries) == 2 else None

    entries = wait_for(published, timeout=30)
    assert [(e["model"], e["rank"], e["value"]) for e in entries] == [
        ("acme/vlm-7b", 1, 0.8),
        ("acme/vlm-7b-distilled", 2, 0.5),
    ]

    # `kubectl lmms compare`: results without standard errors claim no significance, and
    # the default gate fails safe on a drop (exit 3); the opt-out passes it ...
    unknown = kubectl(cluster, plugin_path, "lmms", "compare", "base", "cand", *ns)
    assert unknown.returncode == 3, unknown.stdout + unknown.stderr
    assert "B worse, significance unknown" in unknown.stdout
    same = kubectl(
        cluster,
        plugin_path,
        "lmms",
        "compare",
        "base",
        "cand",
        "--fail-on",
        "significant-regression",
        *ns,
    )
    assert same.returncode == 0, same.stdout + same.stderr
    board = kubectl(
        cluster,
        plugin_path,
        "lmms",
        "compare",
        "-l",
        "board",
        "acme/vlm-7b",
        "acme/vlm-7b-distilled",
        "--fail-on=significant-regression",
        *ns,
    )
    assert board.returncode == 0, board.stderr
    # ... and with them (as the runner's /results carries them; the operator leaves a
    # finished run's status alone), the candidate's regression fails the gate.
    objects = client.CustomObjectsApi(api)
    for name in ("base", "cand"):
        run = er.get(api, namespace, name)
        results = [{**r, "stderr": 0.01} for r in run["status"]["results"]]
        objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "evalruns", name, {"status": {"results": results}}
        )
    gate = kubectl(cluster, plugin_path, "lmms", "compare", "base", "cand", *ns)
    assert gate.returncode == 3, gate.stdout + gate.stderr
    assert "a regression (--fail-on regression): mme acc,none" in gate.stdout
    assert " z " in gate.stdout and "unpaired: both runs' logged samples" in gate.stdout
    # With both runs' logged samples (as the operator keeps them for logSamples: status
    # .samples names ConfigMaps the run owns), the paired test over the shared documents:
    # base right on 8 of 10, cand on 5 and right wherever cand is, plus a document only
    # base scored. Differences 1,1,1,0,...: mean 0.3, t = 0.3/√(0.2333/10) = 1.964,
    # p = 0.0811 (scipy.stats.ttest_rel): a drop whose significance the z-test claimed
    # (p ≈ 0) is not significant paired over ten documents.
    core = client.CoreV1Api(api)
    for name, right in (("base", 8), ("cand", 5)):
        run = er.get(api, namespace, name)
        n = 11 if name == "base" else 10
        lines = [json.dumps({"id": i, "scores": {"acc": float(i < right)}}) for i in range(n)]
        cm = f"{name}-samples-0"
        core.create_namespaced_config_map(
            namespace,
            {
                "metadata": {
                    "name": cm,
                    "ownerReferences": [
                        {
                            "apiVersion": f"{GROUP}/{VERSION}",
                            "kind": "EvalRun",
                            "name": name,
                            "uid": run["metadata"]["uid"],
                        }
                    ],
                },
                "data": {"0.jsonl": "\n".join(lines), "index.json": '{"0.jsonl": "mme"}'},
            },
        )
        pointer = {"tasks": [{"task": "mme", "count": n, "kept": n, "configMaps": [cm]}]}
        objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "evalruns", name, {"status": {"samples": pointer}}
        )
    paired = kubectl(cluster, plugin_path, "lmms", "compare", "base", "cand", *ns, "-o", "json")
    assert paired.returncode == 0, paired.stdout + paired.stderr
    (row,) = json.loads(paired.stdout)
    assert (row["test"], row["paired"], row["significant"]) == ("paired-t", 10, False)
    assert row["diff"] == pytest.approx(0.3) and row["p"] == pytest.approx(0.081126, abs=1e-6)
    table = kubectl(cluster, plugin_path, "lmms", "compare", "base", "cand", *ns)
    assert "paired n=10" in table.stdout and "(10 paired)" in table.stdout

    # Errors: one line on stderr, exit 1.
    missing = kubectl(cluster, plugin_path, "lmms", "wait", "ghost", *ns)
    assert missing.returncode == 1
    assert missing.stderr == f"error: EvalRun {namespace}/ghost not found\n"
    flags = kubectl(cluster, plugin_path, "lmms", "--kubeconfig", "/nonexistent", "runs")
    assert flags.returncode == 1 and flags.stderr.startswith(
        "error: cannot use the kubeconfig /nonexistent"
    )
