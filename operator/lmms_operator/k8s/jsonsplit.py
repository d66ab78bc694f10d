"""Decoding the API server's answers item by item, so that one object cannot stop an
informer.

``json.loads`` recurses once per nesting level: an object nested deeper than Python's
recursion limit (the API server accepts deep JSON where a schema preserves unknown
fields) raises RecursionError, and a list page holding it would never be decoded. Here a
page's ``items`` array is split into one byte span per item by a linear, iterative
scanner (string- and escape-aware, depth counted, no recursion); each item is decoded on
its own, and one that cannot be is reported with what its ``metadata`` says (decoded on
its own, without ``managedFields``, which mirror the object's depth).

The scanner checks the nesting only as far as it needs to find where a value ends;
``json.loads`` of each span checks the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: What can change the nesting outside a string, and what can end a string inside one.
_STRUCTURE = re.compile(rb'["{}\[\]]')
_IN_STRING = re.compile(rb'["\\]')
_SCALAR_END = re.compile(rb"[,\]}\s]")
_SPACE = re.compile(rb"\s*")
_TOKEN = re.compile(rb'["{}\[\]:,]')
#: Nesting past which ``deep_field`` names a field (a core/v1 Affinity is about 8 deep).
DEEP = 64
#: The metadata fields an undecodable object is reported with.
META_FIELDS = ("name", "namespace", "uid", "generation", "resourceVersion")


class SplitError(ValueError):
    """The bytes are not the JSON the API server sends (truncated, unbalanced)."""


@dataclass
class Undecodable:
    """An item that could not be decoded: its metadata (what could be read of it) and why."""

    meta: dict[str, Any]
    reason: str


@dataclass
class Page:
    """A list page: its decoded items, the ones that could not be, and its own fields."""

    kind: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    undecodable: list[Undecodable] = field(default_factory=list)


def _skip_space(buf: bytes, pos: int) -> int:
    match = _SPACE.match(buf, pos)
    return match.end() if match else pos


def _string_end(buf: bytes, pos: int) -> int:
    """The index after the string that opens at ``buf[pos]`` (a quote)."""
    pos += 1
    while True:
        match = _IN_STRING.search(buf, pos)
        if match is None:
            raise SplitError("unterminated string")
        if buf[match.start()] == 0x5C:  # a backslash escapes the next byte
            pos = match.end() + 1
            continue
        return match.end()


def value_end(buf: bytes, pos: int) -> int:
    """The index after the JSON value that starts at ``buf[pos]``: linear in its length,
    whatever its depth."""
    first = buf[pos : pos + 1]
    if first == b'"':
        return _string_end(buf, pos)
    if first not in (b"{", b"["):
        match = _SCALAR_END.search(buf, pos)
        end = match.start() if match else len(buf)
        if end == pos:
            raise SplitError(f"no value at byte {pos}")
        return end
    depth = 0
    while True:
        match = _STRUCTURE.search(buf, pos)
        if match is None:
            raise SplitError("unbalanced brackets")
        char = buf[match.start()]
        if char == 0x22:  # '"'
            pos = _string_end(buf, match.start())
            continue
        pos = match.end()
        depth += 1 if char in (0x7B, 0x5B) else -1
        if depth == 0:
            return pos
        if depth < 0:
            raise SplitError("unbalanced brackets")


def _expect(buf: bytes, pos: int, char: bytes) -> int:
    pos = _skip_space(buf, pos)
    if buf[pos : pos + 1] != char:
        raise SplitError(f"expected {char.decode()!r} at byte {pos}")
    return pos + 1


def members(
    buf: bytes, start: int = 0, end_of: Callable[[bytes, int, str], int] | None = None
) -> Iterator[tuple[str, int, int]]:
    """(key, start, end) of each member of the object that starts at ``buf[start]``;
    ``end_of(buf, start, key)`` finds where a value ends (default: ``value_end``)."""
    pos = _expect(buf, start, b"{")
    pos = _skip_space(buf, pos)
    if buf[pos : pos + 1] == b"}":
        return
    while True:
        pos = _skip_space(buf, pos)
        if buf[pos : pos + 1] != b'"':
            raise SplitError(f"expected a key at byte {pos}")
        key_end = _string_end(buf, pos)
        key = json.loads(buf[pos:key_end])
        pos = _skip_space(buf, _expect(buf, key_end, b":"))
        end = end_of(buf, pos, key) if end_of is not None else value_end(buf, pos)
        yield key, pos, end
        pos = _skip_space(buf, end)
        if buf[pos : pos + 1] == b"}":
            return
        pos = _expect(buf, pos, b",")


def elements(buf: bytes, start: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each element of the array that starts at ``buf[start]``."""
    pos = _expect(buf, start, b"[")
    pos = _skip_space(buf, pos)
    if buf[pos : pos + 1] == b"]":
        return
    while True:
        pos = _skip_space(buf, pos)
        end = value_end(buf, pos)
        yield pos, end
        pos = _skip_space(buf, end)
        if buf[pos : pos + 1] == b"]":
            return
        pos = _expect(buf, pos, b",")


def deep_field(buf: bytes, limit: int = DEEP, segments: int = 3) -> str | None:
    """The first field of the object in ``buf`` nested more than ``limit`` deep (not
    counting ``metadata.managedFields``), named by its first ``segments`` keys
    (``spec.scheduling.affinity``). Linear, iterative."""
    stack: list[list[Any]] = []  # per open container: [is_object, its key or index]
    pos, key = 0, b'""'
    while (match := _TOKEN.search(buf, pos)) is not None:
        char, pos = buf[match.start()], match.end()
        if char == 0x22:  # a string: the key, if a colon follows
            pos = _string_end(buf, match.start())
            key = buf[match.start() : pos]
        elif char in (0x7B, 0x5B):  # '{', '['
            stack.append([char == 0x7B, None if char == 0x7B else 0])
            if len(stack) > limit and not _mirror(stack):
                return _path(stack[:-1][:segments])
        elif not stack:
            continue
        elif char == 0x3A:  # ':' ends an object's key
            stack[-1][1] = json.loads(key)
        elif char == 0x2C:  # ',' moves an array's index on
            if not stack[-1][0]:
                stack[-1][1] += 1
        else:  # '}', ']'
            stack.pop()
    return None


