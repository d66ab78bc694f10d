"""The runner's faster start: the same task index and modules, loaded later or once."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import marshal
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmms_runner import cachefiles, deferred, importhooks
from lmms_runner.patches import (
    chunked_answers,
    codecache,
    prefetch,
    punctuation,
    taskindex,
    torch_unused,
    transformersindex,
)


def script_result(code: str, *args: str) -> dict[str, Any]:
    """What a script run in a fresh interpreter prints as JSON on its last line."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.splitlines()[-1]))


def test_a_deferred_module_loads_on_first_use_only() -> None:
    sys.modules.pop("colorsys", None)
    deferred.defer("colorsys")
    stand_in = sys.modules["colorsys"]
    assert isinstance(stand_in, deferred.Deferred)
    inspect.getmodule(test_a_deferred_module_loads_on_first_use_only)  # asks every __file__
    assert sys.modules["colorsys"] is stand_in  # still not imported
    assert stand_in.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert sys.modules["colorsys"] is not stand_in  # the real module now
    assert sys.modules["colorsys"].__name__ == "colorsys"


def test_a_module_whose_package_is_not_installed_is_left_alone() -> None:
    deferred.defer("no_such_package_here.bindings.driver")
    assert "no_such_package_here.bindings.driver" not in sys.modules
    assert "no_such_package_here" not in sys.modules


def test_lazy_optional_functions_call_the_real_one() -> None:
    call = deferred.lazy_function("colorsys", "hsv_to_rgb")
    assert call.__name__ == "hsv_to_rgb" and call(0.0, 0.0, 1.0) == (1.0, 1.0, 1.0)


def test_the_fingerprints_walk_the_tree_as_os_walk_does(tmp_path: Path) -> None:
    """The indexes built into the runner image stay valid: ``walk_sorted`` lists what
    ``os.walk`` (subdirectories sorted) lists, in the same order, with the same
    relative paths, so the fingerprints are the ones the image was built with."""
    top = tmp_path / "tree"
    for rel in [
        "b/z.yaml",
        "b/a.py",
        "a/c/d.yaml",
        "a/x.yaml",
        "B/q.py",
        "top.yaml",
        "__pycache__/m.py",
    ]:
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text(rel)
    (top / "a" / "link").symlink_to(top / "b", target_is_directory=True)  # listed, not entered
    (top / "a" / "file-link.yaml").symlink_to(top / "top.yaml")

    def reference(skip: frozenset[str]) -> list[tuple[str, list[str]]]:
        out = []
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in skip)
            rel_root = os.path.relpath(root, top)
            out.append(
                (rel_root, [os.path.relpath(os.path.join(root, f), top) for f in sorted(files)])
            )
        return out

    for skip in (frozenset(), frozenset({"__pycache__"})):
        walked = [(d, [rel for rel, _ in fs]) for d, fs in cachefiles.walk_sorted(str(top), skip)]
        assert walked == reference(skip)
        # os.walk lists a link to a directory among the directories, but does not enter it
        assert not any(d.startswith("a/link") for d, _ in walked)
    assert [d for d, _ in cachefiles.walk_sorted(str(top / "missing"))] == []


def test_the_index_file_is_used_only_while_the_yaml_files_are_unchanged(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    (tasks / "a").mkdir(parents=True)
    (tasks / "a" / "a.yaml").write_text("task: a\n")
    before = taskindex.fingerprint(str(tasks), "0.7.3")
    index = tmp_path / "index.json"
    taskindex.save(index, before, {"a": {"type": "task", "yaml_path": "x"}})
    assert taskindex.load(index, before) == {"a": {"type": "task", "yaml_path": "x"}}
    (tasks / "a" / "a.yaml").write_text("task: a2\n")  # edited
    assert taskindex.fingerprint(str(tasks), "0.7.3") != before
    (tasks / "a" / "b.yaml").write_text("task: b\n")  # added
    assert taskindex.load(index, taskindex.fingerprint(str(tasks), "0.7.3")) is None
    assert taskindex.fingerprint(str(tasks), "0.7.4") != taskindex.fingerprint(str(tasks), "0.7.3")
    (tmp_path / "file").write_text("")
    taskindex.save(tmp_path / "file" / "index.json", before, {})  # unwritable: left alone


SAME_INDEX = """
import json, sys
from pathlib import Path
from lmms_runner.patches import taskindex
from lmms_eval.tasks import TaskManager
plain = TaskManager("ERROR")._task_index
taskindex.install(Path(sys.argv[1]))
written = TaskManager("ERROR")._task_index  # indexes, writes the file
read = TaskManager("ERROR")._task_index  # from the file
print(json.dumps([plain, written, read], sort_keys=True))
"""


@pytest.mark.e2e
def test_the_cached_index_is_the_one_lmms_eval_builds(tmp_path: Path) -> None:
    path = tmp_path / "index.json"
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SAME_INDEX), str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    plain, written, read = json.loads(out.stdout)
    assert len(plain) > 1000 and written == plain and read == plain
    assert path.exists()


