"""transformers' index of its model modules from a file, instead of built at every start.

``import transformers`` (which importing lmms-eval makes) builds the lazy import structure of
``transformers/models/`` by reading each of some 2,600 files and parsing their ``__all__`` and
``@requires`` lines. The structure depends on those files only (and on the function that
parses them), so ``install`` replaces ``define_import_structure`` as soon as
``transformers.utils.import_utils`` is executed (transformers imports it in its
``__init__``, before anything outside could reach it) with one that serves the structure of
``models/`` from a JSON file: the runner image writes it when it is built (``python -m
lmms_runner.patches.transformersindex``, into ``LMMS_TRANSFORMERS_INDEX``); elsewhere the
first run writes it under ``~/.cache/lmms-runner/``. It is used only while its fingerprint
(the path, size and modification time of every directory and ``.py`` file under ``models/``,
and of the parsing module) matches; otherwise transformers builds the structure as always.
The structure served is the very one transformers would build; any other call (a model
package's own ``define_import_structure``) goes to transformers unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import types
from pathlib import Path
from typing import Any

from .. import cachefiles
from ..importhooks import after_import

#: The lmms-eval versions (and the transformers they pin) this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})

ENV = "LMMS_TRANSFORMERS_INDEX"
VERSION = 1
MODULE = "transformers.utils.import_utils"

Structure = dict[frozenset[str], dict[str, set[str]]]


def default_path() -> Path:
    return cachefiles.default_path(ENV, "transformers-index.json")


def fingerprint(models_dir: str, parser_file: str) -> str:
    """Every directory's and ``.py`` file's relative path, size and mtime under
    ``models_dir``, and the parsing module's."""
    digest = hashlib.sha256(f"{VERSION}\0{models_dir}\0".encode())
    st = os.stat(parser_file)
    digest.update(f"{parser_file}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for rel_root, files in cachefiles.walk_sorted(models_dir, frozenset({"__pycache__"})):
        digest.update(f"{rel_root}/\n".encode())
        for name, entry in files:
            if name.endswith(".py"):
                st = entry.stat()
                digest.update(f"{rel_root}/{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def encode(structure: Structure) -> list[list[Any]]:
    return [
        [sorted(backends), {module: sorted(names) for module, names in modules.items()}]
        for backends, modules in structure.items()
    ]


def decode(doc: Any) -> Structure | None:
    if not isinstance(doc, list):
        return None
    out: Structure = {}
    for item in doc:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict)):
            return None
        backends, modules = item
        out[frozenset(backends)] = {m: set(names) for m, names in modules.items()}
    return out


def load(path: Path, expected: str) -> Structure | None:
    return decode(cachefiles.read(path, expected).get("structure"))


def save(path: Path, fp: str, structure: Structure) -> None:
    cachefiles.write(path, {"fingerprint": fp, "structure": encode(structure)})


def install(path: Path | None = None) -> None:
    """Makes ``import transformers`` take the structure of ``models/`` from the file (and
    write the file when it is missing or stale)."""
    target = path or default_path()

    def patch(import_utils: types.ModuleType) -> None:
        original = getattr(import_utils, "define_import_structure", None)
        if original is None:  # another transformers: left as it is
            return
        parser_file = os.path.abspath(import_utils.__file__ or "")
        models_dir = os.path.join(os.path.dirname(os.path.dirname(parser_file)), "models")

        @functools.lru_cache
        def define_import_structure(module_path: Any, prefix: str | None = None) -> Any:
            if prefix != "models" or os.path.abspath(module_path) != models_dir:
                return original(module_path, prefix)
            try:
                fp = fingerprint(models_dir, parser_file)
            except OSError:
                return original(module_path, prefix)
            structure = load(target, fp)
            if structure is None:
                structure = original(module_path, prefix)
                save(target, fp, structure)
            return structure

        setattr(import_utils, "define_import_structure", define_import_structure)  # noqa: B010

    after_import(MODULE, patch)


def build(path: Path) -> int:
    """Writes the index file (the runner image does this when it is built)."""
    if "transformers" in sys.modules:
        print("lmms-runner: transformers is imported already", file=sys.stderr)
        return 1
    install(path)
    import transformers
    from transformers.utils import import_utils

    models = os.path.join(os.path.dirname(os.path.abspath(transformers.__file__)), "models")
    structure = load(path, fingerprint(models, os.path.abspath(import_utils.__file__)))
    if structure is None:
        print(f"lmms-runner: could not write the transformers index to {path}", file=sys.stderr)
        return 1
    count = sum(len(modules) for modules in structure.values())
    print(f"lmms-runner: indexed {count} transformers model modules into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(build(Path(sys.argv[1]) if len(sys.argv) > 1 else default_path()))
