"""The catalogue's reading of lmms-eval's source, and its bounded "did you mean"."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lmms_operator import catalogue


def _package(root: Path, modules: dict[str, str]) -> catalogue._Source:
    for name, source in modules.items():
        path = root.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return catalogue._Source(root)


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


def test_the_committed_catalogue_matches_the_installed_lmms_eval() -> None:
    from lmms_eval import models

    src = catalogue._Source(Path(models.__file__).parents[2])
    backends = catalogue._backends(models)
    cat = catalogue.load()
    assert cat.models == frozenset(backends)
    assert cat.remote_code_models == frozenset(n for n, p in backends.items() if src.runs_code(p))
    assert all(cat.model_args[n] == src.keywords(p[0]) for n, p in backends.items())


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
