"""The grammar of free text that reaches the runner's command line or a label.

Defined by Unicode category, not by lists of code points: a character is refused for
what it is (a control, a format or bidi control, a private-use or surrogate code point,
a line or paragraph separator, or one this Python's Unicode tables do not know), so a
new spelling of an invisible character is refused like the old ones.

Model-args values must also read back exactly through lmms-eval 0.7.3's splitter
(``lmms_eval.utils.simple_parse_args_string``), mirrored here because the operator
does not import lmms-eval; ``tests/unit/test_grammar.py`` keeps the mirror in step
with the real one.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping

#: General categories refused in every free-text field: Cc controls, Cf format and bidi
#: controls, Co private use, Cs surrogates, Zl/Zp line and paragraph separators, and Cn
#: (unassigned here: its meaning may change with the next Unicode version).
REFUSED_CATEGORIES = {
    "Cc": "control",
    "Cf": "invisible format or bidi control",
    "Co": "private-use",
    "Cs": "surrogate",
    "Zl": "line separator",
    "Zp": "paragraph separator",
    "Cn": "unassigned",
}

#: The ASCII characters among them (all Cc): a fast path for ASCII text.
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_GROUPING = re.compile(r"[\"'{}\[\]]")

#: Characters lmms-eval's --model_args splitter gives a meaning: "," separates entries,
#: "=" key from value, quotes and brackets group (and so swallow later entries).
SPLITTER_SPECIAL = frozenset(",=\"'[]{}()")


def text_problem(value: str) -> str | None:
    """Why ``value`` may not reach a command line or a label, or None. Never echoes
    the value (it may be a secret), only the offending code point."""
    if value.isascii():
        match = _ASCII_CONTROL.search(value)
        return None if match is None else _category_message(match.group())
    for ch in value:
        category = unicodedata.category(ch)
        if category in REFUSED_CATEGORIES:
            return _category_message(ch)
    return None


def _category_message(ch: str) -> str:
    category = unicodedata.category(ch)
    return (
        f"holds a {REFUSED_CATEGORIES[category]} character (U+{ord(ch):04X}, Unicode "
        f"category {category})"
    )


def nfkc_problem(value: str) -> str | None:
    """Refuses rather than rewrites text that Unicode normalisation (NFKC) changes:
    what the spec says is what runs, and two spellings never name one thing."""
    if not unicodedata.is_normalized("NFKC", value):
        return "is not in Unicode normal form NFKC (it has compatibility or combining forms); write the plain characters"
    return None


def arg_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be a --model_args value, or None."""
    found = text_problem(value) or nfkc_problem(value)
    if found:
        return found
    special = sorted(set(value) & SPLITTER_SPECIAL)
    if special:
        return (
            f"may not hold {' '.join(repr(c) for c in special)}: lmms-eval's --model_args "
            "splitter gives them a meaning"
        )
    if value != value.strip():
        return "may not begin or end with white space (lmms-eval strips it)"
    if value.isnumeric():
        try:
            int(value)
        except ValueError:
            return "is numeric to Python but not an integer: lmms-eval would fail reading it"
    return None


def handle_arg_string(arg: str) -> object:
    """lmms-eval 0.7.3's ``utils.handle_arg_string``: how one value is read."""
    if arg.lower() == "true":
        return True
    if arg.lower() == "false":
        return False
    if arg.isnumeric():
        return int(arg)
    try:
        return float(arg)
    except ValueError:
        return arg


def _smart_comma_split(text: str) -> list[str]:
    """lmms-eval 0.7.3's ``utils._smart_comma_split`` (without quotes or brackets it is
    a plain split, done at C speed)."""
    if not _GROUPING.search(text):
        return [arg for arg in (a.strip() for a in text.split(",")) if arg]
    out: list[str] = []
    current: list[str] = []
    depth = 0
    quote: str | None = None
    for i, ch in enumerate(text):
        if ch in ('"', "'") and (i == 0 or text[i - 1] != "\\"):
            if quote is None:
                quote = ch
            elif ch == quote:
                quote = None
        elif quote is None:
            if ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
            elif ch == "," and depth == 0:
                arg = "".join(current).strip()
                if arg:
                    out.append(arg)
                current = []
                continue
        current.append(ch)
    arg = "".join(current).strip()
    if arg:
        out.append(arg)
    return out


def parse_model_args(text: str) -> dict[str, object]:
    """lmms-eval 0.7.3's ``utils.simple_parse_args_string`` (raises ValueError where
    it would fail: an entry without "=")."""
    text = text.strip()
    if not text:
        return {}
    pairs = [arg.split("=", 1) for arg in _smart_comma_split(text)]
    if any(len(p) != 2 for p in pairs):
        raise ValueError("an entry without '='")
    return {k: handle_arg_string(v) for k, v in pairs}


def same_value(a: object, b: object) -> bool:
    """Equal values of the same type (NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def round_trips(args: Mapping[str, str]) -> bool:
    """Whether --model_args built from ``args`` reads back as exactly these keys, each
    with the value lmms-eval makes of it."""
    try:
        parsed = parse_model_args(",".join(f"{k}={v}" for k, v in args.items()))
    except ValueError:
        return False
    return list(parsed) == list(args) and all(
        same_value(parsed[k], handle_arg_string(v)) for k, v in args.items()
    )