def test_the_transformers_index_is_used_only_while_the_model_files_are_unchanged(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    (models / "bert").mkdir(parents=True)
    (models / "bert" / "modeling_bert.py").write_text("__all__ = ['BertModel']\n")
    parser = tmp_path / "import_utils.py"
    parser.write_text("# the parser\n")
    structure = {frozenset({"torch"}): {"models.bert.modeling_bert": {"BertModel"}}}
    before = transformersindex.fingerprint(str(models), str(parser))
    index = tmp_path / "index.json"
    transformersindex.save(index, before, structure)
    assert transformersindex.load(index, before) == structure
    (models / "bert" / "modeling_bert.py").write_text("__all__ = ['BertModel', 'X']\n")
    assert transformersindex.fingerprint(str(models), str(parser)) != before  # edited
    (models / "gpt2").mkdir()  # a directory of its own is a key of the structure
    edited = transformersindex.fingerprint(str(models), str(parser))
    assert transformersindex.load(index, edited) is None
    (models / "bert" / "README.md").write_text("not parsed")  # transformers reads no other file
    assert transformersindex.fingerprint(str(models), str(parser)) == edited
    parser.write_text("# another parser\n")
    assert transformersindex.fingerprint(str(models), str(parser)) != edited
    index.write_text(json.dumps({"fingerprint": before, "structure": {"not": "a list"}}))
    assert transformersindex.load(index, before) is None
    (tmp_path / "file").write_text("")
    transformersindex.save(tmp_path / "file" / "index.json", before, {})  # unwritable: left alone


def test_an_after_import_hook_sees_the_executed_module_and_cannot_break_its_import() -> None:
    seen: list[object] = []
    for name in ("colorsys", "wave"):
        sys.modules.pop(name, None)
    importhooks.after_import("colorsys", lambda m: seen.append(m.rgb_to_hsv))
    importhooks.after_import("wave", lambda m: print(1 / 0))
    import colorsys
    import wave

    assert seen == [colorsys.rgb_to_hsv]  # once, after the module's code ran
    assert wave.open is not None  # the import stands
    assert not any(isinstance(f, importhooks._OneShot) for f in sys.meta_path)


def _package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture()
def on_path(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_patched_module_runs_the_new_source_on_the_same_lines(on_path: Path) -> None:
    _package(
        on_path,
        {
            "patched_a.py": """
                SLOW = sum(range(10))
                def where():
                    raise RuntimeError("here")
            """,
            "patched_twice.py": "X = 1\nX = 1\n",
        },
    )
    with pytest.raises(ValueError, match="line numbers"):
        importhooks.patch_source("patched_a", "SLOW = sum(range(10))\n", "SLOW = 45\n\n")
    assert importhooks.patch_source("patched_a", "sum(range(10))", "45 + 0")
    assert importhooks.patch_source("patched_twice", "X = 1", "X = 2")  # twice: not patched
    import patched_a  # type: ignore[import-not-found]
    import patched_twice  # type: ignore[import-not-found]

    assert patched_a.SLOW == 45 and patched_twice.X == 1
    assert not any(isinstance(f, importhooks._OneShot) for f in sys.meta_path)
    with pytest.raises(RuntimeError) as raised:
        patched_a.where()
    assert raised.traceback[-1].lineno + 1 == 4  # the file's own line (0-based in pytest)
    assert "SLOW = sum(range(10))" in inspect.getsource(patched_a)  # the file as it is
    assert not importhooks.patch_source("patched_a", "SLOW", "FAST")  # imported already


def test_a_deferred_subpackage_runs_only_when_used(on_path: Path) -> None:
    _package(
        on_path,
        {
            "deferpkg/__init__.py": "",
            "deferpkg/heavy/__init__.py": "import deferpkg\ndeferpkg.RAN = True\nVALUE = 7\n",
            "deferpkg/heavy/light.py": "NAME = 'light'\n",
        },
    )
    import deferpkg  # type: ignore[import-not-found]

    deferred.defer("deferpkg.heavy")
    import deferpkg.heavy.light  # type: ignore[import-not-found]
    from deferpkg.heavy.light import NAME

    assert NAME == "light" and not hasattr(deferpkg, "RAN")  # the package did not run
    assert deferpkg.heavy.light.NAME == "light"
    assert deferpkg.heavy.VALUE == 7 and deferpkg.RAN  # it runs when used
    real = sys.modules["deferpkg.heavy"]
    assert not isinstance(real, deferred.Deferred)
    assert real.light is sys.modules["deferpkg.heavy.light"]  # still its attribute
    import deferpkg.heavy as again

    assert again is real and again.VALUE == 7


def test_a_submodule_of_a_package_not_imported_yet_is_deferred_without_importing_it(
    on_path: Path,
) -> None:
    _package(
        on_path,
        {
            "lazyroot/__init__.py": "import builtins\nbuiltins.LAZYROOT_RAN = True\n",
            "lazyroot/heavy/__init__.py": "import lazyroot\nlazyroot.HEAVY_RAN = True\nVALUE = 7\n",
            "lazyroot/heavy/light.py": "NAME = 'light'\n",
        },
    )
    import builtins

    deferred.defer("lazyroot.heavy")
    assert not hasattr(builtins, "LAZYROOT_RAN")  # finding it imported nothing
    import lazyroot  # type: ignore[import-not-found]

    del builtins.LAZYROOT_RAN  # type: ignore[attr-defined]
    stand_in = lazyroot.heavy  # its package's attribute, as after an import
    assert isinstance(stand_in, deferred.Deferred)
    from lazyroot.heavy.light import NAME  # type: ignore[import-not-found]

    assert NAME == "light" and not hasattr(lazyroot, "HEAVY_RAN")
    assert stand_in.VALUE == 7 and lazyroot.HEAVY_RAN  # it runs on first use
    assert lazyroot.heavy is sys.modules["lazyroot.heavy"] is not stand_in
    assert lazyroot.heavy.light.NAME == "light"


def test_the_punctuation_table_is_lmms_evals_and_comes_from_its_file(tmp_path: Path) -> None:
    import unicodedata

    path = tmp_path / "punctuation.json"
    expected = dict.fromkeys(
        i for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")
    )
    first = punctuation.table(path)  # computed, written
    assert first == expected and list(first) == list(expected)
    assert punctuation.load(path) == list(expected)
    # Read from the file while its key is the interpreter's (a planted entry shows it)...
    cachefiles.write(path, {"fingerprint": punctuation.key(), "points": [33, 46]})
    assert punctuation.table(path) == {33: None, 46: None}
    # ...and computed again when it is not, or malformed.
    for doc in (
        {"fingerprint": "1\x0099.0.0\x001114111", "points": [33]},
        {"fingerprint": punctuation.key(), "points": ["33"]},
        {"fingerprint": punctuation.key(), "points": [33, 65]},  # "A" is no punctuation
        {"fingerprint": punctuation.key(), "points": [46, 33]},  # nor out of order
        {"fingerprint": punctuation.key()},
    ):
        cachefiles.write(path, doc)
        assert punctuation.table(path) == expected


SAME_STRUCTURE = """
import json, os, sys
from pathlib import Path
from lmms_runner.patches import transformersindex
transformersindex.install(Path(sys.argv[1]))
import transformers  # builds the structure, writes the file
from transformers.utils import import_utils
written = Path(sys.argv[1]).exists()
models = Path(transformers.__file__).parent / "models"
served = import_utils.define_import_structure.__wrapped__(models, "models")  # from the file
import_utils.create_import_structure_from_path.cache_clear()
plain = import_utils.define_import_structure.__wrapped__(models / "bert", None)  # not ours
own = import_utils.create_import_structure_from_path(str(models / "bert"))
def flat(structure):
    return sorted([sorted(k), m, sorted(v)] for k, ms in structure.items() for m, v in ms.items())
# transformers' own, computed again: its lru-cached functions, freshly cleared
import_utils.create_import_structure_from_path.cache_clear()
fresh = import_utils.spread_import_structure(import_utils.create_import_structure_from_path(models))
fresh = {k: {f"models.{m}": v for m, v in ms.items()} for k, ms in fresh.items()}
print(json.dumps({
    "written": written,
    "same": flat(served) == flat(fresh),
    "modules": sum(len(ms) for ms in served.values()),
    "bert": bool(plain) and bool(own),
    "lazy": transformers.AutoConfig.__name__,
}))
"""


@pytest.mark.e2e
def test_the_cached_transformers_structure_is_the_one_transformers_builds(tmp_path: Path) -> None:
    path = tmp_path / "transformers-index.json"
    for _ in range(2):  # written, then read
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(SAME_STRUCTURE), str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        got = json.loads(out.stdout)
        assert got["written"] and got["same"] and got["bert"], got
        assert got["modules"] > 1000 and got["lazy"] == "AutoConfig"


GC_AROUND_THE_RUN = """
import gc, json, sys
from lmms_runner import deferred, lmms_eval_main
from lmms_runner.patches import backend

deferred.defer("evaluate")  # as main() does: no triton through transformers' pipelines
import lmms_eval.__main__ as entry
from lmms_eval.models import MODEL_REGISTRY_V2

seen = {}


def cli_evaluate():
    seen["enabled"] = gc.isenabled()
    seen["frozen"] = gc.get_freeze_count()
    module = MODEL_REGISTRY_V2.resolve("openai").class_path.rsplit(".", 1)[0]
    seen["backend imported"] = module in sys.modules
    garbage = []
    garbage.append(garbage)  # a cycle of the run's own
    del garbage
    seen["collected"] = gc.collect()


entry.cli_evaluate = cli_evaluate
sys.argv = ["lmms_eval", "--model", "openai", "--tasks", "x"]
lmms_eval_main.main()
seen["frozen after"] = gc.get_freeze_count()
backend.preimport_model(["--model", "no-such-model"])  # left for lmms-eval to report
backend.preimport_model(["--model"])
print(json.dumps(seen))
"""


@pytest.mark.e2e
def test_imports_are_frozen_out_of_the_collector_and_the_run_is_collected() -> None:
    seen = script_result(GC_AROUND_THE_RUN)
    # lmms-eval, torch and the named backend are imported, then frozen
    assert seen["backend imported"] and seen["frozen"] > 100_000
    # while the run goes on, its own garbage is collected as before
    assert seen["enabled"] and seen["collected"] >= 1
    assert seen["frozen after"] >= seen["frozen"]  # the exit does not walk them again


WHAT_MAIN_CHANGES = """
import json, sys, unicodedata
from lmms_runner import importhooks, lmms_eval_main

seen = {}


def cli_evaluate():
    seen["aiohttp"] = "aiohttp" in sys.modules  # before the judges' package below imports it
    from lmms_eval.filters import extraction

    seen["patched"] = type(extraction.__loader__).__name__
    table = extraction.ExtendedRegexFilter.punct_tbl
    own = dict.fromkeys(
        i for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")
    )
    seen["same table"] = table == own and list(table) == list(own)
    f = extraction.ExtendedRegexFilter(ignore_case=True, ignore_punctuation=True)
    seen["filtered"] = f.filter_ignores("Red. «Blue»!")
    seen["judge"] = type(sys.modules["lmms_eval.llm_judge"]).__name__
    seen["requests"] = "requests" in sys.modules
    from lmms_eval.llm_judge import ServerConfig  # as a task with a judge does
    from lmms_eval.llm_judge.launcher import get_launcher

    seen["judge usable"] = ServerConfig.__name__ == "ServerConfig" and callable(get_launcher)
    seen["responses"] = type(sys.modules["openai.types.responses"]).__name__
    import openai

    seen["responses attribute"] = type(openai.types.responses).__name__
    client = openai.OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1")
    seen["responses usable"] = (
        callable(client.responses.create)  # imports the package: the Responses API
        and openai.types.responses.Response.__name__ == "Response"
        and type(sys.modules["openai.types.responses"]).__name__ == "module"
    )
    seen["sacrebleu"] = type(sys.modules["sacrebleu"]).__name__
    from lmms_eval.api import metrics

    seen["bleu"] = metrics.sacrebleu.corpus_bleu(["a b c d"], [["a b c d"]]).score
    from lmms_eval.models.simple import openai as backend

    seen["decord"] = "decord" in sys.modules
    seen["decord usable"] = type(backend.cpu(0)).__name__
    seen["meta kernels"] = type(sys.modules["torch._meta_registrations"]).__name__


# main() imports lmms-eval itself, as in a pod
importhooks.after_import("lmms_eval.__main__", lambda m: setattr(m, "cli_evaluate", cli_evaluate))
sys.argv = ["lmms_eval", "--model", "openai", "--tasks", "x"]
lmms_eval_main.main()
print(json.dumps(seen))
"""


@pytest.mark.e2e
def test_the_runner_skips_the_judges_and_the_punctuation_scan_with_the_same_filters(
    tmp_path: Path,
) -> None:
    env = dict(
        os.environ,
        LMMS_PUNCTUATION_INDEX=str(tmp_path / "punctuation.json"),
        LMMS_CODE_CACHE=str(tmp_path / "code-cache.marshal"),
    )
    for _ in range(2):  # the table and the code cache computed and written, then read
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(WHAT_MAIN_CHANGES)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        seen = json.loads(out.stdout.splitlines()[-1])
        # lmms-eval 0.7.3's class body is the one patched, and the table is its own
        assert seen["patched"] == "_PatchedSource" and seen["same table"], seen
        assert seen["filtered"] == "red blue"
        # the judges' package is not imported before a task asks for it, then it works
        assert seen["judge"] == "Deferred" and not seen["requests"]
        assert seen["judge usable"]
        # so is the OpenAI client's Responses API types package, reachable all the same
        assert seen["responses"] == "Deferred" == seen["responses attribute"], seen
        assert seen["responses usable"]
        # aiohttp (for the client's aiohttp transport), sacrebleu (for three metrics) and
        # decord (for a backend's videos) wait for their first use, and serve it
        assert not seen["aiohttp"] and not seen["decord"]
        assert seen["sacrebleu"] == "Deferred" and seen["bleu"] == pytest.approx(100.0)
        assert seen["decord usable"] == "DECORDContext", seen
        # the OpenAI-compatible backend runs without torch's meta kernels
        assert seen["meta kernels"] == "Deferred", seen
    assert punctuation.load(tmp_path / "punctuation.json")
    cache = tmp_path / "code-cache.marshal"
    # the texts of the dataclasses lmms-eval, transformers, datasets and the OpenAI
    # client make at a start (torch's wait for torch: about 870 of some 1,600)
    assert len(codecache.load(cache, codecache.key(0)) or {}) > 500


TRITON_IN_THE_RUN = """
import sys
import lmms_eval.__main__ as entry
from lmms_runner import lmms_eval_main


def cli_evaluate():
    import triton  # as torch's compiler does for a local model


entry.cli_evaluate = cli_evaluate
sys.argv = ["lmms_eval", "--model", "openai"]
lmms_eval_main.main()
"""


META_KERNELS = """
import json, sys
from lmms_runner.patches import torch_unused

model, trigger = sys.argv[1:]
seen = {"deferred": torch_unused.defer_torch_unused(["--model", model])}
import torch

x = torch.empty(5, device="meta")
index = torch.zeros(2, dtype=torch.long, device="meta")


def take():
    try:
        return list(torch.take(x, index).shape)  # its meta kernel is one of torch's Python ones
    except NotImplementedError as e:
        return type(e).__name__


def kinds():
    return {n: type(sys.modules.get(n)).__name__ for n in torch_unused.API_UNUSED}


seen["before"] = take()
seen["kinds before"] = kinds()
if trigger == "attribute":
    seen["asked"] = callable(torch._meta_registrations.register_meta)
else:
    __import__(trigger)
seen["module"] = type(sys.modules["torch._meta_registrations"]).__name__
seen["after"] = take()
seen["kinds after"] = kinds()
print(json.dumps(seen))
"""


def meta_kernels(model: str, trigger: str) -> dict[str, Any]:
    return script_result(META_KERNELS, model, trigger)


#: ``API_UNUSED`` that this environment has (NVIDIA's CUDA bindings come with torch's
#: CUDA wheels).
INSTALLED_UNUSED = [
    n for n in torch_unused.API_UNUSED if importlib.util.find_spec(n.split(".")[0]) is not None
]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "trigger",
    [
        *(m for m in torch_unused.META_USERS if importlib.util.find_spec(m.split(".")[0])),
        "attribute",
    ],
)
def test_an_api_backend_runs_without_torchs_meta_kernels_until_something_uses_them(
    trigger: str,
) -> None:
    seen = meta_kernels("openai", trigger)
    assert seen["deferred"] and seen["before"] == "NotImplementedError", seen
    assert seen["kinds before"] == {n: "Deferred" for n in INSTALLED_UNUSED}, seen
    # fake tensors, torch.compile, torch.export and model loading get them, as does a
    # module that asks for a name of theirs
    assert seen["module"] == "module" and seen["after"] == [2], seen
    if trigger != "attribute":  # a user of meta tensors gets every deferred module
        assert seen["kinds after"] == {n: "module" for n in INSTALLED_UNUSED}, seen


@pytest.mark.e2e
def test_a_backend_that_loads_a_model_gets_torchs_meta_kernels_at_once() -> None:
    seen = meta_kernels("llava_hf", "json")
    assert not seen["deferred"] and seen["before"] == seen["after"] == [2], seen
    assert "Deferred" not in seen["kinds before"].values(), seen


TORCH_UNUSED_IN_USE = """
import json, sys
from lmms_runner.patches import torch_unused

torch_unused.defer_torch_unused(["--model", "openai"])
import torch
import torch.cuda._utils as cuda_utils

torch.manual_seed(0)
seen = {
    "normal": list(torch.distributions.Normal(torch.zeros(3), 1.0).sample().shape),
    "export": callable(torch.export.export),
    "bindings": cuda_utils._HAS_CUDA_BINDINGS,
}
if seen["bindings"]:
    from cuda.bindings import driver
    seen["driver"] = int(driver.CUresult.CUDA_SUCCESS)
seen["kinds"] = {n: type(sys.modules.get(n)).__name__ for n in torch_unused.API_UNUSED}
print(json.dumps(seen))
"""


@pytest.mark.e2e
def test_what_an_api_backend_does_not_use_of_torch_works_when_used() -> None:
    seen = script_result(TORCH_UNUSED_IN_USE)
    assert seen["normal"] == [3] and seen["export"] is True, seen
    if seen["bindings"]:
        assert seen["driver"] == 0, seen
    # each was imported on its first use; the meta kernels were not asked for
    used = {"torch.distributions", "torch.export"} | (
        {"cuda.bindings.driver"} if seen["bindings"] else set()
    )
    assert {n for n, kind in seen["kinds"].items() if kind == "module"} == used, seen


STREAMING_PATCHES = """
import json, sys, types
from lmms_runner.patches import datasets_streaming

datasets_streaming.install()
from datasets.utils.patching import patch_submodule

def new(*args, **kwargs):
    return "patched"

builder = types.ModuleType("builder")  # a dataset builder's module: json's, say
exec("import os; from os.path import join", builder.__dict__)
for target in ("scipy.io.loadmat", "os.path.join", "open"):
    patch_submodule(builder, target, new).start()
seen = {
    "scipy imported": "scipy" in sys.modules,
    "join": builder.join("a", "b"),
    "os.path.join": builder.os.path.join("a", "b"),
    "open": builder.open("x"),
}
import scipy.io  # now something has imported scipy, and the builder holds it

builder2 = types.ModuleType("builder2")
exec("import scipy.io", builder2.__dict__)
patch_submodule(builder2, "scipy.io.loadmat", new).start()
seen["loadmat"] = builder2.scipy.io.loadmat("x")
print(json.dumps(seen))
"""


@pytest.mark.e2e
def test_a_streaming_patch_of_a_package_nobody_imported_is_left_out() -> None:
    seen = script_result(STREAMING_PATCHES)
    assert seen == {
        "scipy imported": False,
        "join": "patched",
        "os.path.join": "patched",
        "open": "patched",
        "loadmat": "patched",
    }, seen


@pytest.mark.e2e
def test_no_leak_report_at_the_exit_where_triton_is_loaded() -> None:
    pytest.importorskip("triton")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TRITON_IN_THE_RUN)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "leaked" not in out.stderr, out.stderr[-2000:]


