"""The model-args grammar: by Unicode category, and read back exactly by lmms-eval 0.7.3."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lmms_eval.utils import handle_arg_string, simple_parse_args_string

from lmms_operator.reconcile import grammar
from lmms_operator.reconcile.credentials import credential_kind
from lmms_operator.reconcile.validate import InvalidSpec, validate

PROPERTY = settings(
    derandomize=True,
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: Text with everything the splitter cares about, unsafe characters and digits of
#: other scripts among ordinary characters.
_ALPHABET = st.sampled_from(
    [
        *"abcXYZ019_-./:@ ,=\"'[]{}()\\\t\n",
        "\u00a0",
        "\u2066",
        "\u200b",
        "\u061c",
        "\ue000",
        "\u2028",
        "\u3000",
        "\ufb01",
        *("\u00b2", "\u4e09", "\u0663", "\u00bd", "\u00e9", "\u0301", "\ud800"),
    ]
)
TEXT = st.text(_ALPHABET, max_size=24)
KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@PROPERTY
@given(TEXT)
def test_the_mirror_splits_as_lmms_eval_does(text: str) -> None:
    try:
        real: Any = simple_parse_args_string(text)
    except ValueError:
        real = ValueError
    try:
        mine: Any = grammar.parse_model_args(text)
    except ValueError:
        mine = ValueError
    assert (real is ValueError) == (mine is ValueError)
    if real is not ValueError:
        assert list(real) == list(mine)
        assert all(_same(real[k], mine[k]) for k in real)


@PROPERTY
@given(st.dictionaries(KEYS, TEXT, max_size=6))
def test_accepted_values_read_back_exactly_through_lmms_eval(args: dict[str, str]) -> None:
    accepted = {k: v for k, v in args.items() if grammar.arg_value_problem(v) is None}
    parsed = simple_parse_args_string(",".join(f"{k}={v}" for k, v in accepted.items()))
    assert list(parsed) == list(accepted)
    assert all(_same(parsed[k], handle_arg_string(v)) for k, v in accepted.items())
    assert grammar.round_trips(accepted)


@PROPERTY
@given(KEYS, TEXT)
def test_any_key_and_value_is_accepted_or_refused_never_raises(key: str, value: str) -> None:
    raw = {"model": {"type": "dummy", "args": {key: value}}, "tasks": ["mme"]}
    try:
        spec = validate(raw)
    except InvalidSpec as exc:
        assert exc.problems and all(p.field.startswith("spec.model.args") for p in exc.problems)
    else:
        assert spec.model.args == {key: value}
        assert grammar.arg_value_problem(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a\u2066b", "Cf"),  # bidi isolate
        ("a\u061cb", "Cf"),  # Arabic letter mark: a bidi control outside U+2066..2069
        ("a\u200bb", "Cf"),  # zero-width space
        ("a\u00adb", "Cf"),  # soft hyphen
        ("a\U000e0041b", "Cf"),  # tag character
        ("a\ue000b", "Co"),
        ("a\u2028b", "Zl"),
        ("a\u2029b", "Zp"),
        ("a\x85b", "Cc"),
        ("a\U000e0fffb", "Cn"),
        ("\ufb01le", "NFKC"),  # the "fi" ligature
        ("\uff41", "NFKC"),  # full-width a
        ("\u00b2", "NFKC"),
        ("\u4e09", "non-ASCII digits"),  # numeric to Python, not to int()
        (" a", "white space"),
        ("\u3000a", "NFKC"),
        ("a ", "white space"),
        ("x[1", "'['"),
        ("a(b", "'('"),
        ("{x}", "'{'"),
    ],
)
def test_values_are_refused_by_category_and_shape(value: str, reason: str) -> None:
    problem = grammar.arg_value_problem(value)
    assert problem is not None and reason in problem


@pytest.mark.parametrize(
    "value", ["Qwen/Qwen2-VL-7B", "a b", "0.5", "1e-3", "true", "\u00e9t\u00e9"]
)
def test_ordinary_values_pass(value: str) -> None:
    assert grammar.arg_value_problem(value) is None


def test_every_field_that_reaches_the_command_line_refuses_unsafe_characters() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"env": [{"name": "NCCL_DEBUG", "value": "x\u2066y"}]}, "spec.env[0].value"),
        ({"env": [{"name": "NCCL_DEBUG", "value": "x\u061cy"}]}, "spec.env[0].value"),
        ({"model": {"type": "dummy", "args": {"response": "x\u00ady"}}}, "spec.model.args"),
    ]
    for raw, field in cases:
        spec: dict[str, Any] = {"model": {"type": "dummy"}, "tasks": ["mme"], **raw}
        with pytest.raises(InvalidSpec) as exc:
            validate(spec)
        assert any(p.field.startswith(field) for p in exc.value.problems), exc.value


SECRETS = {
    "hf_" + "a1B2" * 9: "Hugging Face",
    "api_org_" + "x" * 34: "Hugging Face organisation",
    "sk-proj-" + "Ab3_" * 10: "OpenAI or Anthropic",
    "sk-ant-api03-" + "Zz9-" * 10: "OpenAI or Anthropic",
    "AKIA" + "ABCDEFGHIJ234567": "AWS",
    "ASIA" + "ABCDEFGHIJ234567": "AWS",
    "ghp_" + "a" * 36: "GitHub",
    "github_pat_" + "A1_" * 10: "GitHub fine-grained",
    "xoxb-" + "1234-5678-abcdef": "Slack",
    "AIza" + "B" * 35: "Google",
    "-----BEGIN RSA PRIVATE KEY-----": "PEM",
    "-----BEGIN OPENSSH PRIVATE KEY-----": "PEM",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl": "JSON Web Token",
}


@pytest.mark.parametrize(("value", "kind"), SECRETS.items())
def test_credential_shaped_values_are_refused_without_echoing_them(value: str, kind: str) -> None:
    assert kind in (credential_kind(value) or "")
    for raw in (
        {"model": {"type": "dummy", "args": {"response": value}}},
        {"env": [{"name": "NCCL_DEBUG", "value": value}]},
    ):
        spec: dict[str, Any] = {"model": {"type": "dummy"}, "tasks": ["mme"], **raw}
        with pytest.raises(InvalidSpec) as exc:
            validate(spec)
        text = str(exc.value)
        assert "looks like" in text and value not in text and value[6:20] not in text


@pytest.mark.parametrize(
    "value", ["hf_short", "risk-free", "task-AKIAxyz", "xox", "BEGIN", "mask-" + "a" * 30]
)
def test_ordinary_words_are_not_credentials(value: str) -> None:
    assert credential_kind(value) is None
