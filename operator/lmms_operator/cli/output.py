"""How the command line writes: tables as kubectl writes them, JSON and YAML for
scripts, and errors as one line on stderr with an exit code of their own."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml

#: The exit codes (``kubectl lmms --help`` and docs/cli.md list them).
OK = 0
ERROR = 1  # the API server refused or could not be reached, a name was not found, ...
USAGE = 2  # the command line itself is wrong
REGRESSION = 3  # compare: B is significantly worse than A on some metric
RUN_FAILED = 4  # wait: a run Failed or was Cancelled
TIMED_OUT = 5  # wait: --timeout passed before every run finished
INTERRUPTED = 130  # Ctrl-C

EXIT_CODES = (
    f"exit codes: {OK} ok; {ERROR} error (not found, forbidden, no cluster reachable); "
    f"{USAGE} usage; {REGRESSION} compare found a significant regression; "
    f"{RUN_FAILED} wait: a run failed or was cancelled; {TIMED_OUT} wait: timed out"
)

#: Output formats: a table, the table with more columns, or data for scripts.
FORMATS = ("table", "wide", "json", "yaml")


class Failure(Exception):
    """What the user must hear, as one line, and the exit code it ends with."""

    def __init__(self, message: str, code: int = ERROR) -> None:
        super().__init__(message)
        self.code = code


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell and three spaces apart, as kubectl writes."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def data(value: Any, output: str) -> str:
    """``value`` as JSON (indented) or YAML (block style, keys in their order)."""
    if output == "yaml":
        return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=100).rstrip()
    return json.dumps(value, indent=1, ensure_ascii=False)


def say(text: str) -> None:
    print(text, flush=True)


def warn(text: str) -> None:
    """A line on stderr: progress and errors never mix with the data on stdout."""
    print(text, file=sys.stderr, flush=True)
