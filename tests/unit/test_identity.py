"""Model identity and score-changing settings (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from lmms_operator.reconcile.identity import model_identity, settings_label


def test_checkpoints_are_pretrained_at_revision() -> None:
    assert model_identity({"model": {"type": "qwen2_vl"}}) == "Qwen/Qwen2-VL-7B-Instruct"
    spec = {"model": {"type": "qwen2_vl", "pretrained": "org/m", "revision": "abc123"}}
    assert model_identity(spec) == "org/m@abc123"


def test_api_models_are_told_apart_by_name_and_endpoint() -> None:
    def api(**args: str) -> dict[str, object]:
        return {"model": {"type": "openai", "args": args}}

    a = model_identity(api(model_version="gpt-4o", base_url="https://a.example/v1"))
    b = model_identity(api(model_version="gpt-4o-mini", base_url="https://a.example/v1"))
    c = model_identity(api(model_version="gpt-4o", base_url="http://10.0.0.5:8000/v1"))
    assert a == "gpt-4o@a.example" and c == "gpt-4o@10.0.0.5:8000"
    assert len({a, b, c}) == 3
    assert model_identity(api(model_version="local")) == "local"
    assert model_identity(api()) == "openai"  # nothing better is known


def test_settings_label() -> None:
    spec = {
        "evaluation": {
            "limit": 10,
            "numFewshot": 0,
            "generation": {"temperature": 0.0, "maxNewTokens": 64},
        }
    }
    assert (
        settings_label(spec, "0.7.3")
        == "limit=10 fewshot=0 maxNewTokens=64 temperature=0.0 lmms-eval=0.7.3"
    )
    assert settings_label({}, None) == ""


def test_a_resolved_commit_names_the_checkpoint_once_known() -> None:
    spec = {"model": {"type": "qwen2_vl", "pretrained": "org/m", "revision": "main"}}
    assert model_identity(spec) == "org/m@main"
    assert model_identity(spec, "0123456789abcdef0123456789abcdef01234567") == "org/m@0123456789ab"
    api = {"model": {"type": "openai", "args": {"model_version": "gpt-4o"}}}
    assert model_identity(api, "0123456789abcdef0123456789abcdef01234567") == "gpt-4o"


def test_a_model_named_twice_with_two_values_is_refused() -> None:
    from lmms_operator.errors import InvalidSpec
    from lmms_operator.reconcile.validate import validate

    def spec(**args: str) -> dict[str, Any]:
        return {"model": {"type": "openai_compatible", "args": args}, "tasks": ["mme"]}

    with pytest.raises(InvalidSpec) as exc:
        validate(spec(model_version="gpt-4o", model="tiny"))
    assert any("named twice" in p.message for p in exc.value.problems)
    # The same name twice is one model; lmms-eval sends `model`, so the identity says it.
    validate(spec(model_version="gpt-4o", model="gpt-4o"))
    assert model_identity(spec(model_version="gpt-4o", model="m")) == "m"