#: Classes of every shape ``dataclasses`` writes methods for, defined in a module that
#: imports ``annotations`` from ``__future__`` (whose flag must not reach the methods).
DATACLASSES = """
from __future__ import annotations
import dataclasses

@dataclasses.dataclass
class Plain:
    a: int
    b: str = "x"
    c: list = dataclasses.field(default_factory=list)

@dataclasses.dataclass(frozen=True, order=True, kw_only=True)
class Frozen:
    a: int = 1
    b: float = 2.0

@dataclasses.dataclass(slots=True, eq=False, repr=False)
class Slotted:
    a: int
"""
METHODS = ("__init__", "__repr__", "__eq__", "__lt__", "__ge__", "__setattr__", "__delattr__")


def _methods(module_name: str) -> dict[str, tuple[object, ...]]:
    """Each generated method's code, annotations, defaults and names, from a fresh module."""
    module = types.ModuleType(module_name)
    sys.modules[module_name] = module
    try:
        exec(compile(DATACLASSES, f"<{module_name}>", "exec", dont_inherit=True), vars(module))
    finally:
        del sys.modules[module_name]
    out: dict[str, tuple[object, ...]] = {}
    for cls in (module.Plain, module.Frozen, module.Slotted):
        for name in METHODS:
            fn = vars(cls).get(name)
            if fn is not None:
                out[f"{cls.__name__}.{name}"] = (
                    fn.__code__,
                    fn.__annotations__,
                    fn.__defaults__,
                    fn.__kwdefaults__,
                    fn.__qualname__,
                    fn.__globals__ is vars(module),
                )
    return out


