"""The lock files: every transitive package pinned with its hashes, per target.

    python -m lmms_devcluster.lock            # (re)write requirements/*.txt (make lock)
    python -m lmms_devcluster.lock engines    # runner-image/engines/*/requirements.txt

| file                        | Python | what                          | used by                  |
|-----------------------------|--------|-------------------------------|--------------------------|
| requirements/dev.txt        | 3.11   | operator + runner + dev tools | .venv, CI (make venv)    |
| requirements/operator.txt   | 3.11   | the operator                  | operator/Dockerfile      |
| requirements/runner.txt     | 3.12   | the operator's API + runner   | runner-image/Dockerfile  |
| requirements/runner-py311.txt | 3.11 | the same, for Python 3.11     | the runner image on a    |
|                             |        |                               | Debian bookworm base     |
|                             |        |                               | (make images)            |

The inference engines' images (``runner-image/engines/<engine>/``) have locks of their
own, resolved from the ``requirements.in`` beside each (the engine, pinned) for Python
3.12 on the platform its wheels are built for (``ENGINE_PLATFORMS``), and installed with
``--no-deps``: every package is in the lock.

Each file starts with ``# pyproject-sha256: <hash>``, the hash of pyproject.toml's
dependency lists: ``tests/unit/test_lock.py`` fails when they change and the locks were
not written again. The versions already installed in ``.venv`` (the ones the tests ran
with) are preferred, so writing the locks does not move what was tested.
"""

from __future__ import annotations

import hashlib
import json
import re
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
    # The runner Dockerfile's RUNNER_LOCK for a base whose python3 is 3.11 (Debian
    # bookworm, as `make images` builds it here).
    "runner-py311.txt": ("3.11", ("runner",)),
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


def _extras_required() -> dict[str, list[str]]:
    """Packages that other packages require with extras (``typepy[datetime]``), from the
    dev virtualenv's metadata. pip's ``--require-hashes`` mode refuses such a requirement
    unless the lock pins it with the same extras, which ``uv pip compile`` does not write."""
    import importlib.metadata

    from packaging.requirements import Requirement

    found: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        for line in dist.requires or []:
            req = Requirement(line)
            if req.extras and (req.marker is None or req.marker.evaluate({"extra": ""})):
                found.setdefault(_key(req.name), set()).update(req.extras)
    return {name: sorted(extras) for name, extras in found.items()}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _with_extras(body: str, extras: dict[str, list[str]]) -> str:
    """Adds ``name[extras]==version`` (same hashes) before ``name==version`` for each such
    package: pip needs both lines, one for the plain requirement and one for the extras."""
    lines = body.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = re.match(r"^([A-Za-z0-9_.\-]+)==", lines[i])
        j = i + 1
        while j < len(lines) and lines[j].startswith(" ") and "--hash=" in lines[j]:
            j += 1
        wanted = extras.get(_key(match.group(1))) if match else None
        if match and wanted:
            name = match.group(1)
            out.append(f"{name}[{','.join(wanted)}]" + lines[i][len(name) :])
            out.extend(lines[i + 1 : j])
        out.extend(lines[i:j])
        i = j
    return "\n".join(out) + "\n"


def write() -> None:
    uv = str(Path(sys.executable).with_name("uv"))
    digest = pyproject_hash()
    extras_required = _extras_required()
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
            body = _with_extras(body, extras_required)
            out.write_text(
                f"{HEADER}{digest}\n# python {python}, {PLATFORM}, extras: "
                f"{', '.join(extras) or 'none'}; written by `make lock`\n" + body
            )
            print(f"wrote {out.relative_to(REPO)}")


#: The platform each engine's wheels need (SGLang publishes manylinux_2_34 only).
ENGINE_PLATFORMS = {"vllm": "x86_64-manylinux_2_28", "sglang": "x86_64-manylinux_2_34"}
ENGINE_DIR = REPO / "runner-image" / "engines"


def write_engines() -> None:
    uv = str(Path(sys.executable).with_name("uv"))
    for engine, platform in ENGINE_PLATFORMS.items():
        source, out = (
            ENGINE_DIR / engine / "requirements.in",
            ENGINE_DIR / engine / "requirements.txt",
        )
        cmd = [uv, "pip", "compile", str(source), "--generate-hashes", "--no-header"]
        cmd += ["--python-version", "3.12", "--python-platform", platform, "--quiet"]
        subprocess.run([*cmd, "--output-file", str(out)], check=True, cwd=REPO)
        out.write_text(
            f"# python 3.12, {platform}: the {engine} engine image's lock (install with "
            "--require-hashes --no-deps); written by `python -m lmms_devcluster.lock engines`\n"
            + out.read_text()
        )
        print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    write_engines() if sys.argv[1:] == ["engines"] else write()
