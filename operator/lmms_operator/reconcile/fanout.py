"""A fan-out's results: each shard's kept in a ConfigMap owned by the run as its runner
finishes (so that it may exit and free its GPUs at once), and merged and published as one
result set once every shard's are in. Pure."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from ..api import EvalRunSpec
from ..api.runner import Metric, Provenance, ResultsSummary, TaskResult
from . import job as jobs
from . import reasons as R
from . import results as res
from . import shards as shard_plan
from .plan import Create, Event, Plan
from .pods import completion_index, created, image_id, termination_message
from .publishing import FROM_MESSAGE, FROM_RUNNER, FROM_STORE, Inputs, decide, owned_config_map

#: A shard's kept results: a ConfigMap owned by the run, labelled with these.
SHARD_OF = f"{jobs.LABEL_PREFIX}/shard-of"
SHARD_INDEX = f"{jobs.LABEL_PREFIX}/shard-index"


def shard_data(summary: ResultsSummary, image: str | None) -> dict[str, str]:
    """A shard's results as kept until every shard's are in: the full summary when it
    fits in a ConfigMap, else each task's primary metric only (marked truncated)."""
    text = summary.model_dump_json(by_alias=True)
    if len(text.encode()) > res.CONFIG_MAP_BUDGET:
        # (What a runner reports is bounded: at most MAX_TASKS tasks, names of MAX_NAME.)
        slim = summary.model_copy(
            update={
                "tasks": [
                    t.model_copy(
                        update={
                            "task": t.task[: res.MAX_NAME],
                            "primary": (t.primary or "")[: res.MAX_NAME] or None,
                            "metrics": [
                                m.model_copy(update={"name": m.name[: res.MAX_NAME], "raw": None})
                                for m in t.metrics
                                if m.name == t.primary
                            ][:1],
                        }
                    )
                    for t in summary.tasks[: res.MAX_TASKS]
                ],
                "provenance": summary.provenance.model_copy(update={"argv": [], "locked": {}}),
                "truncated": True,
            }
        )
        text = slim.model_dump_json(by_alias=True)
    return {"summary.json": text, **({"image": image[:512]} if image else {})}


def collect_shard(
    run: Mapping[str, Any],
    spec: EvalRunSpec,
    status: Mapping[str, Any],
    index: int,
    summary: ResultsSummary,
    image: str | None,
    inputs: Inputs,
    now: dt.datetime,
) -> Plan:
    """Keeps one shard's results in a ConfigMap owned by the run (so that its runner may
    exit and free its GPUs at once); once every shard's are kept, publishes the merged
    result set, once. ``inputs.kept_shards``: the shards kept before this one."""
    shards = [dict(s) for s in status.get("shards") or []]
    if status.get("resultsConfigMap") or not any(s.get("index") == index for s in shards):
        return Plan()
    meta = run["metadata"]
    labels = {
        SHARD_OF: meta["uid"],
        SHARD_INDEX: str(index),
        jobs.LABEL_SPEC_HASH: str(status.get("specHash") or ""),
    }
    name = f"{status.get('jobName')}-shard-{index}"
    plan = Plan(create=[Create(owned_config_map(run, name, labels, shard_data(summary, image)))])
    for entry in shards:
        if entry.get("index") == index:
            entry.update(resultsCollected=True, phase="done", percent=100.0)
    plan.status["shards"] = shards
    if all(s.get("resultsCollected") for s in shards):
        kept = {**inputs.kept_shards, index: (summary, image or "")}
        merged = dataclasses.replace(inputs, kept_shards=kept)
        plan = plan.then(decide_shards(run, spec, {**status, "shards": shards}, [], merged, now))
    return plan


def decide_shards(
    run: Mapping[str, Any],
    spec: EvalRunSpec,
    status: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    inputs: Inputs,
    now: dt.datetime,
) -> Plan:
    """Merges the shards' results (kept ones first; for the others, their pods' uploads
    or termination messages) and publishes them as one result set; nothing while a
    shard's results are missing."""
    if status.get("resultsConfigMap"):
        return Plan()
    parts: list[ResultsSummary] = []
    sources: list[str] = []
    images: list[str] = []
    events: list[Event] = []
    for entry in status.get("shards") or []:
        index = int(entry.get("index", 0))
        if index in inputs.kept_shards:
            summary, image = inputs.kept_shards[index]
            source = FROM_RUNNER
        else:
            own = [p for p in pods if completion_index(p) == index]
            succeeded = [
                p
                for p in sorted(own, key=created, reverse=True)
                if (p.get("status") or {}).get("phase") == R.POD_SUCCEEDED
            ]
            found = _summary_of_pod(run, succeeded[0], inputs, events) if succeeded else None
            if found is None:
                return Plan(events=events)
            (summary, source), image = found, image_id(own) or ""
        parts.append(summary)
        sources.append(source)
        images.append(image)
    if len(set(sources)) == 1:
        described = f"{sources[0]}, {len(parts)} shards"
    else:
        described = f"{len(parts)} shards: " + ", ".join(
            f"{i} from the {src}" for i, src in enumerate(sources)
        )
    merged = dataclasses.replace(
        inputs,
        summary=shard_plan.merge(parts),
        image=images[0] if images else None,
        source=described,
    )
    published = decide(run, spec, status, merged, now)
    published.events += events
    return published


def _summary_of_pod(
    run: Mapping[str, Any], pod: Mapping[str, Any], inputs: Inputs, events: list[Event]
) -> tuple[ResultsSummary, str] | None:
    """A finished shard's results when its runner was not reached, and where they came
    from: the object store it uploaded to, then its termination message (primary
    metrics only)."""
    summary, error = inputs.pod_summaries.get(pod["metadata"]["name"], (None, None))
    if summary is not None:
        return summary, FROM_STORE
    if error is not None:
        events.append(
            Event(
                "Warning",
                R.RESULTS_NOT_IN_OBJECT_STORE,
                f"falling back to the termination message: {error}",
            )
        )
    primaries = res.from_termination_message(termination_message([dict(pod)]))
    if not primaries:
        return None
    model = str(((run.get("spec") or {}).get("model") or {}).get("type") or "")
    return ResultsSummary(
        tasks=[
            TaskResult(
                task=p["task"],
                primary=p["metric"],
                metrics=[Metric(name=p["metric"], value=p["value"])],
            )
            for p in primaries
        ],
        provenance=Provenance(model=model, config_hash=""),
        truncated=True,
    ), FROM_MESSAGE