def test_dataclass_methods_from_the_code_cache_are_the_ones_exec_makes(tmp_path: Path) -> None:
    plain = _methods("plain_shapes")
    assert len(plain) == 11
    path = tmp_path / "code-cache.marshal"
    try:
        first = codecache.install(path)  # no file: compiles, and keeps what it compiled
        assert _methods("first_shapes") == plain
        assert first.new and len(first.new) == 14  # with __le__, __gt__, __hash__
        first.save_new()
        assert path.exists()
        second = codecache.install(path)  # from the file: nothing compiled
        assert second.new is None and len(second.code) == 14
        assert _methods("second_shapes") == plain
        # A build over an existing file adds what it compiles, and keeps the rest.
        second.new = {}

        @dataclasses.dataclass
        class Added:
            z: int

        assert len(second.new) == 3
        second.save_new()
        assert len(codecache.load(path, second.expected) or {}) == 17
    finally:
        vars(dataclasses).pop("exec", None)
    # Another Python's file (or a damaged one) is not used.
    doc = marshal.loads(path.read_bytes())
    for planted in (
        {**doc, "key": doc["key"].replace(importlib.util.MAGIC_NUMBER.hex(), "00000d0a")},
        {**doc, "code": {"text": b"not code"}},
        [doc],
    ):
        path.write_bytes(marshal.dumps(planted))
        assert codecache.load(path, doc["key"]) is None
    path.write_bytes(b"\x00garbage")
    assert codecache.load(path, doc["key"]) is None


