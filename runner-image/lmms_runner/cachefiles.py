"""The files the runner computes once and reads at every start (the task index,
transformers' index, the punctuation table, the code cache): where each lives, how it is
written (whole or not at all) and read (only while its fingerprint matches), and the
walk of a directory tree that the fingerprints take."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def default_path(env: str, name: str) -> Path:
    """The file: ``$env``, else ``~/.cache/lmms-runner/<name>``."""
    configured = os.environ.get(env)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "lmms-runner" / name


def walk_sorted(
    top: str, skip: frozenset[str] = frozenset()
) -> Iterator[tuple[str, list[tuple[str, os.DirEntry[str]]]]]:
    """``(directory, files)`` for ``top`` and every directory below it but those named in
    ``skip``, the paths relative to ``top`` (the top itself is "."), each directory's
    files (and anything else that is not a directory) sorted by name: what ``os.walk``
    yields with each directory's subdirectories sorted, in the same order (a directory
    before its subdirectories, these by name; a link to a directory listed as one, not
    entered), with ``os.scandir`` entries instead of names, in about half the CPU time
    that ``os.walk`` and ``os.path.relpath`` take."""
    pending = [(top, "")]
    while pending:
        path, rel = pending.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:  # as os.walk: a directory it cannot read is left out
            continue
        dirs: list[os.DirEntry[str]] = []
        files: list[os.DirEntry[str]] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(entry)
        files.sort(key=lambda e: e.name)
        yield rel[:-1] or ".", [(rel + e.name, e) for e in files]
        dirs.sort(key=lambda e: e.name, reverse=True)  # popped last to first: by name
        pending.extend(
            (d.path, f"{rel}{d.name}/") for d in dirs if d.name not in skip and not d.is_symlink()
        )


def read(path: Path, expected: str) -> dict[str, Any]:
    """A JSON file's content, or {} when it is missing, unreadable or stale (its
    ``fingerprint`` is not ``expected``)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("fingerprint") != expected:
        return {}
    return doc


def write(path: Path, doc: dict[str, Any]) -> None:
    """Writes a JSON file atomically; a read-only place is left alone."""
    write_atomically(path, json.dumps(doc).encode())


def write_atomically(path: Path, data: bytes) -> None:
    """Writes ``path`` whole or not at all: readers (other pods' runners) see the old file
    or the new one. A read-only or full place is left as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
