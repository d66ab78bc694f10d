"""An operator upgrade keeps every existing spec's hash: a field added to the API counts
only where a spec sets it (else the next admission pass would replace running Jobs and
evaluate finished runs again)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lmms_operator.api.parse import parse_spec
from lmms_operator.reconcile import spechash
from lmms_operator.reconcile.job import spec_hash

RICH: dict[str, Any] = {
    "model": {
        "type": "qwen2_vl",
        "pretrained": "Qwen/Qwen2-VL-7B-Instruct",
        "revision": "main",
        "args": {"max_pixels": "1000"},
        "apiKey": {"secretKeyRef": {"name": "k", "key": "v"}},
    },
    "tasks": ["mme", "pope"],
    "evaluation": {
        "batchSize": 4,
        "limit": 10,
        "logSamples": True,
        "generation": {"temperature": 0, "maxNewTokens": 64},
    },
    "resources": {"gpus": 1, "memory": "48Gi"},
    "scheduling": {"queueName": "gpu", "nodeSelector": {"a": "b"}},
    "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
    "cache": {"persistentVolumeClaim": "hf"},
    "retries": 2,
    "leaderboard": "team",
    "suspend": True,
}
SINGLE_GPU: dict[str, Any] = {
    "model": {"type": "qwen2_vl"},
    "tasks": ["mme", "textvqa_val"],
    "evaluation": {
        "batchSize": 1,
        "limit": 100,
        "generation": {"temperature": 0, "maxNewTokens": 64},
    },
    "resources": {"gpus": 1, "cpu": "8", "memory": "48Gi"},
    "leaderboard": "default",
}

#: The hashes the first release (before issue 32's fields) computed for these specs.
RELEASED = [(RICH, "83cba3f503"), (SINGLE_GPU, "5e1927fe34")]


@pytest.mark.parametrize(("raw", "released"), RELEASED)
def test_a_spec_that_uses_no_new_field_keeps_its_released_hash(
    raw: dict[str, Any], released: str
) -> None:
    assert spec_hash(parse_spec(raw)) == released


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("model", "multiGPU"), "DataParallel"),
        (("model", "concurrency"), 8),
        (("evaluation", "verbosity"), "DEBUG"),
    ],
)
def test_a_new_field_set_away_from_its_default_is_another_evaluation(
    path: tuple[str, ...], value: Any
) -> None:
    raw = copy.deepcopy(RICH)
    raw[path[0]][path[1]] = value
    assert spec_hash(parse_spec(raw)) != "83cba3f503"
    assert path in spechash.ADDED


def test_every_added_field_is_a_spec_field_with_that_default() -> None:
    data = parse_spec(RICH).model_dump(mode="json", by_alias=True)
    for path, default in spechash.ADDED.items():
        node: Any = data
        for key in path:
            assert isinstance(node, dict) and key in node, path
            node = node[key]
        assert node == default, path


def test_suspend_is_not_part_of_the_hash() -> None:
    raw = copy.deepcopy(RICH)
    raw["suspend"] = False
    assert spec_hash(parse_spec(raw)) == "83cba3f503"
