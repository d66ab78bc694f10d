"""Publishing a run's results: kept per shard as its runners finish, merged, and published
once (the results ConfigMap, the run's Leaderboard, the evaluation index). Pure: the
results come in ``Inputs``, read beforehand (``lmms_operator.reads.results``), from the
runner, or when it was not reached, from the object store it uploaded to or its
termination message.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import catalogue
from ..api import EvalRunSpec, MetricResult
from ..api.runner import LoggedSamples, ResultsSummary
from . import columns, reuse
from . import conditions as C
from . import job as jobs
from . import reasons as R
from . import results as res
from . import samples as sample_maps
from . import shards as shard_plan
from .leaderboard import entries_for_run
from .plan import (
    Create,
    Event,
    IndexEntries,
    KeepSamples,
    Plan,
    PublishEntries,
    Replan,
    StatusPatch,
)
from .times import fmt_time

#: Where results came from (in the results ConfigMap and the Event).
FROM_RUNNER = "runner"
FROM_INDEX = "evaluation index"
FROM_STORE = "object store"
FROM_MESSAGE = "termination message"

#: A Leaderboard publish that fails this many times in a row becomes a condition on the
#: run (LeaderboardPublished False) and a Warning Event instead of an endless retry; the
#: results stay in the run's status and ConfigMap.
PUBLISH_TRIES = 5


@dataclass(frozen=True)
class Inputs:
    """What a publishing decision needs, read before it."""

    summary: ResultsSummary | None = None  # from the runner (or the evaluation index)
    samples: LoggedSamples | None = None  # the logged samples, from the runner
    samples_failed: str | None = None  # why the samples' ConfigMaps were not made
    image: str | None = None  # the runner image's digest
    source: str = FROM_RUNNER
    termination: str | None = None  # the runner's termination message
    store_summary: ResultsSummary | None = None  # from where the message says it uploaded
    store_error: str | None = None  # why the object store was not read
    kept_reused: tuple[reuse.Entry, ...] = ()  # index entries kept when the Job was made
    reuse_key: Mapping[str, Any] | None = None  # from the Job's run configuration
    publish_failures: int = 0  # Leaderboard publishes of this run that failed so far
    publish_failed: str | None = None  # the last one, when it will not be retried
    kept_shards: Mapping[int, tuple[ResultsSummary, str]] = field(default_factory=dict)
    # The object store's summary of a finished shard's pod, or why it was not read.
    pod_summaries: Mapping[str, tuple[ResultsSummary | None, str | None]] = field(
        default_factory=dict
    )

    def after(self, facts: Replan) -> Inputs:
        """These inputs with what the applier found (a publish given up, samples not kept)."""
        return dataclasses.replace(
            self,
            publish_failed=facts.publish_failed,
            samples_failed=facts.samples_failed or self.samples_failed,
        )


def may_reuse(spec: EvalRunSpec, source: str) -> bool:
    """Whether tasks of the run may have been reused when its Job was made (only such a
    run has kept index entries to merge)."""
    return (
        source != FROM_INDEX
        and spec.reuse == "IfIdentical"
        and not spec.evaluation.log_samples
        and reuse.not_pinned(spec) is None
    )


def indexable(spec: EvalRunSpec) -> bool:
    return reuse.not_pinned(spec) is None


@dataclass(frozen=True)
class _Found:
    """Where a run's results were found and what they are."""

    summary: ResultsSummary | None  # merged with the reused tasks' results
    fresh: ResultsSummary | None  # what this run evaluated: it goes to the index
    primaries: list[dict[str, Any]]
    source: str
    location: str | None
    events: list[Event]


def _found(spec: EvalRunSpec, inputs: Inputs, kept: list[reuse.Entry]) -> _Found:
    """The results: the runner's (or the index's), else the object store's, else the
    termination message's primary metrics; merged with the reused tasks' results."""
    reused = reuse.reused_summary(kept) if kept else None
    summary, source = inputs.summary, inputs.source
    location = summary.s3_location if summary is not None else None
    events: list[Event] = []
    if summary is None:
        location = res.location_from_termination_message(inputs.termination)
        summary, source = inputs.store_summary, FROM_STORE
        if inputs.store_error is not None:
            message = f"falling back to the termination message: {inputs.store_error}"
            events.append(Event("Warning", R.RESULTS_NOT_IN_OBJECT_STORE, message))
    fresh = summary
    if summary is not None and reused is not None:
        units = shard_plan.units(spec)
        summary = reuse.in_unit_order(shard_plan.merge([summary, reused]), units)
    if summary is not None:
        return _Found(summary, fresh, res.primary_results(summary), source, location, events)
    primaries = res.from_termination_message(inputs.termination) or []
    if primaries and reused is not None:
        primaries += res.primary_results(reused)
    return _Found(None, None, primaries, FROM_MESSAGE, location, events)


