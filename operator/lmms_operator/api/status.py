"""The EvalRun's status (``eval.lmms.dev/v1alpha1``): what the operator observed.

Only the operator writes it (the status subresource); the CRD's status schema is
generated from these models as the spec's is (``python -m lmms_operator.api.crdgen``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from .base import MAX_COUNT, ApiModel, cap, clamp

# Every string, list and number of the status is bounded in the schema; the models cut
# and clamp what the operator fills from runners' reports and lmms-eval's output (the
# tenant's code), so that a status write never fails on a bound.
Name = Annotated[str, cap(253)]
Time = Annotated[str, cap(64)]
Text = Annotated[str, cap(32768)]
Count = Annotated[int, clamp(-MAX_COUNT, MAX_COUNT), Field(ge=-MAX_COUNT, le=MAX_COUNT)]
#: Scores, rates and durations: beyond 10**15 (written as an integer: YAML keeps it a number).
MAX_REAL = 10**15
Real = Annotated[float, clamp(-MAX_REAL, MAX_REAL), Field(ge=-MAX_REAL, le=MAX_REAL)]
Percent = Annotated[float, clamp(0, 100), Field(ge=0, le=100)]
MAX_TASKS = 4096
MAX_SHARDS = 64
MAX_CONDITIONS = 16
#: The bound of a status string shown in a `kubectl get` column.
COLUMN = 256

Phase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Cancelled"]


class Condition(ApiModel):
    """A condition (KEP-1623)."""

    type: Annotated[str, cap(316)] = Field(
        description="Condition type, e.g. Ready.", max_length=316
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: Annotated[str, cap(1024)] = Field(description="CamelCase reason.", max_length=1024)
    message: Text = Field(default="", description="Human-readable details.", max_length=32768)
    last_transition_time: Time = Field(
        description="When the status last changed (RFC 3339).", max_length=64
    )
    observed_generation: Count | None = Field(
        default=None,
        description="The metadata.generation this condition reflects.",
    )


class TaskProgress(ApiModel):
    """Progress of one task."""

    name: Name = Field(description="Task name.", max_length=253)
    done: Count = Field(default=0, description="Samples done.")
    total: Count = Field(default=0, description="Samples in all.")


class Progress(ApiModel):
    """Live progress scraped from the runner."""

    percent: Percent = Field(default=0, description="Overall percent done.")
    tasks: Annotated[list[TaskProgress], cap(MAX_TASKS)] = Field(
        default_factory=list, description="Per-task progress.", max_length=MAX_TASKS
    )
    samples_per_second: Real | None = Field(default=None, description="Current throughput.")
    eta_seconds: Real | None = Field(default=None, description="Estimated time to finish.")
    phase: Name | None = Field(default=None, description="The runner's own phase.", max_length=253)
    last_update: Time | None = Field(
        default=None, description="When this was scraped.", max_length=64
    )


class MetricResult(ApiModel):
    """One metric of one task."""

    task: Name = Field(description="Task or group name.", max_length=253)
    metric: Name = Field(description="Metric name, e.g. exact_match,none.", max_length=253)
    value: Real | None = Field(default=None, description="Metric value.")
    stderr: Real | None = Field(default=None, description="Standard error, when known.")
    higher_is_better: bool | None = Field(default=None, description="Direction of the metric.")


class ShardStatus(ApiModel):
    """One pod of a run with parallelism > 1: its tasks and how far it got."""

    index: Count = Field(description="The Job completion index of the shard's pod.")
    tasks: Annotated[list[Name], cap(MAX_TASKS)] = Field(
        default_factory=list,
        description="The tasks assigned to it.",
        max_length=MAX_TASKS,
        json_schema_extra={"items": {"type": "string", "maxLength": 253}},
    )
    expected_documents: Count | None = Field(
        default=None,
        description="Documents the assignment expected (custom tasks' data, spec.evaluation."
        "limit); absent when unknown, then tasks are balanced by count.",
    )
    pod: Name | None = Field(default=None, description="The shard's newest pod.", max_length=253)
    phase: Name | None = Field(
        default=None, description="The shard runner's own phase.", max_length=253
    )
    percent: Percent | None = Field(default=None, description="Percent done.")
    done: Count | None = Field(default=None, description="Documents done.")
    total: Count | None = Field(default=None, description="Documents in all.")
    results_collected: bool | None = Field(
        default=None, description="The operator holds this shard's results."
    )


class ReusedResult(ApiModel):
    """A task whose results came from the evaluation index, and the run that produced them."""

    task: Name = Field(description="The entry of the run's task list.", max_length=253)
    run: Annotated[str, cap(317)] = Field(
        description="The run that evaluated it (namespace/name).", max_length=317
    )
    run_uid: Time = Field(description="That run's uid.", max_length=64)
    completed_at: Time | None = Field(
        default=None, description="When that run finished.", max_length=64
    )
    index_entry: Name = Field(description="The index entry's ConfigMap.", max_length=253)


class SampledTask(ApiModel):
    """Where one task's logged samples are kept."""

    task: Name = Field(description="Task name.", max_length=253)
    count: Count = Field(default=0, description="Documents lmms-eval logged for the task.")
    kept: Count = Field(default=0, description="Records kept in the ConfigMaps.")
    truncated: bool = Field(
        default=False,
        description="Records were left out or shortened to fit (note says how); the full "
        "samples are where location or path says, when the run has either.",
    )
    note: Annotated[str, cap(1024)] | None = Field(
        default=None, description="What was left out.", max_length=1024
    )
    config_maps: Annotated[list[Name], cap(16)] = Field(
        default_factory=list,
        description="The ConfigMaps that hold the task's records, under the key <i>.jsonl "
        "(i: the task's index in status.samples.tasks), one JSON object a line: id, target, "
        "response, scores.",
        max_length=16,
        json_schema_extra={"items": {"type": "string", "maxLength": 253}},
    )


