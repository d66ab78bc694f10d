"""The Leaderboard API (``eval.lmms.dev/v1alpha1``)."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from .base import DNS_SUBDOMAIN, ApiModel
from .evalrun import S3Output


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

    rank_by: dict[str, str] = Field(
        default_factory=dict,
        description="Metric that ranks each task (task -> metric). Tasks not listed rank by "
        "their primary metric.",
    )
    storage: LeaderboardStorage = Field(
        default_factory=LeaderboardStorage, description="Where the full table lives."
    )
    top: int = Field(default=5, ge=1, le=50, description="Entries per task shown in status.")


class LeaderboardEntry(ApiModel):
    """One ranked score."""

    model_config = ConfigDict(extra="ignore")

    rank: int = Field(description="Rank within the task (1 is best).")
    model: str = Field(
        description="Model identity: pretrained@revision for a checkpoint; for an API model "
        "its name (model_version) @ the endpoint's host."
    )
    revision: str | None = Field(default=None, description="Model revision.")
    settings: str | None = Field(
        default=None,
        description="Settings that change a score (limit, numFewshot, generation, the "
        "lmms-eval version): entries with other settings are other rows.",
    )
    task: str = Field(description="Task name.")
    metric: str = Field(description="Metric name.")
    value: float | None = Field(default=None, description="Metric value.")
    stderr: float | None = Field(default=None, description="Standard error.")
    higher_is_better: bool | None = Field(default=None, description="Direction of the metric.")
    tied_with_best: bool | None = Field(
        default=None,
        description="Whether the gap to the task's best score is within error: not "
        "significant at p < 0.05 (a two-sided z-test on both standard errors). Absent for "
        "the best entry; false where a standard error is missing (no tie is claimed).",
    )
    run: str = Field(description="The EvalRun that produced it (namespace/name).")
    run_uid: str | None = Field(default=None, description="The uid of that EvalRun.")
    spec_hash: str | None = Field(default=None, description="The spec hash it evaluated.")
    finished_at: str | None = Field(default=None, description="When the run finished.")


class LeaderboardStatus(ApiModel):
    """A summary of the table; the full table is where ``tableLocation`` says."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(
        default=None, description="The metadata.generation (rankBy, top) the table reflects."
    )
    entries: int = Field(default=0, description="Number of entries.")
    models: int = Field(default=0, description="Number of distinct models.")
    tasks: int = Field(default=0, description="Number of distinct tasks.")
    last_update: str | None = Field(default=None, description="When the table last changed.")
    top: list[LeaderboardEntry] = Field(default_factory=list, description="Top entries per task.")
    config_maps: list[str] = Field(default_factory=list, description="ConfigMaps of the table.")
    table_location: str | None = Field(default=None, description="Object-store URL, when used.")
    conditions: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Conditions (KEP-1623): ObjectStoreSynced when storage.s3 is set.",
        json_schema_extra={
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        },
    )


class Leaderboard(ApiModel):
    """A ranked table of scores that EvalRuns publish to."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(default="eval.lmms.dev/v1alpha1")
    kind: str = Field(default="Leaderboard")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LeaderboardSpec = Field(default_factory=LeaderboardSpec)
    status: LeaderboardStatus = Field(default_factory=LeaderboardStatus)
