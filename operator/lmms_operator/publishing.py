"""A run's results: kept per shard as its runners finish, merged, and published once
(the results ConfigMap, the run's Leaderboard, the evaluation index), from the runner, or
when it was not reached, from the object store it uploaded to or its termination
message. The controller (``observe``) and the runtime's scrapes call these; the pure
parts are ``reconcile/results.py`` and ``reconcile/shards.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from . import catalogue, errors, evaluation_index, k8s, leaderboards, metrics, objectstore
from .api import Condition, EvalRunSpec, MetricResult, S3Output
from .api.runner import Metric, Provenance, ResultsSummary, TaskResult, results_prefix
from .reconcile import job as jobs
from .reconcile import reasons as R
from .reconcile import results as res
from .reconcile import reuse
from .reconcile import shards as shard_plan
from .reconcile import status as st
from .reconcile.plan import Event, Plan

log = logging.getLogger("lmms.publishing")

#: A shard's kept results: a ConfigMap owned by the run, labelled with these.
SHARD_OF = f"{jobs.LABEL_PREFIX}/shard-of"
SHARD_INDEX = f"{jobs.LABEL_PREFIX}/shard-index"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _shard_data(summary: ResultsSummary, image: str | None) -> dict[str, str]:
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
    body: Mapping[str, Any],
    status: Mapping[str, Any],
    index: int,
    summary: ResultsSummary,
    image: str | None,
) -> Plan:
    """Keeps one shard's results in a ConfigMap owned by the run (so that its runner may
    exit and free its GPUs at once); once every shard's are kept, publishes the merged
    result set, once."""
    shards = [dict(s) for s in status.get("shards") or []]
    if status.get("resultsConfigMap") or not any(s.get("index") == index for s in shards):
        return Plan()
    meta = body["metadata"]
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{status.get('jobName')}-shard-{index}",
            "namespace": meta["namespace"],
            "labels": {
                jobs.LABEL_MANAGED_BY: jobs.MANAGED_BY,
                SHARD_OF: meta["uid"],
                SHARD_INDEX: str(index),
                jobs.LABEL_SPEC_HASH: str(status.get("specHash") or ""),
            },
            "ownerReferences": [
                jobs.RunRef(meta["name"], meta["namespace"], meta["uid"]).owner_reference()
            ],
        },
        "data": _shard_data(summary, image),
    }
    k8s.create(cm)
    for entry in shards:
        if entry.get("index") == index:
            entry.update(resultsCollected=True, phase="done", percent=100.0)
    plan = Plan(status={"shards": shards})
    if all(s.get("resultsCollected") for s in shards):
        plan = plan.then(publish_shards(body, {**status, "shards": shards}, []))
    return plan


def _kept_shards(namespace: str, uid: str, hash_: str) -> dict[int, tuple[ResultsSummary, str]]:
    kept: dict[int, tuple[ResultsSummary, str]] = {}
    for cm in k8s.list_config_maps(namespace, f"{SHARD_OF}={uid},{jobs.LABEL_SPEC_HASH}={hash_}"):
        data = cm.get("data") or {}
        try:
            index = int((cm["metadata"].get("labels") or {}).get(SHARD_INDEX, ""))
            summary = ResultsSummary.model_validate_json(data.get("summary.json") or "")
        except ValueError:
            continue
        kept[index] = (summary, str(data.get("image") or ""))
    return kept


def _summary_of_pod(
    body: Mapping[str, Any], pod: Mapping[str, Any]
) -> tuple[ResultsSummary, str] | None:
    """A finished shard's results when its runner was not reached, and where they came
    from: the object store it uploaded to, then its termination message (primary
    metrics only)."""
    message = termination_message([dict(pod)])
    summary = _summary_from_object_store(body, res.location_from_termination_message(message))
    if summary is not None:
        return summary, "object store"
    primaries = res.from_termination_message(message)
    if not primaries:
        return None
    spec = body.get("spec") or {}
    model = str((spec.get("model") or {}).get("type") or "")
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
    ), "termination message"


def publish_shards(
    body: Mapping[str, Any], status: Mapping[str, Any], pods: list[dict[str, Any]]
) -> Plan:
    """Merges the shards' results (kept ones first; for the others, their pods' uploads
    or termination messages) and publishes them as one result set; nothing while a
    shard's results are missing."""
    if status.get("resultsConfigMap"):
        return Plan()
    meta = body["metadata"]
    shards = status.get("shards") or []
    kept = _kept_shards(meta["namespace"], meta["uid"], str(status.get("specHash") or ""))
    parts: list[ResultsSummary] = []
    sources: list[str] = []
    images: list[str] = []
    for entry in shards:
        index = int(entry.get("index", 0))
        if index in kept:
            summary, image = kept[index]
            source = "runner"
        else:
            own = [p for p in pods if completion_index(p) == index]
            found = next(
                (
                    _summary_of_pod(body, p)
                    for p in sorted(own, key=_created, reverse=True)
                    if (p.get("status") or {}).get("phase") == "Succeeded"
                ),
                None,
            )
            if found is None:
                return Plan()
            (summary, source), image = found, image_id(own) or ""
        parts.append(summary)
        sources.append(source)
        images.append(image)
    merged = shard_plan.merge(parts)
    if len(set(sources)) == 1:
        described = f"{sources[0]}, {len(parts)} shards"
    else:
        described = f"{len(parts)} shards: " + ", ".join(
            f"{i} from the {src}" for i, src in enumerate(sources)
        )
    return publish_results(body, status, merged, None, images[0] if images else None, described)


