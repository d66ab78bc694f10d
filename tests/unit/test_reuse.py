"""Reuse: what counts as the same evaluation, and index entries that cannot be trusted."""

from __future__ import annotations

from typing import Any

import pytest

from lmms_operator.api.runner import Metric, Provenance, ResultsSummary, TaskResult
from lmms_operator.reconcile import reuse
from lmms_operator.reconcile.validate import validate

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def spec(**over: Any) -> Any:
    raw: dict[str, Any] = {
        "model": {
            "type": "llava_hf",
            "pretrained": "llava-hf/llava-1.5-7b-hf",
            "revision": COMMIT,
        },
        "tasks": ["mme", "ai2d"],
    }
    for key, value in over.items():
        if key == "model":
            raw["model"] = {**raw["model"], **value}
        else:
            raw[key] = value
    return validate(raw)


def key(**over: Any) -> dict[str, Any]:
    return reuse.reuse_key(spec(**over), "0.7.3", None)


def test_only_a_pinned_model_is_reused() -> None:
    assert reuse.not_pinned(spec()) is None  # a commit id
    assert reuse.not_pinned(spec(model={"revision": None, "version": "2024-08-06"})) is None
    for moving in ("main", "v1.0", COMMIT[:12]):
        reason = reuse.not_pinned(spec(model={"revision": moving}))
        assert reason and "spec.model.version" in reason


@pytest.mark.parametrize(
    "change",
    [
        {"model": {"revision": "f" * 40}},
        {"model": {"pretrained": "Qwen/Qwen2-VL-7B-Instruct"}},
        {"model": {"args": {"max_frames_num": "16"}}},
        {"evaluation": {"limit": 10}},
        {"evaluation": {"numFewshot": 1}},
        {"evaluation": {"seed": 1}},
        {"evaluation": {"batchSize": 4}},
        {"evaluation": {"generation": {"temperature": 0.7}}},
        {"image": "registry.example/runner:2"},
    ],
)
def test_anything_that_changes_a_score_changes_the_identity(change: dict[str, Any]) -> None:
    base = key()
    changed = key(**change)
    assert changed != base
    assert reuse.entry_name(changed, "mme") != reuse.entry_name(base, "mme")
    assert reuse.key_label(changed) != reuse.key_label(base)


def test_what_does_not_change_a_score_keeps_the_identity() -> None:
    base = key()
    for same in (
        {"resources": {"gpus": 4}, "model": {"multiGPU": "DataParallel"}},
        {"resources": {"gpus": 4}, "model": {"multiGPU": "ModelParallel"}},
        {"evaluation": {"verbosity": "DEBUG"}},
        {"parallelism": 2},
        {"retries": 5},
        {"timeoutSeconds": 60},
        {"leaderboard": "other"},
        {"tasks": ["ai2d", "mme", "chartqa"]},  # identities are per task
    ):
        assert key(**same) == base, same
    assert reuse.reuse_key(spec(), "0.7.4", None) != base  # another lmms-eval
    assert reuse.entry_name(base, "mme") != reuse.entry_name(base, "ai2d")


def test_custom_task_definitions_are_part_of_the_identity() -> None:
    one = reuse.definitions_hash([{"data": {"t.yaml": "task: t\n", "t.jsonl": "{}\n"}}])
    edited = reuse.definitions_hash([{"data": {"t.yaml": "task: t\n", "t.jsonl": "{}\n{}\n"}}])
    binary = reuse.definitions_hash(
        [{"data": {"t.yaml": "task: t\n", "t.jsonl": "{}\n"}, "binaryData": {"x": "AA=="}}]
    )
    assert len({one, edited, binary}) == 3
    assert reuse.reuse_key(spec(), "0.7.3", one) != reuse.reuse_key(spec(), "0.7.3", edited)


def _entry(task: str = "mme", value: float = 0.5, **over: Any) -> reuse.Entry:
    fields: dict[str, Any] = {
        "task": task,
        "key": key(),
        "results": [
            TaskResult(task=task, primary="acc", metrics=[Metric(name="acc", value=value)])
        ],
        "provenance": Provenance(model="qwen2_vl", config_hash="c").to_wire(),
        "source": reuse.Source(namespace="team-a", run="first", uid="u1"),
    }
    fields.update(over)
    return reuse.Entry(**fields)


def test_an_index_entry_round_trips_and_outlives_its_run() -> None:
    cm = reuse.entry_config_map("team-a", _entry())
    assert "ownerReferences" not in cm["metadata"]
    assert cm["metadata"]["labels"][reuse.LABEL_KEY] == reuse.key_label(key())
    got = reuse.read_entry(cm, key())
    assert got is not None and got.results[0].metrics[0].value == 0.5


def _tampered() -> list[dict[str, Any]]:
    good = reuse.entry_config_map("team-a", _entry())
    other_key = reuse.entry_config_map("team-a", _entry(key=key(evaluation={"limit": 1})))
    other_key["metadata"]["name"] = good["metadata"]["name"]  # another identity's results
    renamed = reuse.entry_config_map("team-a", _entry(task="ai2d"))
    renamed["metadata"]["name"] = good["metadata"]["name"]  # ai2d's results as mme's
    return [
        {**good, "data": {"entry.json": "{not json"}},
        {**good, "data": {"entry.json": "x" * (reuse.MAX_ENTRY_BYTES + 1)}},
        {**good, "data": {}},
        {**good, "data": {"entry.json": '{"task": "mme"}'}},
        reuse.entry_config_map("team-a", _entry(results=[])),
        other_key,
        renamed,
    ]


@pytest.mark.parametrize("cm", _tampered())
def test_a_malformed_or_misplaced_index_entry_is_ignored(cm: dict[str, Any]) -> None:
    assert reuse.read_entry(cm, key()) is None


def _summary(*tasks: tuple[str, bool]) -> ResultsSummary:
    return ResultsSummary(
        tasks=[TaskResult(task=t, group=g, primary="acc") for t, g in tasks],
        provenance=Provenance(model="m", config_hash="c"),
    )


def test_results_are_attributed_only_where_they_can_be_told_apart() -> None:
    groups = frozenset({"mmmu"})
    alone = reuse.attribute(["mmmu"], _summary(("mmmu", True), ("mmmu_art", False)), groups)
    assert [t.task for t in alone["mmmu"]] == ["mmmu", "mmmu_art"]  # one entry: all of it
    mixed = reuse.attribute(
        ["mme", "mmmu"], _summary(("mme", False), ("mmmu", True), ("mmmu_art", False)), groups
    )
    assert list(mixed) == ["mme"]  # the group's subtasks cannot be told apart: not indexed


def test_merged_results_follow_the_task_list() -> None:
    merged = _summary(("c", False), ("a", False), ("b", False))
    assert [t.task for t in reuse.in_unit_order(merged, ["a", "b", "c"]).tasks] == ["a", "b", "c"]


def test_reuse_and_version_are_checked_naming_the_field() -> None:
    from lmms_operator.reconcile.validate import InvalidSpec

    with pytest.raises(InvalidSpec, match=r"spec\.reuse"):
        spec(reuse="Sometimes")
    with pytest.raises(InvalidSpec, match=r"spec\.model\.version"):
        spec(model={"version": "v1,trust_remote_code=True"})
    assert spec().reuse == "IfIdentical"