def test_the_results_table_is_imported_while_the_model_answers(
    on_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (on_path / "table_writer_stand_in.py").write_text("")
    monkeypatch.setattr(prefetch, "AFTER_ANSWERS", ("table_writer_stand_in",))
    monkeypatch.setattr(prefetch, "_prefetching", [])
    monkeypatch.setenv("LMMS_CACHE_CHECKPOINT_INTERVAL", "2")
    chunks: list[tuple[list[int], bool]] = []

    def execute(cache: object, lm: object, reqtype: str, requests: list[int]) -> list[int]:
        if prefetch._prefetching:
            prefetch._prefetching[0].join(10)
        chunks.append((requests, "table_writer_stand_in" in sys.modules))
        return [r * 10 for r in requests]

    chunked = chunked_answers.chunked_execute(execute)
    assert chunked(None, None, "generate_until", [1, 2, 3, 4, 5]) == [10, 20, 30, 40, 50]
    # Not during the start (the first chunk), then from the second chunk on.
    assert chunks == [([1, 2], False), ([3, 4], True), ([5], True)]
    assert len(prefetch._prefetching) == 1


LAZY_AIOHTTP = """
import json, sys
from lmms_runner.patches import deferred_imports
patched = deferred_imports.lazy_aiohttp_transport()
import openai
before = "aiohttp" in sys.modules
client = openai.DefaultAioHttpClient()  # makes its transport: imports aiohttp
from openai._vendor.httpx_aiohttp import AiohttpTransport
import openai._vendor.httpx_aiohttp as package
try:
    package.AioHttpTransport
    unknown = ""
except AttributeError as e:
    unknown = str(e)
print(json.dumps({
    "patched": patched,
    "before": before,
    "after": "aiohttp" in sys.modules,
    "transport": type(client._transport).__name__,
    "exported": AiohttpTransport is sys.modules[package.__name__ + ".transport"].AiohttpTransport,
    "unknown": unknown,
}))
"""


@pytest.mark.e2e
def test_the_openai_client_imports_aiohttp_only_for_an_aiohttp_client() -> None:
    out = subprocess.run(
        [sys.executable, "-c", LAZY_AIOHTTP], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == {
        "patched": True,
        "before": False,
        "after": True,
        "transport": "AiohttpTransport",
        "exported": True,
        "unknown": "module 'openai._vendor.httpx_aiohttp' has no attribute 'AioHttpTransport'",
    }


LIBRARY_TEARDOWN = """
import ctypes, sys
from lmms_runner import importhooks, lmms_eval_main

libc = ctypes.CDLL(None)
libc.__cxa_atexit.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
# A library's teardown, registered before the run as the C++ destructors of torch's
# libraries are (__cxa_atexit): it aborts.
libc.__cxa_atexit(ctypes.cast(libc.abort, ctypes.c_void_p), None, None)
libc.fopen.restype = ctypes.c_void_p
libc.fputs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
KEPT = []
RESULTS, LOG = sys.argv[1:3]


def cli_evaluate():
    results = open(RESULTS, "w")  # never closed: the interpreter's exit flushes it
    results.write("results")
    KEPT.append(results)
    log = libc.fopen(LOG.encode(), b"w")  # a C library's file, never closed either
    libc.fputs(b"from C stdio", log)  # held in the C library's buffer
    print("from Python")
    sys.exit(3)


importhooks.after_import("lmms_eval.__main__", lambda m: setattr(m, "cli_evaluate", cli_evaluate))
sys.argv = ["lmms_eval", "--model", "openai"]
lmms_eval_main.main()
"""


@pytest.mark.e2e
def test_the_run_ends_after_the_interpreters_exit_without_the_libraries_teardown(
    tmp_path: Path,
) -> None:
    results, log = tmp_path / "results.json", tmp_path / "c-stdio.log"
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LIBRARY_TEARDOWN), str(results), str(log)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # The exit status is the interpreter's, and the handler registered before the run
    # (which would abort) never ran.
    assert out.returncode == 3, (out.returncode, out.stderr[-2000:])
    # Nothing written is lost: Python's streams and files, and the C library's buffers.
    assert "from Python" in out.stdout, out.stdout
    assert results.read_text() == "results"
    assert log.read_text() == "from C stdio"


def test_an_index_file_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "index.json"
    cachefiles.write_atomically(path, b"first")
    cachefiles.write_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    # A place that cannot take the file keeps what it had, and no partial file either.
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "entry").write_text("")
    cachefiles.write_atomically(taken, b"data")
    assert taken.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "taken"]