def decide(
    run: Mapping[str, Any],
    spec: EvalRunSpec,
    status: Mapping[str, Any],
    inputs: Inputs,
    now: dt.datetime,
) -> Plan:
    """The results ConfigMap (owned by the run; with the runner image's digest), the
    publish to the run's Leaderboard and the evaluation-index entries, all before the
    status says so (a failure is retried; publishing the same run twice changes
    nothing); the status fields and the Events. Nothing when published already."""
    if status.get("resultsConfigMap"):
        return Plan()
    meta = run["metadata"]
    kept = list(inputs.kept_reused) if may_reuse(spec, inputs.source) else []
    found = _found(spec, inputs, kept)
    if found.summary is None and not found.primaries:
        return Plan(events=found.events)  # nothing to publish: no results anywhere
    summary_json = found.summary.model_dump_json(by_alias=True, indent=1) if found.summary else None
    name = f"{status.get('jobName') or meta['name']}-results"
    data = res.config_map_data(summary_json, found.primaries, found.source, found.location)
    if inputs.image:
        data["image"] = inputs.image[:512]
    labels = {f"{jobs.LABEL_PREFIX}/results-of": meta["uid"]}
    plan = Plan(create=[Create(owned_config_map(run, name, labels, data))])
    plan.status = StatusPatch(
        results=[MetricResult.model_validate(p).to_wire() for p in found.primaries],
        resultsConfigMap=name,
        score=columns.headline_score(found.primaries, shard_plan.units(spec)),
    )
    commit = found.summary.provenance.commit if found.summary is not None else None
    served = found.summary.provenance.served_model if found.summary is not None else None
    if commit or served:  # the model as its Leaderboard entries name it
        plan.status["model"] = columns.model(run.get("spec") or {}, commit, served)
    if kept and not status.get("reused"):
        plan.status["reused"] = reuse.reused_status(kept, meta["namespace"])
    events = list(found.events)
    if spec.leaderboard:
        published = _leaderboard(run, status, found.summary, found.primaries, inputs, now)
        plan.status.update(published.status)
        plan.publish += published.publish
        events += published.events
    if found.location:
        plan.status["resultsLocation"] = found.location
    if found.fresh is not None and found.source != FROM_INDEX:
        plan.index += _index_entries(run, spec, status, found.fresh, kept, inputs, now)
    if spec.evaluation.log_samples:
        logged = _samples(run, spec, status, inputs, found.location)
        plan.samples = logged.samples
        plan.status.update(logged.status)
        events += logged.events
    message = (
        f"results of {len(found.primaries)} task(s) in ConfigMap {name} (from the {found.source})"
    )
    plan.events = [Event("Normal", R.RESULTS_COLLECTED, message), *events]
    if found.source.startswith(FROM_RUNNER) and not found.location and spec.output is not None:
        plan.events.append(
            Event(
                "Warning",
                R.RESULTS_NOT_UPLOADED,
                "the runner could not upload the output to spec.output.s3 (see its log); "
                "the results are in the status and the results ConfigMap",
            )
        )
    return plan


def _samples(
    run: Mapping[str, Any],
    spec: EvalRunSpec,
    status: Mapping[str, Any],
    inputs: Inputs,
    location: str | None,
) -> Plan:
    """The logged samples' ConfigMaps (all or none) and ``status.samples``; when they
    could not be made, or the runner's samples were not read, the pointer says where the
    full files are (the object store, the cache volume), and a Warning says why."""
    job_name = str(status.get("jobName") or run["metadata"]["name"])
    claim = spec.cache.persistent_volume_claim if spec.cache is not None else None
    if inputs.samples is None:
        where = f" (the output at {location} holds them)" if location else ""
        message = "the logged samples were not read from the runner" + where
        pointer: dict[str, Any] = {"tasks": []}
        if location:
            pointer["location"] = location
        return Plan(
            status=StatusPatch(samples=pointer),
            events=[Event("Warning", R.SAMPLES_NOT_KEPT, message)],
        )
    maps, pointer = sample_maps.keep(job_name, inputs.samples, location, claim)
    # What the operator's bounds on the runner's answer left out (records, tasks).
    left = f"; left out: {inputs.samples.left_out}" if inputs.samples.left_out else ""
    if inputs.samples_failed is not None or not maps:
        for task in pointer["tasks"]:
            task.update(kept=0, configMaps=[], truncated=True)
        why = inputs.samples_failed or "no records to keep"
        message = f"the logged samples were not kept in ConfigMaps: {why}{left}"[:1024]
        return Plan(
            status=StatusPatch(samples=pointer),
            events=[Event("Warning", R.SAMPLES_NOT_KEPT, message)],
        )
    labels = sample_maps.labels(run)
    objs = tuple(owned_config_map(run, n, labels, data) for n, data in maps.items())
    records = sum(t["kept"] for t in pointer["tasks"])
    message = f"{records} logged sample(s) of {len(pointer['tasks'])} task(s) in " + ", ".join(maps)
    message = (message + left)[:1024]
    return Plan(
        status=StatusPatch(samples=pointer),
        samples=KeepSamples(objs),
        events=[Event("Normal", R.SAMPLES_KEPT, message)],
    )


