"""The Leaderboard API (``eval.lmms.dev/v1alpha1``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, StringConstraints

from .base import DNS_SUBDOMAIN, ApiModel, cap
from .output import S3Output
from .status import MAX_CONDITIONS, Condition, Count, Name, Real, Time

#: A task and a metric name in rankBy (metric names hold commas: exact_match,none).
RankTask = Annotated[str, StringConstraints(min_length=1, max_length=200)]
RankMetric = Annotated[str, StringConstraints(min_length=1, max_length=253)]
#: Entries in status.top, at most (the table itself is in ConfigMaps).
MAX_TOP = 1000


class ConfigMapStorage(ApiModel):
    """The full table in ConfigMaps (JSON, CSV and Markdown), split before 1 MiB."""

    name_prefix: str | None = Field(
        default=None,
        description="Prefix of the ConfigMaps' names; defaults to leaderboard-<name>.",
        max_length=200,
        pattern=DNS_SUBDOMAIN,
    )


class LeaderboardStorage(ApiModel):
    """Where the full table lives. ConfigMaps always; S3 in addition when configured."""

    config_map: ConfigMapStorage = Field(
        default_factory=ConfigMapStorage, description="ConfigMap storage."
    )
    s3: S3Output | None = Field(
        default=None,
        description="Also copy the whole table (table.json, table.csv, table.md) to "
        "s3://<bucket>/<prefix>/<namespace>/<name>/ after every change. The ConfigMaps stay "
        "the source of truth; status.tableLocation and the ObjectStoreSynced condition say "
        "where the copy is and whether the last write worked. Needs the s3Output feature; "
        "written with credentialsSecret (a Secret labelled "
        "eval.lmms.dev/usable-by-evalruns=true), or the operator's own identity for the "
        "buckets the platform lists.",
    )


class LeaderboardSpec(ApiModel):
    """How the leaderboard ranks and stores entries."""

    rank_by: dict[RankTask, RankMetric] = Field(
        default_factory=dict,
        description="Metric that ranks each task (task -> metric). Tasks not listed rank by "
        "their primary metric.",
        max_length=256,
        json_schema_extra={
            "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 253},
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(k, size(k) >= 1 && size(k) <= 200)",
                    "message": "task names are 1 to 200 characters",
                }
            ],
        },
    )
    storage: LeaderboardStorage = Field(
        default_factory=LeaderboardStorage, description="Where the full table lives."
    )
    top: int = Field(default=5, ge=1, le=50, description="Entries per task shown in status.")


class LeaderboardEntry(ApiModel):
    """One ranked score."""

    model_config = ConfigDict(extra="ignore")

    rank: Count = Field(description="Rank within the task (1 is best).")
    model: str = Field(
        description="Model identity: pretrained@revision for a checkpoint; for an API model "
        "its name (model_version) @ the endpoint's host.",
        max_length=2048,
    )
    revision: str | None = Field(default=None, description="Model revision.", max_length=256)
    settings: str | None = Field(
        default=None,
        description="Settings that change a score (limit, numFewshot, generation, the "
        "lmms-eval version): entries with other settings are other rows.",
        max_length=2048,
    )
    task: str = Field(description="Task name.", max_length=253)
    metric: str = Field(description="Metric name.", max_length=253)
    value: Real | None = Field(default=None, description="Metric value.")
    stderr: Real | None = Field(default=None, description="Standard error.")
    higher_is_better: bool | None = Field(default=None, description="Direction of the metric.")
    tied_with_best: bool | None = Field(
        default=None,
        description="Whether the gap to the task's best score is within error: not "
        "significant at p < 0.05 (a two-sided z-test on both standard errors). Absent for "
        "the best entry; false where a standard error is missing (no tie is claimed).",
    )
    run: str = Field(description="The EvalRun that produced it (namespace/name).", max_length=317)
    run_uid: str | None = Field(default=None, description="The uid of that EvalRun.", max_length=64)
    spec_hash: str | None = Field(
        default=None, description="The spec hash it evaluated.", max_length=64
    )
    finished_at: str | None = Field(
        default=None, description="When the run finished.", max_length=64
    )


class LeaderboardStatus(ApiModel):
    """A summary of the table; the full table is where ``tableLocation`` says."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: Count | None = Field(
        default=None,
        description="The metadata.generation (rankBy, top) the table reflects.",
    )
    entries: Count = Field(default=0, description="Number of entries.")
    models: Count = Field(default=0, description="Number of distinct models.")
    tasks: Count = Field(default=0, description="Number of distinct tasks.")
    last_update: Time | None = Field(
        default=None, description="When the table last changed.", max_length=64
    )
    top: Annotated[list[LeaderboardEntry], cap(MAX_TOP)] = Field(
        default_factory=list,
        description=f"Top entries per task (at most {MAX_TOP}; the table has them all).",
        max_length=MAX_TOP,
    )
    config_maps: Annotated[list[Name], cap(1024)] = Field(
        default_factory=list,
        description="ConfigMaps of the table.",
        max_length=1024,
        json_schema_extra={"items": {"type": "string", "maxLength": 253}},
    )
    table_location: Annotated[str, cap(2048)] | None = Field(
        default=None, description="Object-store URL, when used.", max_length=2048
    )
    conditions: Annotated[list[Condition], cap(MAX_CONDITIONS)] = Field(
        default_factory=list,
        description="Conditions (KEP-1623): ObjectStoreSynced when storage.s3 is set.",
        max_length=MAX_CONDITIONS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class Leaderboard(ApiModel):
    """A ranked table of scores that EvalRuns publish to."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(default="eval.lmms.dev/v1alpha1")
    kind: str = Field(default="Leaderboard")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LeaderboardSpec = Field(default_factory=LeaderboardSpec)
    status: LeaderboardStatus = Field(default_factory=LeaderboardStatus)