def _mirror(stack: list[list[Any]]) -> bool:
    """Inside ``metadata.managedFields``: a mirror of the object's depth, not its cause."""
    return len(stack) > 1 and stack[0][1] == "metadata" and stack[1][1] == "managedFields"


def _path(frames: list[list[Any]]) -> str:
    out = ""
    for is_object, key in frames:
        out += f".{key}" if is_object else f"[{key}]"
    return out.lstrip(".")


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply to decode"
    return f"not valid JSON ({type(exc).__name__})"


def _decode(buf: bytes) -> Any:
    """One value, or the exception that decoding it raised."""
    try:
        return json.loads(buf)
    except (RecursionError, ValueError) as exc:
        return exc


def metadata_of(buf: bytes, start: int = 0) -> dict[str, Any]:
    """What can be read of the ``metadata`` of the object that starts at ``buf[start]``:
    the fields ``META_FIELDS`` that decode, each on its own. Empty when nothing can."""
    out: dict[str, Any] = {}
    try:
        for key, begin, _end in members(buf, start):
            if key != "metadata":
                continue
            for name, vstart, vend in members(buf, begin):
                if name in META_FIELDS and buf[vstart : vstart + 1] not in (b"{", b"["):
                    value = _decode(buf[vstart:vend])
                    if not isinstance(value, BaseException):
                        out[name] = value
            break
    except (SplitError, ValueError):
        pass
    return out


def item(buf: bytes) -> dict[str, Any] | Undecodable:
    """One object (a list item, or a watch event's object), or why it cannot be decoded."""
    value = _decode(buf)
    if isinstance(value, BaseException):
        where = deep_field(buf) if isinstance(value, RecursionError) else None
        reason = f"{where}: {_why(value)}" if where else _why(value)
        return Undecodable(metadata_of(buf), reason)
    if not isinstance(value, dict):
        return Undecodable({}, f"not an object ({type(value).__name__})")
    return value


def page(buf: bytes) -> Page:
    """A list page. Decoded whole when it can be (the common case, in C); otherwise item
    by item. Raises ValueError when the page itself is not JSON: that is not an item's
    fault, and the informer retries it."""
    try:
        whole = json.loads(buf)
    except RecursionError:
        return _page_by_items(buf)
    if not isinstance(whole, dict):
        raise SplitError("a list page is not an object")
    items = [i for i in whole.get("items") or [] if isinstance(i, dict)]
    return Page(str(whole.get("kind", "")), whole.get("metadata") or {}, items)


def _page_by_items(buf: bytes) -> Page:
    out = Page()

    def end_of(data: bytes, start: int, key: str) -> int:
        if key != "items" or data[start : start + 1] != b"[":
            return value_end(data, start)
        return _items(data, start, out)

    for key, start, end in members(buf, _skip_space(buf, 0), end_of):
        if key == "items":
            continue
        value = _decode(buf[start:end])
        if isinstance(value, BaseException):
            raise SplitError(f"the page's {key!r} cannot be decoded: {_why(value)}")
        if key == "kind":
            out.kind = str(value)
        elif key == "metadata" and isinstance(value, dict):
            out.meta = value
    return out


def _items(buf: bytes, start: int, out: Page) -> int:
    """Decodes the array of items at ``buf[start]`` into ``out``; where it ends. Each item
    is decoded where it starts (in C); only one that fails is scanned for its end."""
    text = buf.decode("utf-8")  # the API server writes UTF-8
    if len(text) != len(buf):
        text = ""  # not ASCII: byte and character indices differ; scan every item
    decoder = json.JSONDecoder()
    pos = _skip_space(buf, _expect(buf, start, b"["))
    if buf[pos : pos + 1] == b"]":
        return pos + 1
    while True:
        pos = _skip_space(buf, pos)
        try:
            if not text:
                raise RecursionError
            got: dict[str, Any] | Undecodable | Any
            got, end = decoder.raw_decode(text, pos)
        except RecursionError:
            end = value_end(buf, pos)
            got = item(buf[pos:end])
        except ValueError as exc:
            raise SplitError(f"an item is not JSON: {exc}") from None
        if isinstance(got, Undecodable):
            out.undecodable.append(got)
        elif isinstance(got, dict):
            out.items.append(got)
        pos = _skip_space(buf, end)
        if buf[pos : pos + 1] == b"]":
            return pos + 1
        pos = _expect(buf, pos, b",")


def event(line: bytes) -> tuple[str, dict[str, Any] | Undecodable]:
    """A watch event's type and object (or why the object cannot be decoded). Raises
    ValueError when even its type cannot be read."""
    value = _decode(line)
    if isinstance(value, dict):
        obj = value.get("object")
        return str(value.get("type") or ""), obj if isinstance(obj, dict) else {}
    if not isinstance(value, RecursionError):
        raise SplitError(f"a watch event that is not an object: {_why(value)}")
    type_ = ""
    got: dict[str, Any] | Undecodable = Undecodable({}, "no object")
    for key, start, end in members(line, _skip_space(line, 0)):
        if key == "type":
            decoded = _decode(line[start:end])
            type_ = decoded if isinstance(decoded, str) else ""
        elif key == "object":
            got = item(line[start:end])
    return type_, got