def _leaderboard(
    run: Mapping[str, Any],
    status: Mapping[str, Any],
    summary: ResultsSummary | None,
    primaries: list[dict[str, Any]],
    inputs: Inputs,
    now: dt.datetime,
) -> Plan:
    """The publish to the run's Leaderboard, before the status says "published" (a
    failure is retried a bounded number of times; publishing the same run again changes
    nothing), or, once the applier gave up on it, the condition that says so."""
    meta = run["metadata"]
    board = str((run.get("spec") or {}).get("leaderboard"))
    if inputs.publish_failed is not None:
        cond = C.condition(
            None,
            R.LEADERBOARD_PUBLISHED,
            "False",
            R.PUBLISH_FAILED,
            inputs.publish_failed,
            now,
            int(meta.get("generation") or 1),
        )
        return Plan(
            status=StatusPatch(
                leaderboardPublished=False, conditions=C.put(status.get("conditions"), cond)
            ),
            events=[Event("Warning", R.PUBLISH_FAILED, inputs.publish_failed)],
        )
    version = summary.provenance.lmms_eval_version if summary is not None else None
    entries = entries_for_run(
        {**run, "status": {**(run.get("status") or {}), **status}},
        primaries,
        fmt_time(now),
        version or catalogue.load().lmms_eval_version,
        summary.provenance.commit if summary is not None else None,
        summary.provenance.served_model if summary is not None else None,
    )
    step = PublishEntries(
        meta["namespace"], board, tuple(entries), meta["uid"], attempt=inputs.publish_failures + 1
    )
    return Plan(status=StatusPatch(leaderboardPublished=True), publish=[step])


def owned_config_map(
    run: Mapping[str, Any], name: str, labels: Mapping[str, str], data: Mapping[str, str]
) -> dict[str, Any]:
    meta = run["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {jobs.LABEL_MANAGED_BY: jobs.MANAGED_BY, **labels},
            "ownerReferences": [
                jobs.RunRef(meta["name"], meta["namespace"], meta["uid"]).owner_reference()
            ],
        },
        "data": dict(data),
    }


def _index_entries(
    run: Mapping[str, Any],
    spec: EvalRunSpec,
    status: Mapping[str, Any],
    summary: ResultsSummary,
    reused: list[reuse.Entry],
    inputs: Inputs,
    now: dt.datetime,
) -> list[IndexEntries]:
    """The run's newly evaluated tasks as evaluation-index entries (first result wins: an
    identity evaluated twice keeps the first)."""
    meta = run["metadata"]
    cat = catalogue.load()
    key = inputs.reuse_key
    version = summary.provenance.lmms_eval_version
    if not indexable(spec) or version != cat.lmms_eval_version or not isinstance(key, dict):
        return []  # (another lmms-eval than the operator's: lookups could never find it)
    done = {e.task for e in reused}
    units = [u for u in shard_plan.units(spec) if u not in done]
    owned = reuse.attribute(units, summary, cat.groups | cat.tags)
    source = reuse.Source(
        namespace=meta["namespace"],
        run=meta["name"],
        uid=meta["uid"],
        job=status.get("jobName"),
        completed_at=fmt_time(now),
        image=inputs.image,
        location=summary.s3_location,
    )
    provenance = summary.provenance.to_wire()
    cms = [
        reuse.entry_config_map(
            meta["namespace"],
            reuse.Entry(task=unit, key=key, results=results, provenance=provenance, source=source),
        )
        for unit, results in owned.items()
    ]
    if not cms:
        return []
    s3 = spec.output.s3 if spec.output else None
    return [
        IndexEntries(
            tuple(cms),
            s3.model_dump(by_alias=True) if s3 is not None else None,
            reuse.bucket_prefix(s3.prefix, meta["namespace"], key) if s3 is not None else "",
        )
    ]
