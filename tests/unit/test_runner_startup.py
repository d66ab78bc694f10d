"""The runner's faster start: the same task index and modules, loaded later or once."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmms_runner import lmms_eval_main, taskindex, transformersindex


def test_a_deferred_module_loads_on_first_use_only() -> None:
    sys.modules.pop("colorsys", None)
    lmms_eval_main.defer("colorsys")
    deferred = sys.modules["colorsys"]
    assert isinstance(deferred, lmms_eval_main._Deferred)
    inspect.getmodule(test_a_deferred_module_loads_on_first_use_only)  # asks every __file__
    assert sys.modules["colorsys"] is deferred  # still not imported
    assert deferred.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert sys.modules["colorsys"] is not deferred  # the real module now
    assert sys.modules["colorsys"].__name__ == "colorsys"


def test_lazy_optional_functions_call_the_real_one() -> None:
    call = lmms_eval_main._lazy_function("colorsys", "hsv_to_rgb")
    assert call.__name__ == "hsv_to_rgb" and call(0.0, 0.0, 1.0) == (1.0, 1.0, 1.0)


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
from lmms_runner import taskindex
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
    transformersindex.after_import("colorsys", lambda m: seen.append(m.rgb_to_hsv))
    transformersindex.after_import("wave", lambda m: 1 / 0)
    import colorsys
    import wave

    assert seen == [colorsys.rgb_to_hsv]  # once, after the module's code ran
    assert wave.open is not None  # the import stands
    assert not any(isinstance(f, transformersindex._AfterImport) for f in sys.meta_path)


SAME_STRUCTURE = """
import json, os, sys
from pathlib import Path
from lmms_runner import transformersindex
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
from lmms_runner import lmms_eval_main

lmms_eval_main.defer("evaluate")  # as main() does: no triton through transformers' pipelines
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
lmms_eval_main.preimport_model(["--model", "no-such-model"])  # left for lmms-eval to report
lmms_eval_main.preimport_model(["--model"])
print(json.dumps(seen))
"""


@pytest.mark.e2e
def test_imports_are_frozen_out_of_the_collector_and_the_run_is_collected() -> None:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(GC_AROUND_THE_RUN)],
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(out.stdout.splitlines()[-1])
    # lmms-eval, torch and the named backend are imported, then frozen
    assert seen["backend imported"] and seen["frozen"] > 100_000
    # while the run goes on, its own garbage is collected as before
    assert seen["enabled"] and seen["collected"] >= 1
    assert seen["frozen after"] >= seen["frozen"]  # the exit does not walk them again


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
