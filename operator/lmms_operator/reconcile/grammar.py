"""The grammar of free text that reaches the runner's command line or a label.

Defined by Unicode category, not by lists of code points: a character is refused for
what it is (a control, a format or bidi control, a private-use or surrogate code point,
a line or paragraph separator, or one this Python's Unicode tables do not know) and by
Unicode's Default_Ignorable_Code_Point property, so a new spelling of an invisible
character is refused like the old ones.

Model-args values must also read back exactly through lmms-eval 0.7.3's splitter
(``lmms_eval.utils.simple_parse_args_string``), mirrored here because the operator
does not import lmms-eval; ``tests/unit/test_grammar.py`` keeps the mirror in step
with the real one.
"""

from __future__ import annotations

import bisect
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

#: Unicode's derived property Default_Ignorable_Code_Point (DerivedCoreProperties.txt,
#: Unicode 15.1), as ranges: characters that render as nothing wherever a font lacks
#: them (Hangul fillers, variation selectors, the combining grapheme joiner, ...),
#: whatever their category (Lo, Mn, Cf). Python's ``unicodedata`` has no such property,
#: so the standard's table is here; with BLANK (characters that render as blank space
#: but are no space: U+2800 BRAILLE PATTERN BLANK), they are refused in every field,
#: so that "gpt-4o" and "gpt-4o" plus one of them never name two Leaderboard rows.
DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
BLANK = ((0x2800, 0x2800),)
_INVISIBLE = sorted(DEFAULT_IGNORABLE + BLANK)
_STARTS = [lo for lo, _ in _INVISIBLE]


def invisible(ch: str) -> bool:
    """A default-ignorable or blank-rendering character (``DEFAULT_IGNORABLE``, ``BLANK``)."""
    i = bisect.bisect_right(_STARTS, ord(ch)) - 1
    return i >= 0 and _INVISIBLE[i][0] <= ord(ch) <= _INVISIBLE[i][1]


def hidden(ch: str) -> bool:
    """Whether a terminal would act on ``ch`` (a control: escape sequences, line breaks,
    tabs) or a reader could not see it (a format or bidi control, a default-ignorable
    character): what ``escape_hidden`` escapes."""
    if " " <= ch < "\x7f":
        return False
    return unicodedata.category(ch) in REFUSED_CATEGORIES or invisible(ch)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_hidden(text: str, keep: str = "") -> str:
    """``text`` with each character ``hidden`` names written as an escape (``\\x1b``,
    ``\\u202e``), for text a tenant wrote that the operator shows (status, Events, the
    command line); ``keep``: characters left as they are (``"\\n"`` in a message of
    several lines). Printable text is returned as it is."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(c) if c not in keep and hidden(c) else c for c in text)


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
        if invisible(ch):
            return (
                f"holds an invisible character (U+{ord(ch):04X}, Unicode "
                "Default_Ignorable_Code_Point or blank)"
            )
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
    if value.isnumeric() and not value.isascii():
        return "holds non-ASCII digits: lmms-eval reads the value as a number; write 0-9"
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
