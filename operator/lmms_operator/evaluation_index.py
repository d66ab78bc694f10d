"""Reading the evaluation index (``spec.reuse``): looking a run's tasks up, in the cluster
and in the copy in the run's bucket, and the entries a run kept when its Job was made.
Entries are written by the applier (``Plan.index``, ``Plan.create``).

The index is ConfigMaps ``lmms-evaluation-<sha>`` in the run's own namespace, owned by no
run (they outlive it), labelled by the hash of the identity minus the task; with
``output.s3`` a copy of each goes to ``<prefix>/<namespace>/_evaluation-index/<key>/`` in
the run's bucket, with the run's credentials. The identity and the entries' format are
``reconcile/reuse.py``'s (pure); here are the reads, always in the run's namespace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from . import catalogue, errors, k8s, objectstore
from .api import EvalRunSpec, S3Output
from .reconcile import reuse
from .reconcile import shards as shard_plan
from .reconcile.admission import Lookup

log = logging.getLogger("lmms.evaluation_index")


def lookup(
    spec: EvalRunSpec,
    namespace: str,
    custom: Sequence[Mapping[str, Any]],
    store: objectstore.ObjectStore,
    api: k8s.Api,
) -> Lookup | None:
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
        for cm in api.list_config_maps(namespace, f"{reuse.LABEL_KEY}={reuse.key_label(key)}")
    }
    entries: dict[str, reuse.Entry] = {}
    for unit in shard_plan.units(spec):
        cm = found.get(reuse.entry_name(key, unit))
        entry = reuse.read_entry(cm, key) if cm is not None else None
        if entry is not None and entry.task == unit:
            entries[unit] = entry
    missing = [u for u in shard_plan.units(spec) if u not in entries]
    s3 = spec.output.s3 if spec.output else None
    restore: list[dict[str, Any]] = []
    if missing and s3 is not None:
        restored = _from_object_store(store, namespace, s3, key, missing)
        entries.update(restored)
        restore = [reuse.entry_config_map(namespace, e) for e in restored.values()]
        missing = [u for u in missing if u not in entries]
    return Lookup(key, entries, missing, tuple(restore))


def _from_object_store(
    store: objectstore.ObjectStore,
    namespace: str,
    s3: S3Output,
    key: Mapping[str, Any],
    missing: list[str],
) -> dict[str, reuse.Entry]:
    """Index entries found in the run's own bucket (one list, then one read per entry
    found) and not in the cluster: the plan restores them there (a namespace re-created,
    entries cleaned up). The bucket is the tenant's, read with the run's own credentials."""
    prefix = reuse.bucket_prefix(s3.prefix, namespace, key)
    found: dict[str, reuse.Entry] = {}
    try:
        present = set(store.list_keys(namespace, s3, prefix))
        for unit in missing:
            name = reuse.entry_name(key, unit)
            if f"{prefix}{name}.json" not in present:
                continue
            doc = store.get_json(namespace, s3, f"s3://{s3.bucket}/{prefix}{name}.json")
            cm = {"metadata": {"name": name}, "data": {"entry.json": json.dumps(doc)}}
            entry = reuse.read_entry(cm, key)
            if entry is not None and entry.task == unit:
                found[unit] = entry
    except errors.ObjectStoreError as exc:
        log.warning("evaluation index in the object store not read: %s", exc)
    return found


def kept_reused(api: k8s.Api, namespace: str, job_name: str) -> list[reuse.Entry]:
    """The index entries kept with the run when its Job was made."""
    return reuse.read_kept(api.read_config_map(namespace, reuse.kept_name(job_name)))
