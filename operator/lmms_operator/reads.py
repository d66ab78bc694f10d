"""Reads: the snapshot a pass decides on, read before it decides. Read-only.

The decisions of ``reconcile/`` are pure; what they need beyond the watch caches (the
objects a run references, a Job not in the cache yet, the evaluation index, results
kept in ConfigMaps or uploaded to the run's bucket) is read here, always in the run's
own namespace and, for a bucket, with the run's own credentials.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from . import errors, evaluation_index, k8s, objectstore
from .api import EvalRunSpec, S3Output
from .api.runner import LoggedSamples, ResultsSummary, results_prefix
from .reconcile import admission, fanout, kueue, modelendpoint, reuse
from .reconcile import job as jobs
from .reconcile import pods as pods_
from .reconcile import publishing as pub
from .reconcile import reasons as R
from .reconcile import results as res
from .reconcile.plan import Needs, Replan

log = logging.getLogger("lmms.reads")


def references(api: k8s.Api, spec: EvalRunSpec, namespace: str) -> admission.References:
    """The objects a spec references, as they are now."""
    config_maps = {
        s.config_map for s in spec.custom_tasks if api.config_map_exists(namespace, s.config_map)
    }
    names = {name for _, name, _ in admission.secret_refs(spec)}
    secrets_ = {name: api.read_tenant_secret(namespace, name) for name in sorted(names)}
    pvcs: set[str] = set()
    if spec.cache is not None and api.pvc_exists(namespace, spec.cache.persistent_volume_claim):
        pvcs.add(spec.cache.persistent_volume_claim)
    return admission.References(frozenset(config_maps), frozenset(pvcs), secrets_)


def endpoint_readiness(
    api: k8s.Api, spec: EvalRunSpec, namespace: str
) -> dict[str, modelendpoint.Readiness]:
    """The readiness of the endpoints a spec names (``reconcile.modelendpoint``), from
    their API objects in the run's namespace, each read by name (a Service's
    EndpointSlices by its label): never a list of the cluster, never the server itself."""
    found: dict[str, modelendpoint.Readiness] = {}
    for field_, ref in modelendpoint.references(spec):
        seen = modelendpoint.Observed()
        if ref.service is not None:
            try:
                service = api.get_service(namespace, ref.service.name)
                slices: list[dict[str, Any]] = []
                if service is not None:
                    label = f"{modelendpoint.SERVICE_NAME_LABEL}={ref.service.name}"
                    slices = api.list_objects(
                        "EndpointSlice", namespace, label, limit=modelendpoint.MAX_SLICES
                    )
            except errors.Forbidden:
                denied = (
                    "the operator may not read Services or EndpointSlices (the chart grants it)"
                )
                found[field_] = modelendpoint.Readiness(
                    False, None, denied, ref.wait_seconds, ".service.name"
                )
                continue
            seen = modelendpoint.Observed(service=service, slices=tuple(slices))
        elif ref.inference_service is not None:
            isvc, why = api.get_inference_service(namespace, ref.inference_service.name)
            seen = modelendpoint.Observed(inference_service=isvc, unreadable=why)
        found[field_] = modelendpoint.readiness(ref, namespace, seen)
    return found


def admission_snapshot(
    run: Mapping[str, Any],
    spec: EvalRunSpec,
    now: dt.datetime,
    *,
    waited: float = 0.0,
    policy_known: bool = False,
    facts: Replan | None = None,
    store: objectstore.ObjectStore,
    api: k8s.Api,
) -> admission.Snapshot:
    """What an admission pass decides on. A new run (``admission.is_fresh``) has no Job
    nor token yet: nothing is read for them until an attempt finds one there (``facts``)."""
    meta = run["metadata"]
    namespace, uid = meta["namespace"], meta["uid"]
    selector = admission.run_selector(uid)
    base = admission.Snapshot(run=run, spec=spec, now=now, waited=waited)
    status = run.get("status") or {}
    if spec.cancel:
        generation = int(meta.get("generation") or 1)
        if status.get("phase") == R.CANCELLED and status.get("observedGeneration") == generation:
            return base  # cancelled already: nothing to say about its Jobs
        return _with(base, run_has_jobs=bool(api.list_jobs(namespace, selector)))
    hash_ = jobs.spec_hash(spec)
    fresh = admission.is_fresh(run)
    stale = False
    if not fresh:
        stale = bool(api.list_jobs(namespace, f"{selector},{jobs.LABEL_SPEC_HASH}!={hash_}"))
    if status.get("specHash") == hash_ and status.get("phase") in R.TERMINAL:
        return _with(base, stale_jobs=stale)
    refs = references(api, spec, namespace)
    missing, problems = admission.check_references(spec, refs)
    snap = _with(base, stale_jobs=stale, references=refs)
    if missing or problems or (facts is not None and facts.refused is not None):
        return _with(snap, refused=facts.refused if facts is not None else None)
    name = jobs.job_name(meta["name"], uid, hash_)
    tried = facts is not None and (facts.job_exists or facts.token_exists)
    job = None if fresh and not tried else api.get_job(namespace, name)
    if job is not None:
        shards: Sequence[Any] = ()
        # The assignment the Job runs with, unless the status shows this spec's already.
        if spec.parallelism > 1 and (status.get("specHash") != hash_ or not status.get("shards")):
            config = api.read_config_map(namespace, f"{name}-config")
            shards = admission.shards_of_config(config)
        pods = api.list_pods(namespace, f"job-name={name}")
        wl = workload(api, spec, job, always=True)
        return _with(snap, job=job, pods=tuple(pods), job_shards=tuple(shards), workload=wl)
    token = None
    token_exists = facts is not None and facts.token_exists
    if not fresh or token_exists:
        token = api.read_secret_value(namespace, f"{name}-token", "token")
    custom: list[dict[str, Any]] = []
    if spec.parallelism > 1 or not reuse.not_pinned(spec):
        custom = [api.read_config_map(namespace, s.config_map) or {} for s in spec.custom_tasks]
    return _with(
        snap,
        token=token,
        new_token=secrets.token_urlsafe(32),
        custom=tuple(custom),
        lookup=evaluation_index.lookup(spec, namespace, custom, store, api),
        policy_known=policy_known,
        token_exists=token_exists,
        endpoints=endpoint_readiness(api, spec, namespace),
    )


def workload(
    api: k8s.Api, spec: EvalRunSpec, job: Mapping[str, Any] | None, *, always: bool = False
) -> kueue.Workload | None:
    """The Kueue Workload of a queued run's Job (its queue named by the run, or given by
    Kueue: ``kueue.queue_of``), when a decision needs it: the run is held
    (spec.suspend), or its Job waits (suspended), or ``always`` (a spec pass)."""
    if job is None or not kueue.queue_of(spec.scheduling.queue_name, job):
        return None
    suspended = bool((job.get("spec") or {}).get("suspend"))
    if not (always or spec.suspend or suspended):
        return None
    uid = (job.get("metadata") or {}).get("uid")
    if not uid:
        return None
    names = kueue.workload_names(job["metadata"]["name"], uid)
    return kueue.workload(api.workload_of_job(job["metadata"]["namespace"], uid, names))


def _with(snap: admission.Snapshot, **changes: Any) -> admission.Snapshot:
    return dataclasses.replace(snap, **changes)


def results(
    run: Mapping[str, Any],
    spec: EvalRunSpec,
    status: Mapping[str, Any],
    *,
    needs: Needs | None = None,
    summary: ResultsSummary | None = None,
    image: str | None = None,
    samples: LoggedSamples | None = None,
    pods: Sequence[Mapping[str, Any]] = (),
    publish_failures: int = 0,
    publish_failed: str | None = None,
    store: objectstore.ObjectStore,
    api: k8s.Api,
) -> pub.Inputs:
    """What publishing a run's results needs: the results themselves (``summary``, from
    its runner; else from where ``needs`` says: its bucket, its termination message, its
    shards' kept results), the index entries kept when its Job was made, and the
    evaluation identity its Job ran with."""
    meta = run["metadata"]
    namespace = meta["namespace"]
    job_name = str(status.get("jobName") or meta["name"])
    termination = needs.termination if needs is not None else None
    found: ResultsSummary | None = None
    store_error: str | None = None
    if summary is None and needs is not None and not needs.shards:
        location = res.location_from_termination_message(termination)
        found, store_error = store_summary(store, run, spec, location)
    kept_shards: dict[int, tuple[ResultsSummary, str]] = {}
    pod_summaries: dict[str, tuple[ResultsSummary | None, str | None]] = {}
    if len(status.get("shards") or []) > 1:
        kept_shards = _kept_shards(api, namespace, meta["uid"], str(status.get("specHash") or ""))
        newest: dict[int, Mapping[str, Any]] = {}
        for pod in sorted(pods, key=pods_.created):  # each shard's newest succeeded pod
            if (pod.get("status") or {}).get("phase") == R.POD_SUCCEEDED:
                newest[pods_.completion_index(pod)] = pod
        for index, pod in newest.items():
            if index in kept_shards:
                continue
            message = pods_.termination_message([pod])
            location = res.location_from_termination_message(message)
            pod_summaries[pod["metadata"]["name"]] = store_summary(store, run, spec, location)
    kept = evaluation_index.kept_reused(api, namespace, job_name) if pub.may_reuse(spec, "") else []
    key = _reuse_key(api, namespace, job_name) if pub.indexable(spec) else None
    return pub.Inputs(
        summary=summary,
        samples=samples,
        image=image if image is not None else (needs.image if needs is not None else None),
        termination=termination,
        store_summary=found,
        store_error=store_error,
        kept_reused=tuple(kept),
        reuse_key=key,
        publish_failures=publish_failures,
        publish_failed=publish_failed,
        kept_shards=kept_shards,
        pod_summaries=pod_summaries,
    )


def _reuse_key(api: k8s.Api, namespace: str, job_name: str) -> dict[str, Any] | None:
    """The evaluation identity the Job ran with, from its run configuration."""
    try:
        config = api.read_config_map(namespace, f"{job_name}-config")
        raw = json.loads(((config or {}).get("data") or {}).get("config.json") or "{}")
    except (errors.ApiError, ValueError) as exc:
        # The index saves later work: without the key the results are published anyway.
        log.warning("%s/%s: evaluation identity not read: %s", namespace, job_name, exc)
        return None
    key = raw.get("reuseKey") if isinstance(raw, dict) else None
    return key if isinstance(key, dict) else None


def _kept_shards(
    api: k8s.Api, namespace: str, uid: str, hash_: str
) -> dict[int, tuple[ResultsSummary, str]]:
    kept: dict[int, tuple[ResultsSummary, str]] = {}
    selector = f"{fanout.SHARD_OF}={uid},{jobs.LABEL_SPEC_HASH}={hash_}"
    for cm in api.list_config_maps(namespace, selector):
        data = cm.get("data") or {}
        try:
            index = int((cm["metadata"].get("labels") or {}).get(fanout.SHARD_INDEX, ""))
            summary = ResultsSummary.model_validate_json(data.get("summary.json") or "")
        except ValueError:
            continue
        kept[index] = (summary, str(data.get("image") or ""))
    return kept


def store_summary(
    store: objectstore.ObjectStore, run: Mapping[str, Any], spec: EvalRunSpec, location: str | None
) -> tuple[ResultsSummary | None, str | None]:
    """The summary the runner uploaded next to its output, or why it was not read (None,
    None: there is none to read)."""
    s3 = spec.output.s3 if spec.output else None
    if not location or s3 is None:
        return None, None
    meta = run["metadata"]
    try:
        return _read_summary(store, meta["namespace"], meta["name"], s3, location), None
    except (errors.ObjectStoreError, ValueError) as exc:
        message = (str(exc).splitlines() or [""])[0][:300]
        log.warning(
            "results of %s/%s not read from the object store: %s",
            meta["namespace"],
            meta["name"],
            message,
        )
        return None, message


def _read_summary(
    store: objectstore.ObjectStore, namespace: str, name: str, s3: S3Output, location: str
) -> ResultsSummary:
    # The runner (the tenant's code) says where it uploaded: only a place under the run's
    # own bucket and prefix is read, with the run's own credentials.
    own = f"s3://{s3.bucket}/" + results_prefix(s3.prefix, namespace, name)
    url = location.rstrip("/") + "/" + objectstore.SUMMARY_KEY
    if not url.startswith(own) or "/../" in url[len(own) - 1 :]:
        raise errors.ObjectStoreError(
            f"the runner named {location[:300]!r}, outside the run's own {own}"
        )
    return ResultsSummary.model_validate(store.get_json(namespace, s3, url))
