"""Writes one section of docs/benchmarks.md, keeping the others."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def write_section(heading: str, text: str) -> None:
    DOC.parent.mkdir(exist_ok=True)
    current = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if heading in current:
        head, _, rest = current.partition(heading)
        tail = rest.split("\n## ", 1)
        current = head + text + ("\n## " + tail[1] if len(tail) > 1 else "")
    else:
        current = current.rstrip() + "\n\n" + text
    DOC.write_text(current)
