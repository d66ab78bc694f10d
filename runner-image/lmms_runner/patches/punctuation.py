"""lmms-eval's table of Unicode punctuation from a file, instead of built at every start.

``lmms_eval.filters.extraction`` (imported with ``lmms_eval.api.task``, so at every start)
builds ``ExtendedRegexFilter.punct_tbl`` in its class body by asking ``unicodedata`` for the
category of each of the 1.1 million code points, for a table of some 800 entries that
depends only on the interpreter's Unicode database. ``install`` makes the runner execute
that module with the expression replaced by ``table()`` (``importhooks.patch_source``),
which builds the same dictionary (the same keys, in the same order, each mapped to None)
from a JSON file: the runner image writes it when it is built (``python -m
lmms_runner.patches.punctuation``, into ``LMMS_PUNCTUATION_INDEX``); elsewhere the first
run writes it under ``~/.cache/lmms-runner/``. It is used only while its key (the Unicode
database's version and ``sys.maxunicode``) is the interpreter's and it names only
punctuation, ascending; otherwise the table is computed as lmms-eval computes it.
"""

from __future__ import annotations

import itertools
import sys
import unicodedata
from pathlib import Path

from .. import cachefiles, importhooks

#: The lmms-eval versions whose ``ExtendedRegexFilter`` class body this replaces.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})

ENV = "LMMS_PUNCTUATION_INDEX"
VERSION = 1
MODULE = "lmms_eval.filters.extraction"

#: lmms-eval 0.7.3's class body, and what the runner executes instead (the same line).
ORIGINAL = (
    "class ExtendedRegexFilter(RegexFilter):\n"
    "    punct_tbl = dict.fromkeys(i for i in range(sys.maxunicode)"
    ' if unicodedata.category(chr(i)).startswith("P"))\n'
)
REPLACEMENT = (
    "class ExtendedRegexFilter(RegexFilter):\n"
    '    punct_tbl = __import__("lmms_runner.patches.punctuation", fromlist=["table"]).table()\n'
)


def default_path() -> Path:
    return cachefiles.default_path(ENV, "punctuation.json")


def key() -> str:
    return f"{VERSION}\0{unicodedata.unidata_version}\0{sys.maxunicode}"


def compute() -> list[int]:
    """lmms-eval's own computation: every code point below ``sys.maxunicode`` whose
    category is punctuation (P*), ascending."""
    return [i for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")]


def load(path: Path) -> list[int] | None:
    """The file's code points, or None when it is missing, stale or damaged: only
    punctuation, ascending, is taken (a file that named other characters would have the
    filters strip them from answers, and change scores)."""
    points = cachefiles.read(path, key()).get("points")
    if not isinstance(points, list) or not all(type(p) is int for p in points):
        return None
    if any(b <= a for a, b in itertools.pairwise(points)) or not all(
        0 <= p < sys.maxunicode and unicodedata.category(chr(p)).startswith("P") for p in points
    ):
        return None
    return points


def table(path: Path | None = None) -> dict[int, None]:
    """``dict.fromkeys`` of the punctuation code points, from the file (written when it
    is missing or stale)."""
    target = path or default_path()
    points = load(target)
    if points is None:
        points = compute()
        cachefiles.write(target, {"fingerprint": key(), "points": points})
    return dict.fromkeys(points)


def install() -> bool:
    """Makes the next import of lmms-eval's extraction filters take the table from
    ``table()``; another lmms-eval's module (without that line) loads unchanged."""
    return importhooks.patch_source(MODULE, ORIGINAL, REPLACEMENT)


def build(path: Path) -> int:
    """Writes the file (the runner image does this when it is built)."""
    count = len(table(path))
    if load(path) is None:
        print(f"lmms-runner: could not write the punctuation table to {path}", file=sys.stderr)
        return 1
    print(f"lmms-runner: wrote {count} punctuation code points to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(build(Path(sys.argv[1]) if len(sys.argv) > 1 else default_path()))