def _created(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def publish_results(
    body: Mapping[str, Any],
    status: Mapping[str, Any],
    summary: ResultsSummary | None,
    termination: str | None,
    image_id: str | None = None,
    source: str = "runner",
) -> Plan:
    """Writes the results ConfigMap (owned by the run; with the runner image's digest,
    ``image_id``, as the kubelet reported it) and publishes to the run's
    Leaderboard, before the status says so (a failure is retried; publishing the same
    run twice changes nothing); returns the status fields and the Event.
    The results come from the runner (``summary``); when it could not be reached, from
    the object store the runner uploaded to, then from its termination message.
    Idempotent: a ConfigMap that exists already is the one published before."""
    if status.get("resultsConfigMap"):
        return Plan()
    meta = body["metadata"]
    job_name = status.get("jobName") or meta["name"]
    try:
        spec = EvalRunSpec.model_validate(body.get("spec") or {})
    except ValueError:
        spec = None
    units = shard_plan.units(spec) if spec is not None else []
    # Tasks whose results were reused when the Job was made (only a run that may reuse
    # has any: the others make no request for them).
    may_reuse = (
        spec is not None
        and source != "evaluation index"
        and spec.reuse == "IfIdentical"
        and not spec.evaluation.log_samples
        and reuse.not_pinned(spec) is None
    )
    kept = evaluation_index.kept_reused(meta["namespace"], job_name) if may_reuse else []
    reused_summary = reuse.reused_summary(kept) if kept else None
    location = summary.s3_location if summary is not None else None
    if summary is None:
        location = res.location_from_termination_message(termination)
        summary = _summary_from_object_store(body, location)
        source = "object store"
    fresh_summary = summary  # what this run evaluated: it goes to the index
    if summary is not None and reused_summary is not None:
        summary = reuse.in_unit_order(shard_plan.merge([summary, reused_summary]), units)
    if summary is not None:
        primaries = res.primary_results(summary)
        summary_json = summary.model_dump_json(by_alias=True, indent=1)
    else:
        primaries = res.from_termination_message(termination) or []
        source = "termination message"
        summary_json = None
        if not primaries:
            return Plan()
        if reused_summary is not None:
            primaries += res.primary_results(reused_summary)
    name = f"{job_name}-results"
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {
                jobs.LABEL_MANAGED_BY: jobs.MANAGED_BY,
                f"{jobs.LABEL_PREFIX}/results-of": meta["uid"],
            },
            "ownerReferences": [
                jobs.RunRef(meta["name"], meta["namespace"], meta["uid"]).owner_reference()
            ],
        },
        "data": {
            **res.config_map_data(summary_json, primaries, source, location),
            **({"image": image_id[:512]} if image_id else {}),
        },
    }
    k8s.create(cm)
    fields: dict[str, Any] = {
        "results": [MetricResult.model_validate(p).to_wire() for p in primaries],
        "resultsConfigMap": name,
    }
    if kept and not status.get("reused"):
        fields["reused"] = evaluation_index.reused_status(kept, meta["namespace"])
    board = (body.get("spec") or {}).get("leaderboard")
    events: list[Event] = []
    if board and primaries:
        # Before the status says "published": a failure here is retried (a bounded number
        # of times), and publishing the same run again changes nothing.
        version = summary.provenance.lmms_eval_version if summary is not None else None
        entries = leaderboards.entries_for_run(
            {**body, "status": {**(body.get("status") or {}), **status}},
            primaries,
            st.fmt_time(_now()),
            version or catalogue.load().lmms_eval_version,
            summary.provenance.commit if summary is not None else None,
        )
        key = (meta["namespace"], meta["uid"])
        try:
            leaderboards.publish(meta["namespace"], board, entries)
        except errors.OperatorError as exc:
            tries = _publish_failures.get(key, 0) + 1
            permanent = (leaderboards.LeaderboardFull, leaderboards.LeaderboardCorrupt)
            if tries < PUBLISH_TRIES and not isinstance(exc, permanent):
                _publish_failures[key] = tries
                raise
            _publish_failures.pop(key, None)
            message = f"not published to Leaderboard {board!r} after {tries} tries: {exc}"[:1000]
            fields["leaderboardPublished"] = False
            fields["conditions"] = [
                *(
                    c
                    for c in status.get("conditions") or []
                    if c.get("type") != R.LEADERBOARD_PUBLISHED
                ),
                Condition(
                    type=R.LEADERBOARD_PUBLISHED,
                    status="False",
                    reason=R.PUBLISH_FAILED,
                    message=message,
                    last_transition_time=st.fmt_time(_now()),
                    observed_generation=int(meta.get("generation") or 1),
                ).to_wire(),
            ]
            events.append(Event("Warning", R.PUBLISH_FAILED, message))
        else:
            _publish_failures.pop(key, None)
            metrics.published(meta["namespace"], board, entries, meta["uid"])
            fields["leaderboardPublished"] = True
    if location:
        fields["resultsLocation"] = location
    if fresh_summary is not None and source != "evaluation index":
        try:
            indexed = evaluation_index.add(
                body, status, fresh_summary, {e.task for e in kept}, image_id
            )
        except errors.OperatorError as exc:
            # The index saves later work; the results are published all the same.
            log.warning(
                "%s/%s: not added to the evaluation index: %s",
                meta["namespace"],
                meta["name"],
                exc,
            )
            indexed = 0
        if indexed:
            log.info(
                "%s/%s: %d task(s) added to the evaluation index",
                meta["namespace"],
                meta["name"],
                indexed,
            )
    event = Event(
        "Normal",
        R.RESULTS_COLLECTED,
        f"results of {len(primaries)} task(s) in ConfigMap {name} (from the {source})",
    )
    if source.startswith("runner") and not location and (body.get("spec") or {}).get("output"):
        events.append(
            Event(
                "Warning",
                R.RESULTS_NOT_UPLOADED,
                "the runner could not upload the output to spec.output.s3 (see its log); "
                "the results are in the status and the results ConfigMap",
            )
        )
    return Plan(status=fields, events=[event, *events])


