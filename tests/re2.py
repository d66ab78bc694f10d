"""The CRD's RE2 patterns, for Python's ``re`` and for generating strings that match them.

The API server checks ``pattern`` with RE2 (Go); Python's ``re`` lacks RE2's ``\\x{...}``
escapes and ``\\p{...}`` classes, and its ``$`` also matches before a final newline. The
translation keeps RE2's meaning: ``\\x{..}`` becomes ``\\u....``/``\\U........``, a Unicode
general category becomes the ranges ``unicodedata`` gives it, a POSIX class its ASCII
ranges, ``$``/``\\z`` the end of the text, and ``\\d``, ``\\w``, ``\\s`` stay ASCII as in RE2.

``Sampler`` makes a matching string of a chosen length from a seeded ``random.Random``
(hypothesis's ``from_regex`` makes short strings; near-limit values come from here).
"""

from __future__ import annotations

import functools
import random
import re
import re._constants as sre_c  # type: ignore[import-not-found]
import re._parser as sre_p  # type: ignore[import-not-found]
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any

#: RE2's \s (Python's ASCII \s also has \v).
_SPACE = "\\t\\n\\f\\r "
_POSIX = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": _SPACE + "\\v",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}


def _esc(cp: int) -> str:
    return f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


@functools.cache
def _general_categories() -> dict[str, tuple[tuple[int, int], ...]]:
    """Each two-letter general category's code point ranges, in one pass (surrogates
    left out: JSON cannot carry them)."""
    found: dict[str, list[tuple[int, int]]] = {}
    start, current = 0, unicodedata.category("\0")
    for cp in range(1, sys.maxunicode + 2):
        cat = unicodedata.category(chr(cp)) if cp <= sys.maxunicode else ""
        if cat != current:
            found.setdefault(current, []).append((start, cp - 1))
            start, current = cp, cat
    found.pop("Cs", None)
    return {name: tuple(ranges) for name, ranges in found.items()}


