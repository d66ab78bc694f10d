"""A Plan: everything one pass over a run decided to change. Pure data.

A pass reads a snapshot (the run, its children from the watch caches, the objects it
references), the decisions of ``reconcile/`` compute a Plan from it, and the applier
(``lmms_operator.applier``, the only module that writes) carries it out, in this order:
children to delete, objects to create (a run's logged samples, all or none, after them;
the evaluation's objects last, the Job last of them), the Job's ``suspend`` (or, for a queued run, its Kueue Workload's ``active``), results to publish (Leaderboards, the evaluation index),
the status, the Events, children to stop once the status says why.

Some steps can only be decided after they were tried: a token Secret that exists
already must give its token to the Job, and a Job the API server refuses fails the run.
The applier does not decide those: it answers ``Replan`` with what it found, and the
pass plans again with that fact in its snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict


class StatusPatch(TypedDict, total=False):
    """A merge patch of an EvalRun's ``.status`` (camelCase, as on the wire; a field set
    to None is removed). Its keys are ``api.EvalRunStatus``'s fields, checked by mypy."""

    phase: str | None
    reason: str | None
    message: str | None
    observedGeneration: int | None
    conditions: list[dict[str, Any]]
    specHash: str | None
    jobName: str | None
    podName: str | None
    startTime: str | None
    completionTime: str | None
    progress: dict[str, Any] | None
    summary: str | None
    model: str | None
    tasks: str | None
    score: str | None
    duration: str | None
    shards: list[dict[str, Any]] | None
    reused: list[dict[str, Any]] | None
    results: list[dict[str, Any]]
    resultsConfigMap: str | None
    resultsLocation: str | None
    samples: dict[str, Any] | None
    leaderboardPublished: bool | None


@dataclass(frozen=True)
class Event:
    """A core/v1 Event about the run (``type`` Normal or Warning, a CamelCase reason)."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Create:
    """An object to create (a ConfigMap, Secret, Service, NetworkPolicy or Job); one that
    exists already counts as made. ``best_effort``: a failure is logged and the plan goes
    on (an evaluation-index entry restored from the object store)."""

    obj: Mapping[str, Any]
    best_effort: bool = False


@dataclass(frozen=True)
class KeepSamples:
    """The ConfigMaps of a run's logged samples: all of them or none. A failure deletes
    those made and answers ``Replan(samples_failed=...)``: the run's scores are published
    all the same, without the samples."""

    config_maps: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Evaluation:
    """The objects of a new evaluation, created in this order: the token Secret, the
    namespace's and the run's NetworkPolicies (before any pod exists), the run's
    ConfigMaps, the rendezvous Service, the Job. ``token_known``: the token was read from
    an existing Secret; when it was not and the Secret exists, the applier answers
    ``Replan(token_exists=True)``. A refused object deletes the token Secret (nothing
    half-created) and answers ``Replan(refused=...)``."""

    token_secret: Mapping[str, Any]
    job: Mapping[str, Any]
    before_job: tuple[Mapping[str, Any], ...] = ()
    token_known: bool = False


@dataclass(frozen=True)
class PublishEntries:
    """Leaderboard entries of a run to merge into the board's table (read-modify-write
    with optimistic concurrency; publishing them twice changes nothing)."""

    namespace: str
    board: str
    entries: tuple[Mapping[str, Any], ...]
    run_uid: str
    attempt: int = 1  # this run's tries so far, this one included: the last one ends in
    # a condition (Replan), not a retry


@dataclass(frozen=True)
class IndexEntries:
    """Evaluation-index entries a run adds (ConfigMaps, first result wins) and their copy
    in the run's bucket; best effort: the index saves later work, nothing more."""

    config_maps: tuple[Mapping[str, Any], ...]
    s3: Mapping[str, Any] | None = None  # spec.output.s3, for the copy
    s3_prefix: str = ""


@dataclass(frozen=True)
class Needs:
    """Results a pass must read before it can decide (a run whose Job succeeded): the
    controller reads them (``reads.results``) and the pass decides again with them."""

    termination: str | None = None  # the runner's termination message
    image: str | None = None  # the runner image's digest
    shards: bool = False  # a fan-out: every shard's results


@dataclass(frozen=True)
class Replan:
    """What the applier found that the plan could not know: the pass plans again."""

    token_exists: bool = False
    job_exists: bool = False
    refused: str | None = None  # the API server's message about a refused object
    publish_failed: str | None = None  # a Leaderboard publish that will not be retried
    samples_failed: str | None = None  # the samples' ConfigMaps were not made

    def joined(self, found: Replan) -> Replan:
        """What the attempts of one pass have found so far, with ``found``."""
        return Replan(
            token_exists=self.token_exists or found.token_exists,
            job_exists=self.job_exists or found.job_exists,
            refused=found.refused or self.refused,
            publish_failed=found.publish_failed or self.publish_failed,
            samples_failed=found.samples_failed or self.samples_failed,
        )


@dataclass
class Plan:
    status: StatusPatch = field(default_factory=lambda: StatusPatch())
    events: list[Event] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # label selectors, first
    create: list[Create] = field(default_factory=list)
    samples: KeepSamples | None = None  # after ``create``, before publishing
    evaluation: Evaluation | None = None
    suspend: tuple[str, bool] | None = None  # (Job name, suspend)
    activate: tuple[str, bool] | None = None  # (Kueue Workload name, spec.active)
    publish: list[PublishEntries] = field(default_factory=list)
    index: list[IndexEntries] = field(default_factory=list)
    stop: str | None = None  # label selector, deleted after the status is written
    stop_reason: str = ""
    retry_after: float | None = None  # seconds: a referenced object is missing
    needs: Needs | None = None  # not a complete plan yet: read these, then decide again

    def __bool__(self) -> bool:
        return bool(
            self.status
            or self.events
            or self.delete
            or self.create
            or self.samples
            or self.evaluation
            or self.suspend
            or self.activate
            or self.publish
            or self.index
            or self.stop
        )

    def then(self, other: Plan) -> Plan:
        """This plan followed by ``other`` (its status fields win)."""
        return Plan(
            status=StatusPatch(**{**self.status, **other.status}),
            events=[*self.events, *other.events],
            delete=[*self.delete, *other.delete],
            create=[*self.create, *other.create],
            samples=other.samples or self.samples,
            evaluation=other.evaluation or self.evaluation,
            suspend=other.suspend or self.suspend,
            activate=other.activate or self.activate,
            publish=[*self.publish, *other.publish],
            index=[*self.index, *other.index],
            stop=other.stop or self.stop,
            stop_reason=other.stop_reason or self.stop_reason,
            retry_after=other.retry_after if other.retry_after is not None else self.retry_after,
            needs=other.needs or self.needs,
        )
