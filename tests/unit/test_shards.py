"""Fan-out (spec.parallelism): the assignment, the Job it makes, the runner's share, and
one result set from the shards."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lmms_operator.api.runner import Metric, Provenance, ResultsSummary, RunnerProgress, TaskResult
from lmms_operator.config import Settings
from lmms_operator.reconcile import job as jobs
from lmms_operator.reconcile import shards
from lmms_operator.reconcile.validate import InvalidSpec, validate
from lmms_runner.config import ConfigError, from_document
from tests.fixtures import colortask

RUN = jobs.RunRef("fan", "team-a", "0b8e6f5c-1111-2222-3333-444455556666")


def spec(**over: Any) -> Any:
    raw: dict[str, Any] = {"model": {"type": "qwen2_vl"}, "tasks": ["mme"]}
    raw.update(over)
    return validate(raw)


def test_whole_entries_are_balanced_by_expected_documents() -> None:
    names = ["a", "b", "c", "d", "e"]
    got = shards.assign(names, {"a": 10, "b": 6, "c": 8, "d": 4, "e": 2}, 3)
    assert [s.tasks for s in got] == [("a",), ("c", "e"), ("b", "d")]
    assert [s.expected_documents for s in got] == [10, 10, 10]
    # Every task exactly once, in the run's order within a shard.
    assert sorted(t for s in got for t in s.tasks) == names


def test_no_empty_shard_and_counts_when_nothing_is_known() -> None:
    assert [s.tasks for s in shards.assign(["a", "b"], {}, 8)] == [("a",), ("b",)]
    by_count = shards.assign(["a", "b", "c", "d", "e"], {}, 2)
    assert [len(s.tasks) for s in by_count] == [3, 2]
    assert all(s.expected_documents is None for s in by_count)
    # Unknown sizes weigh the mean of the known ones.
    mixed = shards.assign(["big", "x", "y"], {"big": 100, "x": 10}, 2)
    assert [s.tasks for s in mixed] == [("big",), ("x", "y")]
    assert mixed[1].expected_documents is None


def test_limit_caps_every_task_and_groups_stay_whole() -> None:
    s = spec(tasks=["mmmu_val", "mme", "ai2d"], parallelism=2, evaluation={"limit": 5})
    assert shards.expected_documents(s) == {"mmmu_val": 5, "mme": 5, "ai2d": 5}
    custom = spec(
        tasks=["mme"],
        customTasks=[{"configMap": "c", "tasks": ["small", "huge"]}],
        evaluation={"limit": 50},
        parallelism=2,
    )
    assert shards.expected_documents(custom, {"small": 7, "huge": 10_000}) == {
        "mme": 50,
        "small": 7,
        "huge": 50,
    }
    assert shards.units(custom) == ["mme", "small", "huge"]


def test_documents_are_counted_from_a_custom_task_configmap() -> None:
    data = colortask.files("colors", samples=10, data_dir="/etc/lmms/tasks/colors-task")
    data.update(colortask.files("shades", samples=4))
    assert shards.custom_task_documents(data) == {"colors": 10, "shades": 4}


@pytest.mark.parametrize(
    "data",
    [
        {"t.yaml": "task: t\ndataset_path: lmms-lab/MME\n"},  # a hub dataset: unknown
        {"t.yaml": "task: [unclosed"},  # not YAML
        {"t.yaml": "task: t\ndataset_kwargs: {data_files: {test: gone.jsonl}}\n"},
        {"t.yaml": "- a list\n"},
        {"t.yaml": "task: t\n" + "# pad\n" * 20_000},  # over the size read
        {"t.yaml": "a: &x [*x]\ntask: t\n"},  # a recursive alias
        {"t.yaml": "task: t\ndataset_kwargs: {data_files: d.json}\n", "d.json": "{not json"},
        {"t.yaml": "task: !!python/object:os.system t\n"},  # no Python objects, ever
    ],
)
def test_unreadable_or_hostile_task_configmaps_are_unknown_not_errors(
    data: dict[str, str],
) -> None:
    assert shards.custom_task_documents(data) == {}


def test_a_sharded_job_is_indexed_and_retries_each_shard_alone() -> None:
    s = spec(tasks=["mme", "mmmu_val", "ai2d", "chartqa"], parallelism=3, retries=2)
    plan = shards.plan(s)
    assert [p.tasks for p in plan] == [("mme", "chartqa"), ("mmmu_val",), ("ai2d",)]
    desired = jobs.build(RUN, s, Settings().runner, "t0ken", plan)
    job = desired.job["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 3, 3)
    assert job["backoffLimitPerIndex"] == 2 and "backoffLimit" not in job
    env = {e["name"]: e for e in job["template"]["spec"]["containers"][0]["env"]}
    index = env["LMMS_SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["LMMS_SHARDS"]["value"] == "3"
    assert "LMMS_NODE_RANK" not in env and desired.service is None
    config = json.loads(desired.config_map["data"]["config.json"])
    assert config["shards"] == [["mme", "chartqa"], ["mmmu_val"], ["ai2d"]]


def test_parallelism_1_or_one_task_makes_the_plain_job() -> None:
    for s in (spec(), spec(parallelism=4)):
        desired = jobs.build(RUN, s, Settings().runner, "t", shards.plan(s))
        assert "completionMode" not in desired.job["spec"]
        assert desired.job["spec"]["backoffLimit"] == 1
        assert "shards" not in desired.config_map["data"]["config.json"]


def test_parallelism_with_several_nodes_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidSpec) as exc:
        spec(parallelism=2, resources={"gpus": 1, "nodes": 2})
    assert "spec.parallelism" in str(exc.value)
    assert "resources.nodes" in str(exc.value)
    for bad in (0, 65, "two"):
        with pytest.raises(InvalidSpec, match="parallelism"):
            spec(parallelism=bad)


def test_the_runner_evaluates_only_its_shard() -> None:
    doc = {
        "kind": "EvalRun",
        "metadata": {"name": "fan"},
        "spec": {"model": {"type": "qwen2_vl"}, "tasks": ["mme", "ai2d", "chartqa"]},
        "shards": [["mme", "chartqa"], ["ai2d"]],
    }
    whole = from_document(doc)
    one = whole.for_shard("1")
    assert one.tasks == ["ai2d"] and whole.for_shard("0").tasks == ["mme", "chartqa"]
    assert one.config_hash == whole.config_hash
    assert one.state_key == f"{whole.config_hash}-shard-1" != whole.for_shard("0").state_key
    for bad in (None, "2", "-1", "x"):
        with pytest.raises(ConfigError, match="LMMS_SHARD_INDEX"):
            whole.for_shard(bad)
    unsharded = from_document({**doc, "shards": None})
    assert unsharded.for_shard(None).tasks == ["mme", "ai2d", "chartqa"]
    with pytest.raises(ConfigError, match="shards"):
        from_document({**doc, "shards": [[]]})


def _summary(tasks: dict[str, float], seconds: float, location: str | None) -> ResultsSummary:
    return ResultsSummary(
        tasks=[
            TaskResult(task=t, primary="acc", metrics=[Metric(name="acc", value=v, stderr=0.1)])
            for t, v in tasks.items()
        ],
        provenance=Provenance(model="qwen2_vl", config_hash="abc", lmms_eval_version="0.7.3"),
        evaluation_seconds=seconds,
        s3_location=location,
    )


def test_merged_results_hold_every_task_once() -> None:
    merged = shards.merge(
        [
            _summary({"mme": 0.5, "chartqa": 0.25}, 30, "s3://b/p/ns/fan/abc-shard-0/"),
            _summary({"ai2d": 0.75}, 50, "s3://b/p/ns/fan/abc-shard-1/"),
        ]
    )
    assert [(t.task, t.metrics[0].value) for t in merged.tasks] == [
        ("mme", 0.5),
        ("chartqa", 0.25),
        ("ai2d", 0.75),
    ]
    assert merged.evaluation_seconds == 50
    assert merged.s3_location == "s3://b/p/ns/fan/"
    assert merged.provenance.lmms_eval_version == "0.7.3"
    partly = shards.merge([_summary({"a": 1}, 1, "s3://b/x/"), _summary({"b": 1}, 1, None)])
    assert partly.s3_location is None
    with pytest.raises(ValueError):
        shards.merge([])


def test_progress_adds_up_the_shards() -> None:
    a = RunnerProgress(phase="evaluating", percent=50, done=5, total=10, samples_per_second=2)
    b = RunnerProgress(phase="done", percent=100, done=30, total=30, samples_per_second=1)
    both = shards.aggregate({0: a, 1: b}, 2)
    assert both.percent == pytest.approx(87.5) and both.phase == "evaluating"
    assert (both.done, both.total, both.samples_per_second) == (35, 40, 3)
    # A shard that has not answered yet counts as 0%.
    one = shards.aggregate({1: b}, 2)
    assert one.percent == pytest.approx(50) and one.phase == "starting"


def test_a_shard_answer_too_big_for_a_configmap_keeps_its_primaries_bounded() -> None:
    from lmms_operator.reconcile import fanout as publishing

    huge = ResultsSummary(
        tasks=[
            TaskResult(
                task="t" * 5000 + str(i),
                primary="acc",
                metrics=[Metric(name="acc", value=0.5)]
                + [Metric(name=f"m{j}", value=1.0, raw="x" * 100) for j in range(50)],
            )
            for i in range(400)
        ],
        provenance=Provenance(model="m", config_hash="c", argv=["x" * 100_000]),
    )
    data = publishing.shard_data(huge, "img@sha256:" + "a" * 64)
    kept = ResultsSummary.model_validate_json(data["summary.json"])
    assert len(data["summary.json"].encode()) < 1024 * 1024
    assert kept.truncated and len(kept.tasks) == 256
    assert all(len(t.task) <= 253 and [m.name for m in t.metrics] == ["acc"] for t in kept.tasks)
