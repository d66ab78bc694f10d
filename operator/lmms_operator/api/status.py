"""The EvalRun's status (``eval.lmms.dev/v1alpha1``): what the operator observed.

Only the operator writes it (the status subresource); the CRD's status schema is
generated from these models as the spec's is (``python -m lmms_operator.api.crdgen``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .base import ApiModel

Phase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Cancelled"]


class Condition(ApiModel):
    """A condition (KEP-1623)."""

    type: str = Field(description="Condition type, e.g. Ready.", max_length=316)
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason.", max_length=1024)
    message: str = Field(default="", description="Human-readable details.", max_length=32768)
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this condition reflects."
    )


class TaskProgress(ApiModel):
    """Progress of one task."""

    name: str = Field(description="Task name.")
    done: int = Field(default=0, description="Samples done.")
    total: int = Field(default=0, description="Samples in all.")


class Progress(ApiModel):
    """Live progress scraped from the runner."""

    percent: float = Field(default=0, description="Overall percent done.")
    tasks: list[TaskProgress] = Field(default_factory=list, description="Per-task progress.")
    samples_per_second: float | None = Field(default=None, description="Current throughput.")
    eta_seconds: float | None = Field(default=None, description="Estimated time to finish.")
    phase: str | None = Field(default=None, description="The runner's own phase.")
    last_update: str | None = Field(default=None, description="When this was scraped.")


class MetricResult(ApiModel):
    """One metric of one task."""

    task: str = Field(description="Task or group name.")
    metric: str = Field(description="Metric name, e.g. exact_match,none.")
    value: float | None = Field(default=None, description="Metric value.")
    stderr: float | None = Field(default=None, description="Standard error, when known.")
    higher_is_better: bool | None = Field(default=None, description="Direction of the metric.")


class ShardStatus(ApiModel):
    """One pod of a run with parallelism > 1: its tasks and how far it got."""

    index: int = Field(description="The Job completion index of the shard's pod.")
    tasks: list[str] = Field(default_factory=list, description="The tasks assigned to it.")
    expected_documents: int | None = Field(
        default=None,
        description="Documents the assignment expected (custom tasks' data, spec.evaluation."
        "limit); absent when unknown, then tasks are balanced by count.",
    )
    pod: str | None = Field(default=None, description="The shard's newest pod.")
    phase: str | None = Field(default=None, description="The shard runner's own phase.")
    percent: float | None = Field(default=None, description="Percent done.")
    done: int | None = Field(default=None, description="Documents done.")
    total: int | None = Field(default=None, description="Documents in all.")
    results_collected: bool | None = Field(
        default=None, description="The operator holds this shard's results."
    )


class ReusedResult(ApiModel):
    """A task whose results came from the evaluation index, and the run that produced them."""

    task: str = Field(description="The entry of the run's task list.")
    run: str = Field(description="The run that evaluated it (namespace/name).")
    run_uid: str = Field(description="That run's uid.")
    completed_at: str | None = Field(default=None, description="When that run finished.")
    index_entry: str = Field(description="The index entry's ConfigMap.")


class EvalRunStatus(ApiModel):
    """What the operator observed."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase | None = Field(default=None, description="Where the run stands.")
    reason: str | None = Field(default=None, description="CamelCase reason of the phase.")
    message: str | None = Field(default=None, description="Human-readable details.")
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status reflects."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Conditions: Ready, Reconciling, Stalled, Suspended, PodScheduled, "
        "RunnerReachable, HarnessPatched (False when the runner found an lmms-eval its "
        "patches were not written for and runs it plain), LeaderboardPublished (False when "
        "a publish failed 5 times).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    spec_hash: str | None = Field(default=None, description="Hash of the evaluated spec.")
    job_name: str | None = Field(default=None, description="The Job running the evaluation.")
    pod_name: str | None = Field(default=None, description="The newest pod of the Job.")
    start_time: str | None = Field(default=None, description="When the Job started.")
    completion_time: str | None = Field(default=None, description="When the run ended.")
    progress: Progress | None = Field(default=None, description="Live progress.")
    summary: str | None = Field(default=None, description="Progress as shown by kubectl.")
    shards: list[ShardStatus] = Field(
        default_factory=list,
        description="With parallelism > 1: which tasks each shard (Job index) evaluates, "
        "and its progress.",
    )
    reused: list[ReusedResult] = Field(
        default_factory=list,
        description="Tasks whose results came from the evaluation index (spec.reuse).",
    )
    results: list[MetricResult] = Field(
        default_factory=list, description="Primary metric per task."
    )
    results_config_map: str | None = Field(default=None, description="ConfigMap with full results.")
    results_location: str | None = Field(default=None, description="Object-store URL of results.")
    leaderboard_published: bool | None = Field(
        default=None, description="The scores are in the Leaderboard named by spec.leaderboard."
    )