def test_a_code_cache_marshal_cannot_write_is_left_unwritten(tmp_path: Path) -> None:
    path = tmp_path / "code-cache.marshal"
    codecache.save(path, "key", {"text": object()})  # type: ignore[dict-item]
    assert not path.exists()


STAND_INS = """
import datetime, json, sys
from lmms_runner import lazytorch
assert lazytorch.install()
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.collect_env import get_pretty_env_info
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
seen = {"stub": type(torch).__name__, "nn": type(nn).__name__, "F": type(F).__name__}
seen["answers"] = [dist.is_available(), dist.is_initialized()]
Tensor = torch.Tensor  # taken before torch is imported, as a module might
seen["no tensors yet"] = [isinstance(1.0, (bytes, Tensor)), issubclass(float, Tensor)]
torch.manual_seed(1234)
hours = datetime.timedelta(hours=24)
torch.distributed.distributed_c10d.default_pg_timeout = hours
seen["read back"] = torch.distributed.distributed_c10d.default_pg_timeout == hours
seen["before use"] = [lazytorch.imported("torch"), "torch._C" in sys.modules,
                      "accelerate.state" in sys.modules, "torch" in sys.modules]
x = torch.rand(3)  # the first use imports torch
seen["after use"] = [lazytorch.imported("torch"), "torch._C" in sys.modules]
import torch as real
real.manual_seed(1234)
seen["seeded"] = x.tolist() == real.rand(3).tolist()
from torch.distributed import distributed_c10d
seen["assigned"] = distributed_c10d.default_pg_timeout == hours
seen["types"] = [isinstance(x, torch.Tensor), isinstance(F.relu(x), torch.Tensor),
                 issubclass(nn.Linear, nn.Module), torch is not real]
seen["taken"] = [isinstance(x, Tensor), issubclass(type(x), Tensor), isinstance(1.0, Tensor)]
class Derived(Tensor):
    pass
seen["derived"] = Derived.__mro__[1] is real.Tensor
seen["accelerate"] = [Accelerator.prepare.__qualname__, type(InitProcessGroupKwargs()).__name__]
seen["real answers"] = [dist.is_initialized(), dist.is_available() == real.distributed.is_available()]
print(json.dumps(seen))
"""


