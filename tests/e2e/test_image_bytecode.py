"""The images ship bytecode that Python uses as it is: a pod compiles no module of the
virtualenv when it starts.

Python takes a timestamped ``.pyc`` only while its source's modification time and size
are the ones recorded in it. ``COPY --from`` and image layers may round modification
times, and the images run with ``PYTHONDONTWRITEBYTECODE`` on a read-only root: a stale
``.pyc`` is compiled again at every start of every pod (about 640 modules, 0.4 CPU-s,
in the runner image before its Dockerfile compiled with ``unchecked-hash``). Here each
``.py`` under ``/opt/lmms`` of the built images (``make images``) is checked the way
the interpreter checks it, in the image's root filesystem as the executor runs it."""

from __future__ import annotations

import importlib.util
import re
import struct
from pathlib import Path

import pytest

from lmms_devcluster.imagestore import ImageStore

#: Files no import reaches that the image's Python cannot compile (torch's helper for
#: Python 3.12 syntax, in an image with 3.11): compileall leaves them out.
NOT_COMPILABLE = re.compile(r"/torch/testing/_internal/py312_intrinsics\.py$")


def unusable_bytecode(venv: Path) -> tuple[int, list[str], list[str]]:
    """(sources checked, sources with a stale ``.pyc``, sources with none), as
    ``importlib``'s SourceFileLoader decides: a hash-based ``.pyc`` is used without
    looking at the source when unchecked (and checked ones are read with the source,
    never compiled again while it matches); a timestamped one only while the source's
    mtime and size match its header."""
    lib = next(venv.glob("lib/python3.*"))
    tag = "cpython-" + lib.name.removeprefix("python").replace(".", "")
    checked, stale, missing = 0, [], []
    for source in sorted(lib.rglob("*.py")):
        if "__pycache__" in source.parts or NOT_COMPILABLE.search(str(source)):
            continue
        checked += 1
        pyc = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
        try:
            header = pyc.open("rb").read(16)
        except FileNotFoundError:
            missing.append(str(source.relative_to(lib)))
            continue
        (flags,) = struct.unpack("<I", header[4:8])
        if flags & 0b1:
            checked_hash = flags & 0b10
            if checked_hash and importlib.util.source_hash(source.read_bytes()) != header[8:16]:
                stale.append(str(source.relative_to(lib)))
            continue
        mtime, size = struct.unpack("<II", header[8:16])
        st = source.stat()
        if (int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF) != (mtime, size):
            stale.append(str(source.relative_to(lib)))
    return checked, stale, missing


@pytest.mark.parametrize("name", ["lmms-operator-runner", "lmms-operator"])
def test_the_images_compile_no_module_when_a_pod_starts(images: dict[str, str], name: str) -> None:
    store = ImageStore()
    rootfs = store.rootfs(store.lookup(images[name]))
    checked, stale, missing = unusable_bytecode(rootfs / "opt" / "lmms")
    # The runner's virtualenv holds tens of thousands of modules (torch, transformers,
    # lmms-eval); the operator's some thousands.
    assert checked > 1000, checked
    assert not stale, f"{len(stale)} of {checked} .pyc files are stale, e.g. {stale[:5]}"
    assert not missing, f"{len(missing)} of {checked} modules have no .pyc, e.g. {missing[:5]}"


def test_the_runner_image_carries_the_compiled_dataclass_methods_of_its_own_python(
    images: dict[str, str],
) -> None:
    """``/opt/lmms/code-cache.marshal`` (``lmms_runner.patches.codecache``) is there, holds the
    methods a start compiles, and is keyed to the bytecode of the image's Python (the
    magic number its ``.pyc`` files start with): otherwise every pod compiles them."""
    import marshal

    store = ImageStore()
    rootfs = store.rootfs(store.lookup(images["lmms-operator-runner"]))
    doc = marshal.loads((rootfs / "opt" / "lmms" / "code-cache.marshal").read_bytes())
    lib = next((rootfs / "opt" / "lmms").glob("lib/python3.*"))
    pyc = next((lib / "site-packages" / "lmms_runner" / "__pycache__").glob("*.pyc"))
    magic = pyc.read_bytes()[:4].hex()
    assert doc["key"].split("\0")[1] == magic, (doc["key"], magic)
    assert len(doc["code"]) > 1000, len(doc["code"])
    assert all(text.startswith("def __create_fn__(") for text in doc["code"])


def test_the_runner_image_skips_pydantics_plugin_search_and_has_no_plugin(
    images: dict[str, str],
) -> None:
    """The runner image sets ``PYDANTIC_DISABLE_PLUGINS``: each of a pod's two processes
    would otherwise read every installed package's entry points at its first model. No
    package the image installs is a pydantic plugin (entry point group ``pydantic``), so
    nothing is lost."""
    store = ImageStore()
    image = store.lookup(images["lmms-operator-runner"])
    assert "PYDANTIC_DISABLE_PLUGINS=__all__" in image.env, image.env
    site = next((store.rootfs(image) / "opt" / "lmms").glob("lib/python3.*/site-packages"))
    plugins = [
        str(path.parent.name)
        for path in site.glob("*.dist-info/entry_points.txt")
        if re.search(r"^\[pydantic\]\s*$", path.read_text(errors="replace"), re.MULTILINE)
    ]
    checked = len(list(site.glob("*.dist-info")))
    assert checked > 100 and not plugins, (checked, plugins)
