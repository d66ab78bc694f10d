"""The catalogue's reading of lmms-eval's source, and its bounded "did you mean"."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lmms_operator import catalogue
from lmms_operator.catalogue.source import Source


def _package(root: Path, modules: dict[str, str]) -> Source:
    for name, source in modules.items():
        path = root.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return Source(root)


BASE = {
    "lmms_eval.api.model": """
        class lmms:
            def __init__(self, hidden=1): ...
    """,
    "lmms_eval.models.model_utils.loader": """
        def load(path):
            return AutoModel.from_pretrained(path, trust_remote_code=True)
    """,
    "lmms_eval.models.simple.parent": """
        from lmms_eval.api.model import lmms

        class Parent(lmms):
            def __init__(self, pretrained: str, trust_remote_code: bool = True, *, device="cuda", **kwargs):
                super().__init__()
    """,
    "lmms_eval.models.simple.child": """
        from .parent import Parent

        class Child(Parent):
            def __init__(self, max_pixels=1, *args, **kwargs):
                super().__init__(*args, **kwargs)
    """,
    "lmms_eval.models.simple.heir": """
        from lmms_eval.models.simple import child

        class Heir(child.Child):
            pass
    """,
    "lmms_eval.models.chat.tools": """
        from lmms_eval.api.model import lmms

        class Tools(lmms):
            def __init__(self, model_version="m"):
                eval("1 + 1")

            def act(self, answer):
                return eval(answer)
    """,
    "lmms_eval.models.chat.helped": """
        from lmms_eval.api.model import lmms
        from lmms_eval.models.model_utils.loader import load

        class Helped(lmms):
            def __init__(self, pretrained): ...
    """,
    "lmms_eval.models.chat.plain": """
        from lmms_eval.api.model import lmms

        class Plain(lmms):
            def __init__(self, pretrained, trust_remote_code=False, /, revision="main"):
                self.kwargs = {"trust_remote_code": False}
    """,
    "lmms_eval.models.chat.stored": """
        from lmms_eval.api.model import lmms

        class Stored(lmms):
            def __init__(self, pretrained):
                kwargs = {}
                kwargs["trust_remote_code"] = True
    """,
}


def test_keywords_come_from_the_whole_class_hierarchy(tmp_path: Path) -> None:
    src = _package(tmp_path, BASE)
    parent = {"pretrained", "trust_remote_code", "device"}
    assert src.keywords("lmms_eval.models.simple.parent.Parent") == parent
    assert src.keywords("lmms_eval.models.simple.child.Child") == parent | {"max_pixels"}
    assert src.keywords("lmms_eval.models.simple.heir.Heir") == parent | {"max_pixels"}
    # Stops at lmms (its own parameters are not model args); positional-only ones are
    # not keywords.
    assert src.keywords("lmms_eval.models.chat.plain.Plain") == {"revision"}


@pytest.mark.parametrize(
    ("path", "runs"),
    [
        ("lmms_eval.models.simple.parent.Parent", True),  # a default of True
        ("lmms_eval.models.simple.heir.Heir", True),  # inherited from a grandparent
        ("lmms_eval.models.chat.tools.Tools", True),  # eval of the model's answer
        ("lmms_eval.models.chat.helped.Helped", True),  # in a helper module it imports
        ("lmms_eval.models.chat.stored.Stored", True),  # stored by key
        ("lmms_eval.models.chat.plain.Plain", False),
    ],
)
def test_remote_code_is_found_in_the_code_a_backend_runs(
    tmp_path: Path, path: str, runs: bool
) -> None:
    assert _package(tmp_path, BASE).runs_code([path]) is runs


IMPORTS = {
    "lmms_eval.api.model": BASE["lmms_eval.api.model"],
    "lmms_eval.models.simple.rooted": """
        import sys
        from lmms_eval.api.model import lmms

        class Rooted(lmms):
            def __init__(self, root="/opt/x"):
                sys.path.insert(0, root)  # a path the run's args name
    """,
    "lmms_eval.models.simple.stored_root": """
        import sys
        from lmms_eval.api.model import lmms

        class StoredRoot(lmms):
            def __init__(self, root):
                self.root = root
                if self.root not in sys.path:
                    sys.path.append(self.root)
    """,
    "lmms_eval.models.simple.named": """
        import importlib
        from lmms_eval.api.model import lmms

        class Named(lmms):
            def __init__(self, backend):
                self.impl = importlib.import_module(f"plugins.{backend}")
    """,
    "lmms_eval.models.simple.site_dir": """
        import site
        from lmms_eval.api.model import lmms

        class SiteDir(lmms):
            def __init__(self, extra):
                site.addsitedir(extra)
    """,
    "lmms_eval.models.simple.by_file": """
        import runpy
        from lmms_eval.api.model import lmms

        class ByFile(lmms):
            def __init__(self, script):
                runpy.run_path(script)
    """,
    "lmms_eval.models.simple.packaged": """
        import importlib
        import os
        import sys
        from pathlib import Path
        from lmms_eval.api.model import lmms

        wd = Path(__file__).parent.parent.resolve()
        vendored = os.path.join(str(wd), "Vendored")
        sys.path.append(vendored)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        sys.path += [str(wd / "more")]

        class Packaged(lmms):
            def __init__(self, pretrained):
                self.mod = importlib.import_module("json")
                self.other = __import__("os.path", fromlist=["join"])
    """,
    "lmms_eval.models.simple.rebound": """
        import sys
        from lmms_eval.api.model import lmms

        extra = "/opt/fixed"

        class Rebound(lmms):
            def __init__(self, paths):
                for extra in paths:  # the same name, bound by a loop: not fixed
                    sys.path.append(extra)
    """,
}


@pytest.mark.parametrize(
    ("path", "runs"),
    [
        ("lmms_eval.models.simple.rooted.Rooted", True),
        ("lmms_eval.models.simple.stored_root.StoredRoot", True),
        ("lmms_eval.models.simple.named.Named", True),
        ("lmms_eval.models.simple.site_dir.SiteDir", True),
        ("lmms_eval.models.simple.by_file.ByFile", True),
        ("lmms_eval.models.simple.rebound.Rebound", True),
        # Paths built from __file__ and literals, and literal module names: the
        # image's own code, whatever the run says.
        ("lmms_eval.models.simple.packaged.Packaged", False),
    ],
)
def test_backends_that_import_from_a_path_they_are_given_run_code(
    tmp_path: Path, path: str, runs: bool
) -> None:
    assert _package(tmp_path, IMPORTS).runs_code([path]) is runs


def _task_tree(root: Path) -> Source:
    """lmms_eval/tasks with: a plain task, one whose subdirectory execs the answer, one
    whose ``!function`` names a module elsewhere that imports an eval, one whose
    included template's directory evals, groups and a tag over them."""
    files = {
        "plain/plain.yaml": "task: plain\ntag: [mixed, clean]\nprocess_results: !function utils.score\n",
        "plain/utils.py": "def score(doc, results):\n    return {'acc': eval('1')}\n",
        "judged/judged.yaml": "task: judged\ntag: mixed\n",
        "judged/metrics/judge.py": "def run(answer):\n    exec(answer)\n",
        "shared/lib.py": "from lmms_eval.tasks.shared.deep import parse\n",
        "shared/deep.py": "def parse(answer):\n    return eval(answer.strip())\n",
        "borrowed/borrowed.yaml": "task: borrowed\nprocess_results: !function lmms_eval.tasks.shared.lib.parse\n",
        "templated/t/_tmpl.yaml": "output_type: generate_until\n",
        "templated/t/utils.py": "import math\nx = eval(input())\n",
        "templated/task/templated.yaml": "include: ../t/_tmpl.yaml\ntask: templated\n",
        "groups/dirty.yaml": "group: dirty\ntask:\n  - plain\n  - task: borrowed\n",
        "groups/tidy.yaml": "group: tidy\ntask:\n  - plain\n  - clean\n",
        "groups/outer.yaml": "group: outer\ntask:\n  - tidy\n  - group: inner\n    task: [judged]\n",
    }
    for name, text in files.items():
        path = root / "lmms_eval" / "tasks" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Source(root)


