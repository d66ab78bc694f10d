"""Attacks by a hostile tenant that get through today (each test states what SHOULD
happen, and fails until the operator is fixed). Pure: no cluster, no network."""

from __future__ import annotations

from typing import Any

import pytest

from lmms_operator.errors import InvalidSpec
from lmms_operator.reconcile import identity
from lmms_operator.reconcile.validate import DEFAULT_FEATURES, Policy, validate

#: The default policy: remoteCode off.
DEFAULT = Policy()
#: A locked-down operator: no remote code, no custom tasks, no image override.
LOCKED = Policy(features=DEFAULT_FEATURES - {"customTasks", "imageOverride"})


def _accepted(spec: dict[str, Any], policy: Policy = DEFAULT) -> bool:
    try:
        validate(spec, policy, "team-a")
    except InvalidSpec:
        return False
    return True


def _api_model(tasks: list[str], **args: str) -> dict[str, Any]:
    """A model server the tenant runs itself: it answers whatever the tenant wants."""
    return {
        "model": {
            "type": "openai_compatible",
            "args": {"model_version": "m", "base_url": "https://attacker.example.com/v1", **args},
        },
        "tasks": tasks,
    }


# -- 1. code execution in the runner while remoteCode is off -------------------------------
@pytest.mark.parametrize(
    "task",
    [
        # tasks/auxsolidmath/utils.py: eval() of the answer extracted from the response
        # ("\boxed{__import__('os').system('id')}").
        "auxsolidmath_easy",
        "auxsolidmath",  # its group
        # tasks/megabench/metrics/scoring/program_judge.py: exec() of the response.
        "megabench_core",
        "megabench",
        # tasks/mathvision/eval_utils.py: eval() of numbers parsed from the response.
        "mathvision_test",
    ],
)
def test_task_that_evals_model_output_needs_remote_code(task: str) -> None:
    with pytest.raises(InvalidSpec):
        validate(_api_model([task]), DEFAULT, "team-a")
    with pytest.raises(InvalidSpec):
        validate(_api_model([task]), LOCKED, "team-a")


def test_task_that_evals_model_output_needs_remote_code_with_a_hub_checkpoint() -> None:
    # Any Hub checkpoint of an ordinary architecture, fine-tuned to answer the payload.
    spec = {
        "model": {"type": "qwen2_vl", "pretrained": "attacker/model"},
        "tasks": ["auxsolidmath_easy"],
    }
    with pytest.raises(InvalidSpec):
        validate(spec, LOCKED, "team-a")


def test_backend_that_imports_from_a_tenant_path_needs_remote_code() -> None:
    # lmms_eval/models/simple/magi1_wm.py: sys.path.insert(0, magi_root), then
    # `from inference.pipeline.pipeline import MagiPipeline`. With the run's cache PVC,
    # an earlier run of llama_vid (snapshot_download of the whole repo, .py files
    # included) leaves the attacker's package at this path.
    snap = "/var/cache/huggingface/hub/models--attacker--pkg/snapshots/" + "a" * 40
    spec = {
        "model": {
            "type": "magi1_wm",
            "args": {
                "magi_root": snap,
                "config_file": f"{snap}/config.json",
                "output_dir": "/tmp/m",
            },
        },
        "tasks": ["mme"],
        "cache": {"persistentVolumeClaim": "hf-cache"},
    }
    with pytest.raises(InvalidSpec):
        validate(spec, LOCKED, "team-a")


# -- 5. model identities that were never evaluated -----------------------------------------
def test_openai_model_arg_overrides_model_version_in_identity() -> None:
    # lmms-eval's openai backend: `if model is not None: model_version = model`. The
    # identity prefers model_version: the Leaderboard says gpt-4o, "tiny" was evaluated.
    spec = _api_model(["mme"], model_version="gpt-4o", model="tiny")
    spec["model"]["args"]["base_url"] = "https://api.openai.com/v1"
    if _accepted(spec):
        assert identity.model_identity(spec).startswith("tiny"), identity.model_identity(spec)


@pytest.mark.parametrize("backend", ["srt_api", "qwen_vl_api"])
def test_api_backend_identity_names_its_model(backend: str) -> None:
    # Not in NO_PRETRAINED and no `pretrained`: the identity is the backend's name, so
    # every model_version shares one Leaderboard row.
    a = {"model": {"type": backend, "args": {"model_version": "model-a"}}, "tasks": ["mme"]}
    b = {"model": {"type": backend, "args": {"model_version": "model-b"}}, "tasks": ["mme"]}
    if _accepted(a) and _accepted(b):
        assert identity.model_identity(a) != identity.model_identity(b)


@pytest.mark.parametrize(
    "char",
    [
        "\u115f",  # HANGUL CHOSEONG FILLER (Lo, default ignorable)
        "\u1160",  # HANGUL JUNGSEONG FILLER (Lo, default ignorable)
        "\u034f",  # COMBINING GRAPHEME JOINER (Mn, default ignorable)
        "\ufe0f",  # VARIATION SELECTOR-16 (Mn, default ignorable)
        "\U000e0100",  # VARIATION SELECTOR-17 (Mn, default ignorable)
        "\u17b4",  # KHMER VOWEL INHERENT AQ (Mn, default ignorable)
        "\u180b",  # MONGOLIAN FREE VARIATION SELECTOR ONE (Mn, default ignorable)
        "\u2800",  # BRAILLE PATTERN BLANK (So, renders blank)
    ],
)
def test_invisible_characters_refused_in_model_identity(char: str) -> None:
    # "gpt-4o" + an invisible character is a second Leaderboard row that reads "gpt-4o".
    spec = _api_model(["mme"], model_version="gpt-4o" + char)
    with pytest.raises(InvalidSpec):
        validate(spec, DEFAULT, "team-a")
