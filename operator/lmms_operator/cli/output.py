"""How the command line writes: tables as kubectl writes them, JSON and YAML for
scripts, and errors as one line on stderr with an exit code of their own."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from ..reconcile.grammar import escape_hidden, hidden

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


# What the command line prints comes from tenants: names of tasks and metrics a runner
# (the tenant's code) reported, Leaderboard tables in ConfigMaps that anyone who may edit
# the namespace may rewrite, messages. A terminal acts on some characters (escape
# sequences retitle it, move the cursor, clear it; line breaks and tabs add rows to a
# table) and others hide or reorder text (bidi controls, zero-width characters). Every
# such character is shown escaped, by Unicode category (grammar.REFUSED_CATEGORIES) and
# Unicode's default-ignorable property, wherever the output is made: table cells, lines,
# JSON and YAML (where the escape keeps the data: a script reads what is stored).


def printable(text: str, keep: str = "") -> str:
    """``text`` with every character a terminal would act on or hide written as an
    escape (``grammar.escape_hidden``); ``keep``: characters left as they are (the line
    breaks of a text made of lines)."""
    return escape_hidden(text, keep)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell and three spaces apart, as kubectl writes;
    each cell on one line, escaped (``printable``)."""
    cells = [[printable(str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


class _Dumper(yaml.SafeDumper):
    """YAML as SafeDumper writes it, but a string holding a character that ``hidden``
    names is written double-quoted with escapes (PyYAML writes bidi and zero-width
    characters as they are when Unicode is allowed)."""

    def choose_scalar_style(self) -> str:
        event = self.event
        if isinstance(event, yaml.ScalarEvent) and any(hidden(c) for c in event.value):
            return '"'
        return str(super().choose_scalar_style())

    def process_scalar(self) -> None:
        event = self.event
        if not (isinstance(event, yaml.ScalarEvent) and any(hidden(c) for c in event.value)):
            super().process_scalar()
            return
        allow, self.allow_unicode = self.allow_unicode, False
        try:
            super().process_scalar()
        finally:
            self.allow_unicode = allow


def data(value: Any, output: str) -> str:
    """``value`` as JSON (indented) or YAML (block style, keys in their order); what
    ``hidden`` names is escaped (JSON's and YAML's own escapes: the data is the same)."""
    if output == "yaml":
        return yaml.dump(
            value, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
        ).rstrip("\n")  # only the line break: str.rstrip() would strip a value's U+00A0 too
    text = json.dumps(value, indent=1, ensure_ascii=False)
    # Outside strings JSON is ASCII: every such character is in a string, where an
    # escape means the same character.
    return "".join(_json_escape(c) if hidden(c) and c != "\n" else c for c in text)


def say(text: str) -> None:
    """Lines on stdout; any character a terminal would act on is escaped (a view's own
    line breaks stay)."""
    print(printable(text, keep="\n"), flush=True)


def warn(text: str) -> None:
    """A line on stderr: progress and errors never mix with the data on stdout. One
    line, whatever the text holds (a line break in it is shown escaped)."""
    print(printable(text), file=sys.stderr, flush=True)