def test_torch_stand_ins_answer_exactly_and_import_torch_on_first_use() -> None:
    seen = script_result(STAND_INS)
    assert seen["stub"] == seen["nn"] == seen["F"] == "Stub"
    # answered without torch: no process group exists in a process that never imported it
    assert seen["answers"] == [True, False]
    assert seen["no tensors yet"] == [False, False]
    assert seen["read back"]
    # nothing of torch or accelerate is imported until something is used
    assert seen["before use"] == [False, False, False, True], seen
    assert seen["after use"] == [True, True]
    # the seed was applied before anything drew from torch's generator, and the value
    # assigned at "import" reached the real module
    assert seen["seeded"] and seen["assigned"]
    # the stand-ins bound at import hand out the real module's types and classes
    assert seen["types"] == [True, True, True, True]
    # torch.Tensor taken before the import answers for the real type after it
    assert seen["taken"] == [True, True, False] and seen["derived"]
    assert seen["accelerate"] == ["Accelerator.prepare", "InitProcessGroupKwargs"]
    assert seen["real answers"] == [False, True]


def test_torch_is_left_alone_where_it_is_imported_already() -> None:
    seen = script_result(
        """
        import json, sys, torch
        from lmms_runner import lazytorch
        print(json.dumps({"installed": lazytorch.install(), "real": lazytorch.loaded()}))
        """
    )
    assert seen == {"installed": False, "real": True}