@functools.cache
def category_ranges(name: str) -> tuple[tuple[int, int], ...]:
    """Code point ranges of a Unicode general category (``L``, ``Lu``, ``Nd``...) as this
    Python's ``unicodedata`` knows it."""
    if not re.fullmatch(r"[LMNPSZC][a-z]?|Any", name):
        raise ValueError(f"\\p{{{name}}}: only general categories are translated")
    cats = _general_categories()
    chosen = [r for cat, rs in cats.items() if name in ("Any", cat, cat[0]) for r in rs]
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(chosen):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _complement(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= sys.maxunicode:
        out.append((nxt, sys.maxunicode))
    return out


def _class_body(ranges: Sequence[tuple[int, int]]) -> str:
    return "".join(_esc(lo) if lo == hi else f"{_esc(lo)}-{_esc(hi)}" for lo, hi in ranges)


def _unicode_class(pattern: str, i: int) -> tuple[str, bool, int]:
    """``\\p{Name}``, ``\\pL``, ``\\P{Name}``, ``\\p{^Name}`` at ``i`` (the backslash):
    the ranges as a class body, whether negated, and the index after it."""
    negated = pattern[i + 1] == "P"
    if pattern[i + 2] == "{":
        end = pattern.index("}", i)
        name, nxt = pattern[i + 3 : end], end + 1
    else:
        name, nxt = pattern[i + 2], i + 3
    if name.startswith("^"):
        negated, name = not negated, name[1:]
    ranges = category_ranges(name)
    return _class_body(ranges), negated, nxt


def translate(pattern: str) -> str:
    """An RE2 pattern as a Python ``re`` pattern of the same meaning (compile it with
    ``re.ASCII``: RE2's ``\\d``, ``\\w`` and ``\\b`` are ASCII)."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1]
            if nxt == "x" and pattern[i + 2 : i + 3] == "{":
                end = pattern.index("}", i)
                out.append(_esc(int(pattern[i + 3 : end], 16)))
                i = end + 1
                continue
            if nxt in "pP":
                body, negated, i = _unicode_class(pattern, i)
                if in_class and negated:
                    ranges = category_ranges(_category_name(pattern, body))
                    body = _class_body(_complement(ranges))
                out.append(body if in_class else f"[{'^' if negated else ''}{body}]")
                continue
            if nxt == "z":
                out.append("\\Z")
            elif nxt == "s":
                out.append(_SPACE if in_class else f"[{_SPACE}]")
            elif nxt == "S" and not in_class:
                out.append(f"[^{_SPACE}]")
            elif nxt in "QCS":
                raise ValueError(f"RE2 escape \\{nxt} is not translated: {pattern!r}")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class and pattern.startswith("[:", i):
            end = pattern.index(":]", i)
            name = pattern[i + 2 : end]
            negated = name.startswith("^")
            if negated:
                raise ValueError(f"negated POSIX class [:{name}:] is not translated")
            out.append(_POSIX[name])
            i = end + 2
            continue
        if c == "[" and not in_class:
            in_class = True
            out.append(c)
            i += 1
            # A "]" (or "^]") first in a class is a literal in both dialects.
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):
                out.append("\\]")
                i += 1
            continue
        if c == "]" and in_class:
            in_class = False
        elif c == "$" and not in_class:
            c = "\\Z"
        out.append(c)
        i += 1
    return "".join(out)


def _category_name(pattern: str, body: str) -> str:
    """The category whose ranges ``body`` is (for a negated class inside a class)."""
    for name in re.findall(r"\\[pP]\{\^?(\w+)\}|\\[pP](\w)", pattern):
        candidate: str = name[0] or name[1]
        if _class_body(category_ranges(candidate)) == body:
            return candidate
    raise ValueError(f"cannot find the category of a negated class in {pattern!r}")


@functools.cache
def _translated(pattern: str) -> str:
    return translate(pattern)


@functools.cache
def compile_re2(pattern: str) -> re.Pattern[str]:
    return re.compile(_translated(pattern), re.ASCII)


def matches(pattern: str, value: str) -> bool:
    return compile_re2(pattern).search(value) is not None


#: A bounded alphabet for negated classes: ASCII and the characters that tend to break
#: a command line or a key=value grammar (lookalike commas and equals signs, quotes,
#: brackets, Unicode spaces, digits that are not ASCII, marks, bidi and format controls,
#: astral characters).
ALPHABET: tuple[str, ...] = tuple(
    sorted(
        {chr(c) for c in range(0x00, 0x80)}
        | set(
            "\x85\xa0\xad\xb2\xb9\xbd\xbc\xe9\xdf\u0301\u0345\u0660\u0663\u06f5\u0966"
            "\u1680\u2000\u2007\u200a\u200b\u200d\u200e\u2028\u202e\u2060\u2066\u3000"
            "\u2018\u2019\u201c\u201d\u2032\u00ab\u00bb\u2039\u300c\u300d\u3010"
            "\uff0c\uff1d\ufe50\ufe66\u201a\u060c\u3001\uff02\uff07\uff3b\uff5b"
            "\u2460\u2155\u216b\u4e94\u00b3\u0130\u0131\u017f\u212a\ufb01\ufeff\ufffd"
            "\U0001d7ce\U0001f600\U0001f1fa\U000e0041\U00010348"
        )
    )
)


def _in_class(items: list[Any], c: str) -> bool:
    cp = ord(c)
    for op, arg in items:
        if op is sre_c.LITERAL and arg == cp:
            return True
        if op is sre_c.RANGE and arg[0] <= cp <= arg[1]:
            return True
        if op is sre_c.CATEGORY and re.fullmatch(_CATEGORIES[arg], c, re.ASCII):
            return True
    return False


_CATEGORIES = {
    sre_c.CATEGORY_DIGIT: r"\d",
    sre_c.CATEGORY_NOT_DIGIT: r"\D",
    sre_c.CATEGORY_WORD: r"\w",
    sre_c.CATEGORY_NOT_WORD: r"\W",
    sre_c.CATEGORY_SPACE: r"\s",
    sre_c.CATEGORY_NOT_SPACE: r"\S",
}


class Sampler:
    """Strings matching a (translated) pattern, of about the length asked for: each
    repetition goes on, with probability ``fill``, while the budget allows."""

    def __init__(self, rng: random.Random, fill: float = 0.98) -> None:
        self.rng, self.fill = rng, fill

    def string(self, pattern: str, max_len: int, min_len: int = 0, tries: int = 8) -> str | None:
        parsed = _parsed(_translated(pattern))
        compiled = compile_re2(pattern)
        for _ in range(tries):
            out: list[str] = []
            self._seq(list(parsed), max_len, out)
            value = "".join(out)
            if min_len <= len(value) <= max_len and compiled.search(value):
                return value
        return None

    def _seq(self, items: list[Any], budget: int, out: list[str]) -> None:
        rests = [_min_len(items[n + 1 :]) for n in range(len(items))]
        for item, rest in zip(items, rests, strict=True):
            before = len(out)
            self._item(item, budget - rest, out)
            budget -= len(out) - before

    def _item(self, item: Any, budget: int, out: list[str]) -> None:
        op, arg = item
        if op is sre_c.LITERAL:
            out.append(chr(arg))
        elif op in (sre_c.IN, sre_c.CATEGORY, sre_c.ANY):
            out.extend(self._chars(item, 1))
        elif op is sre_c.SUBPATTERN:
            self._seq(list(arg[-1]), budget, out)
        elif op is sre_c.BRANCH:
            options = [b for b in arg[1] if _min_len(b) <= budget] or list(arg[1])
            self._seq(list(self.rng.choice(options)), budget, out)
        elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT):
            self._repeat(arg, budget, out)
        elif op is not sre_c.AT:
            raise ValueError(f"pattern element {op} is not generated")

    def _repeat(self, arg: Any, budget: int, out: list[str]) -> None:
        lo, hi, sub = arg
        sub = list(sub)
        if len(sub) == 1 and sub[0][0] in (sre_c.IN, sre_c.LITERAL, sre_c.CATEGORY, sre_c.ANY):
            # One character repeated: a geometric count (``fill``), within the budget.
            count = lo
            while count < min(hi, budget) and self.rng.random() < self.fill:
                count += 1 if self.fill < 1 else min(hi, budget) - count
            out.extend(self._chars(sub[0], count))
            return
        each = max(1, _min_len(sub))
        count, start = 0, len(out)
        while count < hi and (
            count < lo or (budget - (len(out) - start) >= each and self.rng.random() < self.fill)
        ):
            before = len(out)
            left = budget - (len(out) - start) - each * max(0, lo - count - 1)
            self._seq(sub, left, out)
            count += 1
            if len(out) == before and count >= lo:
                break

    def _chars(self, item: Any, count: int) -> str:
        """``count`` characters of one class, literal or ``.``."""
        op, arg = item
        if op is sre_c.LITERAL:
            return chr(arg) * count
        items = [(op, arg)] if op is not sre_c.IN else arg
        return "".join(self.rng.choices(_class_chars(id(items), items), k=count))


_CLASSES: dict[int, list[str]] = {}
#: A class of more characters than this is drawn from ``ALPHABET``, not enumerated.
_ENUMERATED = 4096


def _class_chars(key: int, items: list[Any]) -> list[str]:
    """The characters a class (parsed, and kept alive by ``_parsed``'s cache) is drawn
    from: all of a small class of literals and ranges, else those of ``ALPHABET`` in it."""
    if key not in _CLASSES:
        chars: list[str] | None = []
        for op, arg in items:
            lo, hi = (arg, arg) if op is sre_c.LITERAL else arg if op is sre_c.RANGE else (1, 0)
            if op not in (sre_c.LITERAL, sre_c.RANGE) or chars is None:
                chars = None
                break
            chars += [chr(c) for c in range(lo, min(hi, lo + _ENUMERATED) + 1)]
        if chars is None or len(chars) > _ENUMERATED:
            negated = bool(items) and items[0][0] is sre_c.NEGATE
            inner = items[1:] if negated else items
            any_char = len(items) == 1 and items[0][0] is sre_c.ANY
            chars = [c for c in ALPHABET if any_char or _in_class(inner, c) != negated]
        _CLASSES[key] = chars
    return _CLASSES[key]


@functools.cache
def _parsed(python_pattern: str) -> Any:
    return sre_p.parse(python_pattern, re.ASCII)


def _min_len(item: Any) -> int:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], sre_c._NamedIntConstant):
        op, arg = item
        if op in (sre_c.LITERAL, sre_c.IN, sre_c.ANY, sre_c.CATEGORY):
            return 1
        if op is sre_c.SUBPATTERN:
            return _min_len(list(arg[-1]))
        if op is sre_c.BRANCH:
            return min(_min_len(list(b)) for b in arg[1])
        if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT):
            return int(arg[0]) * _min_len(list(arg[2]))
        return 0
    return sum(_min_len(x) for x in item)
