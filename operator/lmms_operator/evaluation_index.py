"""The evaluation index (``spec.reuse``): looking a run's tasks up, keeping the entries a
run reuses, adding a run's newly evaluated tasks, and the copy in the run's bucket.

The index is ConfigMaps ``lmms-evaluation-<sha>`` in the run's own namespace, owned by no
run (they outlive it), labelled by the hash of the identity minus the task; with
``output.s3`` a copy of each goes to ``<prefix>/<namespace>/_evaluation-index/<key>/`` in
the run's bucket, with the run's credentials. The identity and the entries' format are
``reconcile/reuse.py``'s (pure); here is the I/O, always in the run's namespace.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import catalogue, errors, k8s, objectstore
from .api import EvalRunSpec, ReusedResult, S3Output
from .api.runner import ResultsSummary, results_prefix
from .reconcile import job as jobs
from .reconcile import reuse
from .reconcile import shards as shard_plan
from .reconcile import status as st

log = logging.getLogger("lmms.evaluation_index")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Lookup:
    key: dict[str, Any]
    entries: dict[str, reuse.Entry]  # entry of the task list -> its index entry
    missing: list[str]


def lookup(spec: EvalRunSpec, namespace: str, custom: list[dict[str, Any]]) -> Lookup | None:
    """The run's evaluation identity (None when its model is not pinned) and the index
    entries of its tasks (one list request, in the run's namespace only; none looked
    up when spec.reuse is Never or the run wants its samples). A run with an identity
    adds its results to the index, whatever spec.reuse says."""
    if reuse.not_pinned(spec):
        return None
    definitions = reuse.definitions_hash(custom) if spec.custom_tasks else None
    key = reuse.reuse_key(spec, catalogue.load().lmms_eval_version, definitions)
    if spec.reuse != "IfIdentical" or spec.evaluation.log_samples:
        return Lookup(key, {}, shard_plan.units(spec))
    found = {
        cm["metadata"]["name"]: cm
        for cm in k8s.list_config_maps(namespace, f"{reuse.LABEL_KEY}={reuse.key_label(key)}")
    }
    entries: dict[str, reuse.Entry] = {}
    for unit in shard_plan.units(spec):
        cm = found.get(reuse.entry_name(key, unit))
        entry = reuse.read_entry(cm, key) if cm is not None else None
        if entry is not None and entry.task == unit:
            entries[unit] = entry
    missing = [u for u in shard_plan.units(spec) if u not in entries]
    s3 = spec.output.s3 if spec.output else None
    if missing and s3 is not None:
        entries.update(_from_object_store(namespace, s3, key, missing))
        missing = [u for u in missing if u not in entries]
    return Lookup(key, entries, missing)


def _prefix(s3: S3Output, namespace: str, key: Mapping[str, Any]) -> str:
    """Where a run's index entries are copied in its bucket: beside the runs' outputs,
    ``<prefix>/<namespace>/_evaluation-index/<key hash>/`` (no run is named with "_")."""
    return results_prefix(s3.prefix, namespace, "_evaluation-index") + reuse.key_label(key) + "/"


def _from_object_store(
    namespace: str, s3: S3Output, key: Mapping[str, Any], missing: list[str]
) -> dict[str, reuse.Entry]:
    """Index entries found in the run's own bucket (one list, then one read per entry
    found) and not in the cluster: restored there (a namespace re-created, entries
    cleaned up). The bucket is the tenant's, read with the run's own credentials."""
    prefix = _prefix(s3, namespace, key)
    found: dict[str, reuse.Entry] = {}
    try:
        present = set(objectstore.list_keys(namespace, s3, prefix))
        for unit in missing:
            name = reuse.entry_name(key, unit)
            if f"{prefix}{name}.json" not in present:
                continue
            doc = objectstore.get_json(namespace, s3, f"s3://{s3.bucket}/{prefix}{name}.json")
            cm = {"metadata": {"name": name}, "data": {"entry.json": json.dumps(doc)}}
            entry = reuse.read_entry(cm, key)
            if entry is not None and entry.task == unit:
                found[unit] = entry
                try:
                    k8s.create(reuse.entry_config_map(namespace, entry))
                except errors.ApiError as exc:  # (a quota): served all the same
                    log.warning("index entry %s not restored: %s", name, exc)
    except errors.ObjectStoreError as exc:
        log.warning("evaluation index in the object store not read: %s", exc)
    return found


def reused_status(entries: list[reuse.Entry], namespace: str) -> list[dict[str, Any]]:
    return [
        ReusedResult(
            task=e.task,
            run=f"{e.source.namespace}/{e.source.run}",
            run_uid=e.source.uid,
            completed_at=e.source.completed_at,
            index_entry=reuse.entry_name(e.key, e.task),
        ).to_wire()
        for e in entries
    ]


def keep_reused(run: jobs.RunRef, job_name: str, hash_: str, lookup: Lookup) -> None:
    """The reused tasks' index entries, kept with the run (an entry deleted meanwhile
    loses nothing): merged with the Job's results when they are published."""
    entries = [lookup.entries[u] for u in lookup.entries]
    k8s.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"{job_name}-reused",
                "namespace": run.namespace,
                "labels": {
                    jobs.LABEL_MANAGED_BY: jobs.MANAGED_BY,
                    # Goes with the evaluation's other objects (a refused Job, a new spec).
                    jobs.LABEL_RUN_UID: run.uid,
                    jobs.LABEL_SPEC_HASH: hash_,
                },
                "ownerReferences": [run.owner_reference()],
            },
            "data": {
                "entries.json": json.dumps([e.to_wire() for e in entries]),
                "key.json": json.dumps(lookup.key, sort_keys=True),
            },
        }
    )