def test_tasks_that_run_the_models_output_are_flagged_with_their_groups_and_tags(
    tmp_path: Path,
) -> None:
    from lmms_eval.tasks import TaskManager

    from lmms_operator.catalogue.tasks import TaskScan

    source = _task_tree(tmp_path)
    tasks = tmp_path / "lmms_eval" / "tasks"
    tm = TaskManager(verbosity="ERROR", include_path=str(tasks), include_defaults=False)
    assert set(tm.task_index) >= {"plain", "judged", "mixed", "clean", "dirty", "tidy", "outer"}
    flagged = TaskScan(source, tm.task_index).flagged()
    # judged: its directory tree; borrowed: a !function module's import; templated:
    # its include's directory; dirty and outer: a task they list (outer inline);
    # mixed: a tagged task. plain's eval is of a literal; tidy and clean hold only it.
    assert flagged == {"judged", "borrowed", "templated", "dirty", "outer", "mixed"}


def test_the_committed_catalogue_flags_the_tasks_that_eval_answers() -> None:
    cat = catalogue.load()
    assert {"auxsolidmath_easy", "auxsolidmath", "megabench_core", "mathvision_test"} <= (
        cat.remote_code_tasks
    )
    assert "magi1_wm" in cat.remote_code_models
    assert cat.remote_code_tasks <= cat.task_names


def test_the_committed_catalogue_matches_the_installed_lmms_eval() -> None:
    from lmms_eval import models

    src = Source(Path(models.__file__).parents[2])
    backends = catalogue._backends(models)
    cat = catalogue.load()
    assert cat.models == frozenset(backends)
    assert cat.remote_code_models == frozenset(n for n, p in backends.items() if src.runs_code(p))
    assert all(cat.model_args[n] == src.keywords(p[0]) for n, p in backends.items())
    generated = catalogue.generate()["remoteCodeTasks"]
    assert isinstance(generated, list) and cat.remote_code_tasks == frozenset(generated)


def test_suggestions_find_typos() -> None:
    cat = catalogue.load()
    assert cat.suggest_task("textvqa_vall") == "textvqa_val"
    assert cat.suggest_model("qwen2vl") == "qwen2_vl"
    assert catalogue.closest("zzzzzzzz", cat.task_names) is None


def test_suggestions_are_bounded_whatever_the_names() -> None:
    assert catalogue.closest("a" * (catalogue.MAX_SUGGEST_LEN + 1), {"a" * 65}) is None
    # Among 5,000 near-identical options (only the best 256 by shared prefix get
    # compared: tests/bench/hostile_specs.py measures the cost), the typo is found.
    options = {f"mmbench_{i:05d}_" + "textvqa_val_" * 4 for i in range(5000)}
    hint = catalogue.closest("mmbench_00042_" + "textvqa_val_" * 3 + "textvqa_vall", options)
    assert hint == "mmbench_00042_" + "textvqa_val_" * 4
