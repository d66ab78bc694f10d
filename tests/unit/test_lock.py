"""The lock files match pyproject.toml: every dependency pinned, with hashes."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement

from lmms_devcluster import lock

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^ \\]+)", re.MULTILINE)


def _pins(text: str) -> dict[str, str]:
    return {m.group(1).lower().replace("_", "-"): m.group(2) for m in PIN.finditer(text)}


def test_the_locks_were_written_for_the_current_dependencies() -> None:
    digest = lock.pyproject_hash()
    for name in lock.TARGETS:
        path = lock.LOCK_DIR / name
        assert lock.recorded_hash(path) == digest, (
            f"{path.name} does not match pyproject.toml's dependencies: run `make lock`"
        )


def test_every_package_is_pinned_with_hashes_and_satisfies_pyproject() -> None:
    project = tomllib.loads(lock.PYPROJECT.read_text())["project"]
    for name, (_, extras) in lock.TARGETS.items():
        text = (lock.LOCK_DIR / name).read_text()
        pins = _pins(text)
        assert pins, name
        # Every requirement line carries its hashes (pip --require-hashes).
        blocks = [b for b in text.split("\n") if PIN.match(b)]
        assert all(b.rstrip().endswith("\\") for b in blocks), name
        wanted = list(project["dependencies"])
        for extra in extras:
            wanted += project["optional-dependencies"][extra]
        for spec in map(Requirement, wanted):
            key = spec.name.lower().replace("_", "-")
            assert key in pins, f"{name}: {spec.name} is not locked"
            assert spec.specifier.contains(pins[key], prereleases=True), (
                f"{name}: {spec.name}=={pins[key]} does not satisfy {spec}"
            )
    assert _pins((lock.LOCK_DIR / "runner.txt").read_text())["lmms-eval"] == "0.7.3"
    assert _pins((lock.LOCK_DIR / "dev.txt").read_text())["filelock"].startswith("3.")