def kept_reused(namespace: str, job_name: str) -> list[reuse.Entry]:
    cm = k8s.read_config_map(namespace, f"{job_name}-reused")
    if cm is None:
        return []
    try:
        raw = json.loads((cm.get("data") or {}).get("entries.json") or "[]")
        return [reuse.Entry.model_validate(e) for e in raw[: reuse.MAX_ENTRY_TASKS]]
    except ValueError:
        return []


def add(
    body: Mapping[str, Any],
    status: Mapping[str, Any],
    summary: ResultsSummary,
    reused_units: set[str],
    image: str | None,
) -> int:
    """Adds the run's newly evaluated tasks to the namespace's evaluation index (first
    result wins: an identity evaluated twice keeps the first); returns how many."""
    meta = body["metadata"]
    try:
        spec = EvalRunSpec.model_validate(body.get("spec") or {})
    except ValueError:
        return 0
    version = summary.provenance.lmms_eval_version
    if reuse.not_pinned(spec) or version != catalogue.load().lmms_eval_version:
        return 0  # (another lmms-eval than the operator's: lookups could never find it)
    job_name = status.get("jobName")
    config = k8s.read_config_map(meta["namespace"], f"{job_name}-config") if job_name else None
    try:
        key = json.loads(((config or {}).get("data") or {}).get("config.json") or "{}").get(
            "reuseKey"
        )
    except ValueError:
        key = None
    if not isinstance(key, dict):
        return 0
    units = [u for u in shard_plan.units(spec) if u not in reused_units]
    cat = catalogue.load()
    owned = reuse.attribute(units, summary, cat.groups | cat.tags)
    source = reuse.Source(
        namespace=meta["namespace"],
        run=meta["name"],
        uid=meta["uid"],
        job=job_name,
        completed_at=st.fmt_time(_now()),
        image=image,
        location=summary.s3_location,
    )
    provenance = summary.provenance.to_wire()
    copies: dict[str, str] = {}
    for unit, results in owned.items():
        entry = reuse.Entry(
            task=unit, key=key, results=results, provenance=provenance, source=source
        )
        cm = reuse.entry_config_map(meta["namespace"], entry)
        k8s.create(cm)
        copies[f"{cm['metadata']['name']}.json"] = cm["data"]["entry.json"]
    s3 = spec.output.s3 if spec.output else None
    if s3 is not None and copies:
        try:
            objectstore.put_texts(
                meta["namespace"], s3, _prefix(s3, meta["namespace"], key), copies
            )
        except errors.ObjectStoreError as exc:
            # The cluster's copy is the index; the bucket's is a spare.
            log.warning("evaluation index not copied to the object store: %s", exc)
    return len(owned)
