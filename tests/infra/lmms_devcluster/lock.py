"""The lock files: every transitive package pinned with its hashes, per target.

    python -m lmms_devcluster.lock            # (re)write requirements/*.txt (make lock)

| file                        | Python | what                          | used by                  |
|-----------------------------|--------|-------------------------------|--------------------------|
| requirements/dev.txt        | 3.11   | operator + runner + dev tools | .venv, CI (make venv)    |
| requirements/operator.txt   | 3.11   | the operator                  | operator/Dockerfile      |
| requirements/runner.txt     | 3.12   | the operator's API + runner   | runner-image/Dockerfile  |

Each file starts with ``# pyproject-sha256: <hash>``, the hash of pyproject.toml's
dependency lists: ``tests/unit/test_lock.py`` fails when they change and the locks were
not written again. The versions already installed in ``.venv`` (the ones the tests ran
with) are preferred, so writing the locks does not move what was tested.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PYPROJECT = REPO / "pyproject.toml"
LOCK_DIR = REPO / "requirements"
PLATFORM = "x86_64-manylinux_2_28"
#: file -> (Python version, extras)
TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dev.txt": ("3.11", ("runner", "dev")),
    "operator.txt": ("3.11", ()),
    "runner.txt": ("3.12", ("runner",)),
}
HEADER = "# pyproject-sha256: "


def pyproject_hash(path: Path = PYPROJECT) -> str:
    """The hash of what the locks are resolved from: the dependency lists."""
    project = tomllib.loads(path.read_text())["project"]
    doc = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def recorded_hash(lock: Path) -> str | None:
    first = lock.read_text().splitlines()[0] if lock.exists() else ""
    return first[len(HEADER) :] if first.startswith(HEADER) else None


def _installed(uv: str) -> str:
    """``uv pip freeze`` of the dev virtualenv, without the project's own packages."""
    out = subprocess.run(
        [uv, "pip", "freeze", "--python", sys.executable],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return "\n".join(
        line for line in out.splitlines() if line and not line.startswith(("-e", "lmms-operator"))
    )


def write() -> None:
    uv = str(Path(sys.executable).with_name("uv"))
    digest = pyproject_hash()
    LOCK_DIR.mkdir(exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as prefer:
        prefer.write(_installed(uv))
        prefer.flush()
        for name, (python, extras) in TARGETS.items():
            out = LOCK_DIR / name
            cmd = [
                uv,
                "pip",
                "compile",
                str(PYPROJECT),
                "--generate-hashes",
                "--no-header",
                "--python-version",
                python,
                "--python-platform",
                PLATFORM,
                "--constraint",
                prefer.name,
                "--output-file",
                str(out),
                "--quiet",
            ]
            for extra in extras:
                cmd += ["--extra", extra]
            subprocess.run(cmd, check=True, cwd=REPO)
            # The constraints file is a temporary path: keep it out of the lock's comments.
            body = out.read_text().replace(prefer.name, "the dev virtualenv's versions")
            out.write_text(
                f"{HEADER}{digest}\n# python {python}, {PLATFORM}, extras: "
                f"{', '.join(extras) or 'none'}; written by `make lock`\n" + body
            )
            print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    write()
