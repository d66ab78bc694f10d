"""Decoding item by item (``k8s.jsonsplit``): an object nested deeper than the decoder
recurses fails only itself; the scanner finds every value's end whatever its depth."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from lmms_operator.k8s import jsonsplit

DEPTH = 100_000


def deep(depth: int = DEPTH) -> str:
    return '{"x":' * depth + '"bottom"' + "}" * depth


def good(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"u-{name}"}, "spec": {"tasks": ["mme"]}}


def poisoned() -> str:
    """An EvalRun whose affinity (and managedFields, which mirror it) is 100000 deep."""
    meta = {
        "name": "deep",
        "namespace": "a",
        "uid": "u-deep",
        "generation": 2,
        "resourceVersion": "41",
        "managedFields": ["MIRROR"],
    }
    body = {"metadata": meta, "spec": {"scheduling": {"affinity": "DEEP"}}}
    return json.dumps(body).replace('"DEEP"', deep()).replace('"MIRROR"', deep())


def test_a_poisoned_item_between_two_good_ones_fails_only_itself() -> None:
    items = ",".join([json.dumps(good("first")), poisoned(), json.dumps(good("last"))])
    raw = '{"kind": "EvalRunList", "metadata": {"resourceVersion": "42"}, "items": [' + items
    page = jsonsplit.page((raw + "]}").encode())
    assert [i["metadata"]["name"] for i in page.items] == ["first", "last"]
    assert page.items[0] == good("first")
    assert (page.kind, page.meta) == ("EvalRunList", {"resourceVersion": "42"})
    [bad] = page.undecodable
    # What the metadata says, without managedFields; the field that is too deep.
    assert bad.meta == {
        "name": "deep",
        "namespace": "a",
        "uid": "u-deep",
        "generation": 2,
        "resourceVersion": "41",
    }
    assert bad.reason == "spec.scheduling.affinity: nested too deeply to decode"


def test_a_page_that_decodes_is_decoded_whole() -> None:
    raw = {"kind": "PodList", "metadata": {"continue": "c"}, "items": [good("a"), good("b")]}
    page = jsonsplit.page(json.dumps(raw).encode())
    assert page.items == [good("a"), good("b")] and page.undecodable == []
    assert page.meta == {"continue": "c"}


def test_a_poisoned_watch_event_keeps_its_type_and_metadata() -> None:
    type_, obj = jsonsplit.event(('{"type": "MODIFIED", "object": ' + poisoned() + "}").encode())
    assert type_ == "MODIFIED"
    assert isinstance(obj, jsonsplit.Undecodable)
    assert obj.meta["resourceVersion"] == "41" and obj.meta["uid"] == "u-deep"
    type_, obj = jsonsplit.event(json.dumps({"type": "ADDED", "object": good("a")}).encode())
    assert (type_, obj) == ("ADDED", good("a"))


def test_a_page_that_is_not_json_is_refused_whole() -> None:
    for raw in (b'{"items": [' + deep(2000).encode(), b'{"items": [{"a": "b]}'):
        try:
            jsonsplit.page(raw)
        except ValueError:
            continue
        raise AssertionError(f"accepted {raw[:40]!r}")


# -- the scanner, against the decoder, for any JSON ----------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(JSON, max_size=6), st.sampled_from([None, 0, 2]), st.booleans())
def test_elements_split_any_array_exactly(
    values: list[Any], indent: int | None, ascii_: bool
) -> None:
    raw = json.dumps(values, indent=indent, ensure_ascii=ascii_).encode()
    spans = list(jsonsplit.elements(raw, 0))
    assert [json.loads(raw[a:b]) for a, b in spans] == values
    assert jsonsplit.value_end(raw, 0) == len(raw)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.dictionaries(st.text(), JSON, max_size=6), st.sampled_from([None, 0, 2]))
def test_members_split_any_object_exactly(value: dict[str, Any], indent: int | None) -> None:
    raw = json.dumps(value, indent=indent).encode()
    assert {k: json.loads(raw[a:b]) for k, a, b in jsonsplit.members(raw)} == value


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    st.lists(st.sampled_from(["x", "a.b", 'q"', "\\"]), min_size=1, max_size=8), st.integers(1, 8)
)
def test_deep_field_names_the_path_where_the_depth_is_passed(keys: list[str], limit: int) -> None:
    value: Any = 1
    for key in reversed(keys):
        value = {key: value}
    found = jsonsplit.deep_field(json.dumps(value).encode(), limit=limit, segments=len(keys))
    if len(keys) > limit:
        assert found == ".".join(keys[:limit])
    else:
        assert found is None
