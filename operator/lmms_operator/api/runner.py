"""What the runner serves and the operator reads: one definition for both sides."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from .base import ApiModel

RunnerPhase = Literal[
    "starting", "loading", "evaluating", "postprocessing", "uploading", "done", "failed"
]

#: Runner exit codes. The operator maps them to failure reasons; a configuration error
#: fails the Job at once (podFailurePolicy) instead of being retried.
EXIT_OK = 0
EXIT_CONFIG_ERROR = 2
EXIT_EVALUATION_FAILED = 3
EXIT_UPLOAD_FAILED = 4

TERMINATION_MESSAGE_LIMIT = 4096

#: Failure reasons the runner names in its termination message (``"reason"``), which
#: the operator shows as the run's own reason: the pod's GPUs cannot run the image's
#: torch (its driver is older than the torch build's CUDA needs), or CUDA finds no GPU or
#: no driver at all. Both exit EXIT_CONFIG_ERROR: a retry on the same node cannot help.
DRIVER_TOO_OLD = "DriverTooOld"
NO_GPU = "NoGPU"
#: The model server (an engine sidecar or spec.model.endpoint) did not list a model within
#: LMMS_MODEL_WAIT_SECONDS (exits EXIT_EVALUATION_FAILED: a retry may find it up).
MODEL_NOT_READY = "ModelNotReady"
RUNNER_FAILURE_REASONS = (DRIVER_TOO_OLD, NO_GPU, MODEL_NOT_READY)

#: Set by a node whose GPUs are simulated (the devcluster's executor): no driver to check.
SIMULATED_GPUS_ENV = "LMMS_SIMULATED_GPUS"


class TaskState(ApiModel):
    name: str
    done: int = 0
    total: int = 0


class Harness(ApiModel):
    """Which lmms-eval the runner found and whether its patches apply."""

    lmms_eval_version: str | None = None
    patched: bool = True
    message: str | None = None


class RunnerProgress(ApiModel):
    """``GET /progress``."""

    phase: RunnerPhase = "starting"
    percent: float = 0.0
    done: int = 0
    total: int = 0
    tasks: list[TaskState] = Field(default_factory=list)
    samples_per_second: float | None = None
    eta_seconds: float | None = None
    started_at: str | None = None
    updated_at: str | None = None
    reason: str | None = None
    message: str | None = None
    last_lines: list[str] = Field(default_factory=list)
    #: Which lmms-eval runs, and whether with the runner's patches (None from a runner
    #: that predates the field).
    harness: Harness | None = None


class Metric(ApiModel):
    name: str
    value: float | None = None
    raw: str | None = Field(default=None, description="The value as written when not numeric.")
    stderr: float | None = None
    higher_is_better: bool | None = None


class TaskResult(ApiModel):
    task: str
    group: bool = False
    samples: int | None = None
    primary: str | None = None
    metrics: list[Metric] = Field(default_factory=list)


class Provenance(ApiModel):
    lmms_eval_version: str | None = None
    torch_version: str | None = None
    model: str
    pretrained: str | None = None
    revision: str | None = None
    commit: str | None = Field(
        default=None,
        description="The commit the Hub resolved the revision to, from the runner's cache.",
    )
    seed: int | None = None
    judge: str | None = Field(
        default=None,
        description="The judge of judged tasks, <model>@<endpoint> (spec.judge).",
        max_length=1400,
    )
    lock_sha256: str | None = Field(
        default=None, description="The sha256 of the lock file the runner was installed from."
    )
    locked: dict[str, str] = Field(
        default_factory=dict, description="Every locked package and its version."
    )
    config_hash: str
    served_model: str | None = Field(
        default=None,
        description="The id the model server listed at /v1/models (an engine or endpoint run).",
    )
    endpoint: str | None = Field(
        default=None, description="The model server's base URL (an engine or endpoint run)."
    )
    argv: list[str] = Field(default_factory=list, description="The exact command, redacted.")


#: The runner writes its ResultsSummary under this name into the output it uploads, so
#: that the operator can read the results from the object store.
RESULTS_SUMMARY_FILE = "results-summary.json"


def results_prefix(prefix: str, namespace: str, name: str) -> str:
    """The key prefix under which a run's output goes in its bucket:
    ``<spec.output.s3.prefix>/<namespace>/<run name>/`` (the runner adds its config hash).
    The operator reads a run's results from under this prefix only."""
    parts = [p for p in (prefix.strip("/"), namespace, name) if p]
    return "/".join(parts) + "/"