#: A Leaderboard publish that fails this many times in a row becomes a condition on the
#: run (LeaderboardPublished False) and a Warning Event instead of an endless retry; the
#: results stay in the run's status and ConfigMap.
PUBLISH_TRIES = 5
# (namespace, run uid) -> failed tries; an entry goes when the run's publish ends or the
# run is deleted.
_publish_failures: dict[tuple[str, str], int] = {}


def forget(namespace: str, uid: str) -> None:
    """The run was deleted: nothing kept for it here."""
    _publish_failures.pop((namespace, uid), None)


def _summary_from_object_store(
    body: Mapping[str, Any], location: str | None
) -> ResultsSummary | None:
    """The summary the runner uploaded next to its output, or None (with an Event
    saying why) when there is none to read."""
    raw = ((body.get("spec") or {}).get("output") or {}).get("s3")
    if not location or not raw:
        return None
    meta = body["metadata"]
    try:
        s3 = S3Output.model_validate(raw)
        # The runner (the tenant's code) says where it uploaded: only a place under the
        # run's own bucket and prefix is read, with the run's own credentials.
        own = f"s3://{s3.bucket}/" + results_prefix(s3.prefix, meta["namespace"], meta["name"])
        url = location.rstrip("/") + "/" + objectstore.SUMMARY_KEY
        if not url.startswith(own) or "/../" in url[len(own) - 1 :]:
            raise errors.ObjectStoreError(
                f"the runner named {location[:300]!r}, outside the run's own {own}"
            )
        doc = objectstore.get_json(meta["namespace"], s3, url)
        return ResultsSummary.model_validate(doc)
    except (errors.ObjectStoreError, ValueError) as exc:
        message = (str(exc).splitlines() or [""])[0][:300]
        log.warning(
            "results of %s/%s not read from the object store: %s",
            meta["namespace"],
            meta["name"],
            message,
        )
        k8s.event(
            body,
            "Warning",
            R.RESULTS_NOT_IN_OBJECT_STORE,
            f"falling back to the termination message: {message}",
        )
        return None


def image_id(pods: list[dict[str, Any]]) -> str | None:
    """The runner image's digest (the kubelet's imageID) of node 0's newest pod."""
    for pod in sorted(pods, key=completion_index):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("imageID"):
                return str(cs["imageID"])
    return None


def completion_index(pod: Mapping[str, Any]) -> int:
    """The pod's index in an Indexed Job (0 when it has none): node 0 of a multi-node
    run holds the results."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    try:
        return int(labels.get("batch.kubernetes.io/job-completion-index") or 0)
    except ValueError:
        return 0


def termination_message(pods: list[dict[str, Any]]) -> str | None:
    """The newest succeeded pod's message, node 0's in a multi-node run."""
    newest_first = sorted(
        pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True
    )
    for pod in sorted(newest_first, key=completion_index):
        if (pod.get("status") or {}).get("phase") != "Succeeded":
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("message"):
                return str(term["message"])
    return None