class SamplesStatus(ApiModel):
    """Where the samples of a run with spec.evaluation.logSamples are kept."""

    tasks: Annotated[list[SampledTask], cap(MAX_TASKS)] = Field(
        default_factory=list,
        description="Per task: the documents logged, the records kept and the ConfigMaps "
        "that hold them.",
        max_length=MAX_TASKS,
    )
    location: Annotated[str, cap(2048)] | None = Field(
        default=None,
        description="Object-store URL of the run's output, which holds the full samples "
        "files (with spec.output.s3).",
        max_length=2048,
    )
    persistent_volume_claim: Name | None = Field(
        default=None,
        description="The cache volume (spec.cache) that holds the full samples files.",
        max_length=253,
    )
    path: Annotated[str, cap(1024)] | None = Field(
        default=None, description="Their directory on that volume.", max_length=1024
    )


class EvalRunStatus(ApiModel):
    """What the operator observed."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase | None = Field(default=None, description="Where the run stands.")
    reason: Annotated[str, cap(1024)] | None = Field(
        default=None, description="CamelCase reason of the phase.", max_length=1024
    )
    message: Text | None = Field(
        default=None, description="Human-readable details.", max_length=32768
    )
    observed_generation: Count | None = Field(
        default=None,
        description="The metadata.generation this status reflects.",
    )
    conditions: Annotated[list[Condition], cap(MAX_CONDITIONS)] = Field(
        default_factory=list,
        description="Conditions: Ready, Reconciling, Stalled, Complete and Failed (True "
        "once the run Succeeded, or Failed or was Cancelled: for kubectl wait), Suspended, "
        "PodScheduled, "
        "RunnerReachable, HarnessPatched (False when the runner found an lmms-eval its "
        "patches were not written for and runs it plain), LeaderboardPublished (False when "
        "a publish failed 5 times).",
        max_length=MAX_CONDITIONS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    spec_hash: Time | None = Field(
        default=None, description="Hash of the evaluated spec.", max_length=64
    )
    job_name: Name | None = Field(
        default=None, description="The Job running the evaluation.", max_length=253
    )
    pod_name: Name | None = Field(
        default=None, description="The newest pod of the Job.", max_length=253
    )
    start_time: Time | None = Field(
        default=None, description="When the Job started.", max_length=64
    )
    completion_time: Time | None = Field(
        default=None, description="When the run ended.", max_length=64
    )
    progress: Progress | None = Field(default=None, description="Live progress.")
    summary: Time | None = Field(
        default=None, description="Progress as shown by kubectl.", max_length=64
    )
    model: Annotated[str, cap(COLUMN)] | None = Field(
        default=None,
        description="The model's identity, as Leaderboards name it: the checkpoint "
        "(pretrained@revision, @commit once the runner resolved it) or, for a backend "
        "without one, the model name at its endpoint's host (the Model column).",
        max_length=COLUMN,
    )
    tasks: Annotated[str, cap(COLUMN)] | None = Field(
        default=None,
        description="The tasks, as a comma-separated list, shortened to fit (the Tasks column).",
        max_length=COLUMN,
    )
    score: Annotated[str, cap(COLUMN)] | None = Field(
        default=None,
        description="The headline score once the results are in: the first task's "
        "primary metric, as task=value, with (+N) when N more results are in "
        "status.results (the Score column).",
        max_length=COLUMN,
    )
    duration: Time | None = Field(
        default=None,
        description="How long the evaluation ran, from startTime to completionTime, "
        "written as kubectl writes ages, e.g. 4m12s (the Duration column).",
        max_length=64,
    )
    shards: Annotated[list[ShardStatus], cap(MAX_SHARDS)] = Field(
        default_factory=list,
        description="With parallelism > 1: which tasks each shard (Job index) evaluates, "
        "and its progress.",
        max_length=MAX_SHARDS,
    )
    reused: Annotated[list[ReusedResult], cap(MAX_TASKS)] = Field(
        default_factory=list,
        description="Tasks whose results came from the evaluation index (spec.reuse).",
        max_length=MAX_TASKS,
    )
    results: Annotated[list[MetricResult], cap(MAX_TASKS)] = Field(
        default_factory=list, description="Primary metric per task.", max_length=MAX_TASKS
    )
    results_config_map: Name | None = Field(
        default=None, description="ConfigMap with full results.", max_length=253
    )
    results_location: Annotated[str, cap(2048)] | None = Field(
        default=None, description="Object-store URL of results.", max_length=2048
    )
    samples: SamplesStatus | None = Field(
        default=None,
        description="With spec.evaluation.logSamples: where the logged samples are kept "
        "(ConfigMaps owned by the run, compact; the full files on the cache volume or in "
        "the object store).",
    )
    leaderboard_published: bool | None = Field(
        default=None, description="The scores are in the Leaderboard named by spec.leaderboard."
    )