class ResultsSummary(ApiModel):
    """``GET /results`` and (compacted) the termination message."""

    tasks: list[TaskResult] = Field(default_factory=list)
    provenance: Provenance
    results_file: str | None = None
    s3_location: str | None = None
    evaluation_seconds: float | None = None
    truncated: bool = False


# -- logged samples (``spec.evaluation.logSamples``) ----------------------------------------------

#: A sample's text fields (its target and filtered response) are cut to this many
#: characters; the record says so (``cut``).
SAMPLE_TEXT_LIMIT = 200
#: The most per-sample metric values a record keeps.
SAMPLE_SCORES_LIMIT = 16
#: The most bytes of samples a runner serves (``GET /samples``), in all: under the
#: operator's bound on an answer, and the most the run's sample ConfigMaps hold.
SAMPLES_BYTES_LIMIT = 3 * 1024 * 1024
#: The most records a runner serves and the operator reads from one ``GET /samples``
#: answer (the operator counts the rest as left out): what SAMPLES_BYTES_LIMIT holds of
#: records with scores and no text. A bound on the operator's memory, which holds each
#: record it keeps as one line of text, whatever the answer's records look like.
SAMPLES_MAX_RECORDS = 100_000
#: The most bytes the operator reads of a ``GET /samples`` answer (the records and a line
#: per task), below its bound on the other answers (``runnerprotocol.MAX_RESPONSE``).
SAMPLES_MAX_RESPONSE = SAMPLES_BYTES_LIMIT + 512 * 1024
#: The longest line of a ``GET /samples`` answer the operator reads (a record's bounded
#: fields take far less); a longer one is not parsed.
SAMPLES_MAX_LINE = 32 * 1024


class SampleRecord(ApiModel):
    """One document of a task as lmms-eval logged it (``samples_<task>.jsonl``), compact:
    its id, the target and the filtered response (cut to ``SAMPLE_TEXT_LIMIT``
    characters), and its per-sample metric values (numbers only)."""

    id: int | str = Field(description="lmms-eval's doc_id.")
    target: str | None = None
    response: str | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    cut: bool = Field(default=False, description="A text field was cut.")


class TaskSamples(ApiModel):
    task: str
    count: int = Field(description="Documents lmms-eval logged for the task.")
    truncated: bool = Field(
        default=False,
        description="Records were left out or shortened: text fields cut, text dropped to "
        "keep the scores, or records dropped (``note`` says which).",
    )
    note: str | None = None
    records: list[SampleRecord] = Field(default_factory=list)


class SamplesReport(ApiModel):
    """The runner's logged samples of every task, compact, within ``SAMPLES_BYTES_LIMIT``;
    served as JSON Lines (``jsonl``)."""

    tasks: list[TaskSamples] = Field(default_factory=list)
    path: str | None = Field(
        default=None, description="Where the full samples files were copied (the cache volume)."
    )

    def jsonl(self) -> str:
        """``GET /samples`` as served: JSON Lines, never one document, so that the operator
        reads it a line at a time within its bounds: ``{"path": ...}`` first (when there is
        one), then per task a line ``{"task": ..., "count": ...}`` (``truncated``, ``note``)
        followed by its records, one a line (``{"id": ...}``)."""
        parts = [json.dumps({"path": self.path})] if self.path else []
        for task in self.tasks:
            dump = task.model_dump_json(by_alias=True, exclude_defaults=True, exclude={"records"})
            parts.append(dump)
            parts.extend(
                r.model_dump_json(by_alias=True, exclude_defaults=True) for r in task.records
            )
        return "".join(f"{part}\n" for part in parts)


@dataclass(frozen=True)
class LoggedTask:
    """One task's logged samples as the operator holds them: its records as the lines of
    its ConfigMaps' key (escaped and bounded), never one object per record."""

    task: str
    count: int
    truncated: bool = False
    note: str | None = None
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoggedSamples:
    """A ``GET /samples`` answer as the operator read it (``reconcile.samples.read``);
    ``left_out``: what the operator's own bounds left out (None: nothing)."""

    tasks: tuple[LoggedTask, ...] = ()
    path: str | None = None
    left_out: str | None = None
