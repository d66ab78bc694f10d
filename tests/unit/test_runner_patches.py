"""The runner's patches to lmms-eval: named modules, each for the lmms-eval versions it was
written for, applied only to those versions (the version guard); any other lmms-eval runs
plain, and the runner says so in its log and on ``/progress``."""

from __future__ import annotations

import json
import pkgutil
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import grimp
import pytest

from lmms_operator.api.runner import RunnerProgress
from lmms_runner import lmms_eval_main, patches, provenance, startup, versionguard
from lmms_runner.config import from_document
from lmms_runner.evaluation import Runner
from lmms_runner.main import parse_args

UNKNOWN = "9.9.9"


def test_every_patch_module_names_the_lmms_eval_versions_it_was_written_for() -> None:
    found = {m.name for m in pkgutil.iter_modules(patches.__path__)}
    assert found == {m.__name__.rpartition(".")[2] for m in patches.PATCHES}
    for module in patches.PATCHES:
        versions = module.LMMS_EVAL_VERSIONS
        assert isinstance(versions, frozenset) and versions, module.__name__
        assert all(isinstance(v, str) for v in versions), module.__name__
        assert (module.__doc__ or "").strip(), module.__name__
    # The runner patches only what every patch was written for.
    common = frozenset.intersection(*(m.LMMS_EVAL_VERSIONS for m in patches.PATCHES))
    assert common == patches.LMMS_EVAL_VERSIONS
    assert "0.7.3" in patches.LMMS_EVAL_VERSIONS  # the one pyproject pins


def test_the_version_guard_reads_lmms_evals_metadata_without_importing_it() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys\n"
            "from lmms_runner import versionguard\n"
            "found = versionguard.installed_version()\n"
            "print(json.dumps([found, versionguard.refusal(found), 'lmms_eval' in sys.modules]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found, refusal, imported = json.loads(out.stdout)
    assert found == "0.7.3" and refusal is None and not imported
    assert versionguard.refusal(UNKNOWN) and UNKNOWN in (versionguard.refusal(UNKNOWN) or "")
    assert "unknown" in (versionguard.refusal(None) or "")


@pytest.fixture()
def entry(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``lmms_eval_main.main`` with both of its ways out recorded instead of run."""
    calls: dict[str, Any] = {}
    monkeypatch.setattr(sys, "argv", ["lmms_eval_main", "--model", "openai", "--tasks", "x"])
    monkeypatch.setattr(startup, "run", lambda argv: calls.setdefault("patched", list(argv)))
    monkeypatch.setattr(
        runpy,
        "run_module",
        lambda name, **kwargs: calls.setdefault("plain", (name, kwargs)),
    )
    return calls


def test_an_unknown_lmms_eval_runs_plain_and_says_why(
    entry: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(versionguard, "installed_version", lambda: UNKNOWN)
    lmms_eval_main.main()
    # python -m lmms_eval, with this process's arguments, and no patch applied
    assert entry == {"plain": ("lmms_eval", {"run_name": "__main__", "alter_sys": True})}
    said = capsys.readouterr().err
    assert said.startswith("lmms-runner: lmms-eval 9.9.9 ") and "runs plain" in said, said


def test_the_lmms_eval_the_patches_were_written_for_runs_patched(
    entry: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    lmms_eval_main.main()  # the installed one: 0.7.3
    assert entry == {"patched": ["lmms_eval_main", "--model", "openai", "--tasks", "x"]}
    assert capsys.readouterr().err == ""


def _runner(tmp_path: Path) -> Runner:
    cfg = from_document(
        {
            "kind": "EvalRun",
            "metadata": {"name": "r"},
            "spec": {"model": {"type": "openai"}, "tasks": ["colors"]},
        }
    )
    args = parse_args(["--config", "unused", "--output", str(tmp_path / "out")], {})
    return Runner(cfg, args, {})


def test_the_runner_reports_which_lmms_eval_runs_and_whether_patched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress = _runner(tmp_path).tracker.snapshot().model_dump(by_alias=True, mode="json")
    assert progress["harness"] == {"lmmsEvalVersion": "0.7.3", "patched": True, "message": None}
    monkeypatch.setattr(versionguard, "installed_version", lambda: UNKNOWN)
    progress = _runner(tmp_path).tracker.snapshot().model_dump(by_alias=True, mode="json")
    harness = progress["harness"]
    assert harness["lmmsEvalVersion"] == UNKNOWN and harness["patched"] is False
    assert harness["message"] == versionguard.refusal(UNKNOWN)
    assert provenance.harness() == RunnerProgress.model_validate(progress).harness
    # A runner that predates the field still answers in a valid shape.
    old = {k: v for k, v in progress.items() if k != "harness"}
    assert RunnerProgress.model_validate(old).harness is None


PLAIN = """
import dataclasses, json, sys
from lmms_runner import lmms_eval_main, versionguard

versionguard.installed_version = lambda: "9.9.9"
finders = list(sys.meta_path)
sys.argv = ["lmms_eval_main", "version"]
try:
    lmms_eval_main.main()
    code = None
except SystemExit as e:
    code = e.code
print(json.dumps({
    "code": code,
    "finders": sys.meta_path == finders,
    "code cache": "exec" in vars(dataclasses),
    "stand-ins": [n for n in ("torch", "evaluate") if n in sys.modules],
}))
"""


def test_plain_lmms_eval_is_its_own_command_line_with_nothing_patched() -> None:
    """With an lmms-eval the patches do not know, lmms-eval's own ``__main__`` (its
    subcommand dispatcher) runs with the arguments given, and nothing is changed: no
    import hook, no code cache, no stand-in module."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PLAIN)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "lmms-eval 9.9.9 is not a version" in out.stderr
    assert "0.7.3" in out.stdout  # lmms-eval's own `version` subcommand answered
    assert json.loads(out.stdout.splitlines()[-1]) == {
        "code": 0,
        "finders": True,
        "code cache": False,
        "stand-ins": [],
    }


def test_the_patches_and_the_code_cache_import_no_cycle() -> None:
    graph = grimp.build_graph("lmms_runner", cache_dir=None)
    runner = {m for m in graph.modules if m.startswith("lmms_runner")}
    for module in runner:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported in runner and imported != module:
                assert not graph.chain_exists(imported, module), (module, imported)
    # The patches know nothing of what applies them or decides whether they apply.
    for module in runner:
        if module.startswith("lmms_runner.patches."):
            for above in ("lmms_runner.startup", "lmms_runner.lmms_eval_main"):
                assert not graph.chain_exists(module, above), (module, above)
