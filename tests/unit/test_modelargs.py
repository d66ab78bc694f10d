"""spec.model.args by allow-list: the keys the backend's class hierarchy accepts."""

from __future__ import annotations

from typing import Any

import pytest

from lmms_operator import catalogue, presets
from lmms_operator.reconcile.validate import FEATURES, InvalidSpec, Policy, validate

ALL = Policy(features=frozenset(FEATURES))


def problems(model: dict[str, Any], policy: Policy = ALL) -> list[tuple[str, str]]:
    with pytest.raises(InvalidSpec) as exc:
        validate({"model": model, "tasks": ["mme"]}, policy)
    return [(p.field, p.message) for p in exc.value.problems]


def test_a_key_the_backend_does_not_take_is_refused_with_a_suggestion() -> None:
    # qwen2_vl takes **kwargs (and asserts them empty): the allow-list refuses anyway.
    [(field, message)] = problems({"type": "qwen2_vl", "args": {"max_pixel": "100"}})
    assert field == "spec.model.args.max_pixel"
    assert "takes no argument 'max_pixel'" in message and "did you mean 'max_pixels'?" in message


def test_keys_of_the_whole_class_hierarchy_are_accepted() -> None:
    # internvl3_5 defines no __init__ of its own: its keys are InternVL3's.
    cat = catalogue.load()
    assert cat.model_args["internvl3_5"] == cat.model_args["internvl3"]
    assert "num_frame" in cat.model_args["internvl3_5"]
    # Aliases share their backend's list.
    assert cat.model_args["openai_compatible"] == cat.model_args["openai"]
    validate(
        {
            "model": {"type": "openai", "args": {"model_version": "m", "base_url": "http://x"}},
            "tasks": ["mme"],
        }
    )


def test_suggestions_are_offered_for_the_first_three_unknown_keys_only() -> None:
    args = {f"max_pixelz{i}": "1" for i in range(6)}
    found = problems({"type": "qwen2_vl", "args": args})
    assert len(found) == 6
    assert sum("did you mean" in m for _, m in found[:3]) >= 1
    assert not any("did you mean" in m for _, m in found[3:])


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({"type": "qwen2_vl", "args": {"batch_size": "8"}}, "spec.model.args.batch_size"),
        ({"type": "qwen2_vl", "args": {"revision": "main"}}, "spec.model.args.revision"),
        # qwen2_vl takes no revision: lmms-eval would fail after the GPUs are held.
        ({"type": "qwen2_vl", "revision": "main"}, "spec.model.revision"),
        # openai names its model with model_version: pretrained would name another.
        ({"type": "openai", "pretrained": "org/other"}, "spec.model.pretrained"),
        ({"type": "phi3v", "pretrained": "org/other"}, "spec.model.pretrained"),
    ],
)
def test_arguments_the_operator_writes_must_be_ones_the_backend_takes(
    model: dict[str, Any], field: str
) -> None:
    assert field in [f for f, _ in problems(model)]


def test_a_backend_that_takes_revision_accepts_it() -> None:
    validate({"model": {"type": "llava_hf", "revision": "main"}, "tasks": ["mme"]})


def test_an_admin_can_allow_more_keys_per_backend() -> None:
    model = {"type": "qwen2_vl", "args": {"my_knob": "1"}}
    assert problems(model)[0][0] == "spec.model.args.my_knob"
    validate({"model": model, "tasks": ["mme"]}, Policy(model_args=("qwen2_*:my_*",)))
    assert problems(model, Policy(model_args=("llava:my_knob",)))


def test_dummy_takes_any_key_for_the_stand_in_runner() -> None:
    validate(
        {
            "model": {"type": "dummy", "pretrained": "local", "args": {"scripted_sleep": "1"}},
            "tasks": ["mme"],
        }
    )


@pytest.mark.parametrize("model_type", sorted(presets.PRESETS))
def test_every_preset_passes_admission(model_type: str) -> None:
    cat = catalogue.load()
    preset = presets.PRESETS[model_type]
    assert set(preset.args) <= cat.model_args[model_type]
    assert validate({"model": {"type": model_type}, "tasks": ["mme"]}, ALL).model.type == model_type


def test_the_tests_own_sample_manifests_pass() -> None:
    from tests import evalruns

    raw = evalruns.local_run("x", "http://127.0.0.1:8000/v1", ["colors"])["spec"]
    validate(raw, ALL)
    validate(evalruns.manifest("y")["spec"], ALL)