@pytest.mark.e2e
def test_an_api_run_never_imports_torch_and_scores_as_lmms_eval_does(tmp_path: Path) -> None:
    """The OpenAI-compatible backend through ``lmms_eval_main``: neither torch nor
    accelerate is imported from the start to the exit, and every score (with its standard
    error) is what plain ``python -m lmms_eval`` writes for the same command."""
    from tests.bench.runner_overhead import Setup

    # one answer in four wrong (the server counts requests: the same documents for both)
    setup = Setup(tmp_path, 12, 0.0, wrong_every=4)
    try:
        # with the samples logged, as an EvalRun with evaluation.logSamples has them
        plain = setup.plain(tmp_path / "plain")
        plain[-2:-2] = ["--log_samples"]
        subprocess.run(plain, env=setup.env, check=True, capture_output=True)
        ours = [sys.executable, "-X", "importtime", "-m", "lmms_runner.lmms_eval_main"]
        run = subprocess.run(
            ours + plain[3:-1] + [str(tmp_path / "ours")],
            env=setup.env,
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        setup.stop()
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in run.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "lmms_eval.evaluator" in imported and "datasets" in imported
    # only the stand-ins that lmms-eval's imports name (torch.nn, torch.distributed...);
    # a real import of torch loads its extension and some 700 modules
    stood_in = {m for m in imported if m.split(".")[0] in ("torch", "accelerate")}
    assert "torch._C" not in imported and "accelerate.state" not in imported
    assert len(stood_in) < 10, stood_in

    def results(out: str) -> Any:
        (path,) = (tmp_path / out).rglob("*_results.json")
        return json.loads(path.read_text())["results"]

    assert results("ours") == results("plain")
    assert list((tmp_path / "ours").rglob("*samples_colors*.jsonl"))
    assert 0 < results("ours")["colors"]["exact_match,none"] < 1


SINGLE_PROCESS = """
import datetime, json, sys
from lmms_runner import lazytorch
from lmms_runner.patches import torch_on_first_use as m
assert m.torch_on_first_use(["--model", "openai"])
import datasets
seen = {"torch for datasets": datasets.config.TORCH_AVAILABLE}
handler = m._Handler(timeout=datetime.timedelta(seconds=60))
ours = m._accelerator(kwargs_handlers=[handler])
fields = ["num_processes", "process_index", "local_process_index", "is_main_process",
          "is_local_main_process"]
seen["ours"] = [type(ours).__name__] + [getattr(ours, f) for f in fields]
seen["waited"] = ours.wait_for_everyone()
seen["still without torch"] = not lazytorch.imported("torch")
lazytorch.load()
seen["torch for datasets after"] = datasets.config.TORCH_AVAILABLE
real = m._accelerator(kwargs_handlers=[handler])
seen["real"] = [type(real).__name__] + [getattr(real, f) for f in fields]
seen["device"] = str(ours.device) == str(real.device)
seen["type"] = str(ours.distributed_type) == str(real.distributed_type)
print(json.dumps(seen))
"""


def test_one_process_is_told_what_accelerate_would_tell_it() -> None:
    """Before torch is imported lmms-eval gets ``SingleProcessAccelerator``, which says
    what accelerate's own ``Accelerator`` says in a process of its own; after, the real
    one (with the process group timeout lmms-eval gave the stand-in's handler)."""
    seen = script_result(SINGLE_PROCESS)
    assert seen["torch for datasets"] is False and seen["still without torch"]
    assert seen["ours"] == ["SingleProcessAccelerator", 1, 0, 0, True, True]
    assert seen["waited"] is None
    assert seen["real"] == ["Accelerator", 1, 0, 0, True, True]
    assert seen["device"] and seen["type"]
    assert seen["torch for datasets after"] is True
