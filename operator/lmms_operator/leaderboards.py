"""Publishing scores to a Leaderboard: its table lives in ConfigMaps, its summary in status.

Storage: ConfigMap ``<prefix>`` is the index (generation and the table's ConfigMaps);
``<prefix>-<generation>-<i>`` hold the table (JSON, CSV, Markdown), split before a
ConfigMap would pass 1 MiB. A publish writes a new generation, then swaps the index
with optimistic concurrency (resourceVersion), retrying on conflict after a random pause
that grows with each lost race (writers in lockstep would otherwise keep colliding),
then deletes the old generation: readers always see one complete table, and no entry is lost when many
runs finish at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any

from . import errors, k8s, objectstore
from .api import GROUP, VERSION, S3Output
from .reconcile import identity
from .reconcile import leaderboard as lb
from .reconcile import reasons as R
from .reconcile.job import LABEL_MANAGED_BY, LABEL_PREFIX, MANAGED_BY

log = logging.getLogger("lmms.leaderboards")

LABEL_BOARD = f"{LABEL_PREFIX}/leaderboard"
# One writer per Leaderboard in this process (a fixed set of locks, hashed by name: the
# set never grows with the leaderboards seen); other writers are caught by the
# resourceVersion of the index ConfigMap.
_locks = tuple(threading.Lock() for _ in range(64))


def _lock(namespace: str, name: str) -> threading.Lock:
    return _locks[hash((namespace, name)) % len(_locks)]


#: The pause after a lost race: uniform in [0, min(cap, base * 2**attempt)] seconds.
BACKOFF_BASE = 0.02
BACKOFF_CAP = 1.0


def _backoff(attempt: int) -> float:
    """Sleeps before the next try of a writer that lost the race ``attempt + 1`` times,
    a random time so that writers that collided do not read and write again together;
    returns the time slept."""
    pause = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
    time.sleep(pause)
    return pause


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ensure(namespace: str, name: str) -> dict[str, Any]:
    """The Leaderboard, created with defaults when missing."""
    board = k8s.get_leaderboard(namespace, name)
    if board is not None:
        return board
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Leaderboard",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY},
        },
        "spec": {},
    }
    created = k8s.create_leaderboard(body)
    if created is not None:
        return created
    board = k8s.get_leaderboard(namespace, name)  # created by someone else meanwhile
    if board is None:
        raise errors.Conflict(f"leaderboard {namespace}/{name} was created and deleted meanwhile")
    return board


def _fit(name: str, limit: int) -> str:
    """``name``, or when longer than ``limit``, its start and a hash of the whole (names
    of any length map to distinct, valid label values and object names)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: limit - 11].rstrip('-.')}-{digest}"


def board_label(name: str) -> str:
    """The label value naming a Leaderboard (label values hold at most 63 characters;
    Leaderboard names up to 253)."""
    return _fit(name, 63)


def prefix(board: Mapping[str, Any]) -> str:
    """Name of the index ConfigMap; the table's ConfigMaps add ``-<generation>-<suffix>-<i>``
    (room is left for that within the 253 characters of a name)."""
    storage = (board.get("spec") or {}).get("storage") or {}
    custom = (storage.get("configMap") or {}).get("namePrefix")
    return _fit(str(custom or f"leaderboard-{board['metadata']['name']}"), 220)


def read(
    namespace: str, board: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The table's entries and the index ConfigMap (None when nothing was published).
    A table swapped while it is read is read again."""
    for _ in range(20):
        index = k8s.read_config_map(namespace, prefix(board))
        if index is None:
            return [], None
        # The ConfigMaps live in the tenant's namespace, where anyone may edit them: what
        # they hold is checked and bounded before the operator uses it.
        meta = _load(index, "index.json", dict)
        names = meta.get("configMaps")
        if (
            not isinstance(names, list)
            or len(names) > MAX_SHARDS
            or not all(isinstance(n, str) and n.startswith(prefix(board) + "-") for n in names)
        ):
            raise LeaderboardCorrupt(f"ConfigMap {prefix(board)}: index.json is not an index")
        entries: list[dict[str, Any]] = []
        for cm_name in names:
            cm = k8s.read_config_map(namespace, cm_name)
            if cm is None:
                break  # a newer generation replaced this one meanwhile
            rows = _load(cm, "table.json", list)
            if not all(
                isinstance(r, dict)
                and isinstance(r.get("task"), str)
                and isinstance(r.get("metric"), str)
                for r in rows
            ):
                raise LeaderboardCorrupt(f"ConfigMap {cm_name}: table.json holds no entries")
            entries += rows
            if len(entries) > MAX_ENTRIES:
                raise LeaderboardCorrupt(f"Leaderboard {prefix(board)}: over {MAX_ENTRIES} entries")
        else:
            return entries, {"resourceVersion": index["metadata"]["resourceVersion"], **meta}
    raise errors.Conflict(f"leaderboard {prefix(board)}: the table keeps changing while read")


#: A table is split over at most this many ConfigMaps (MAX_ENTRIES fit in far fewer).
MAX_SHARDS = 64


class LeaderboardCorrupt(errors.OperatorError):
    """A table ConfigMap does not hold what the operator wrote (someone edited it)."""


def _load(cm: Mapping[str, Any], key: str, kind: type) -> Any:
    try:
        value = json.loads((cm.get("data") or {}).get(key) or ("{}" if kind is dict else "[]"))
    except ValueError:
        value = None
    if not isinstance(value, kind):
        raise LeaderboardCorrupt(
            f"ConfigMap {cm['metadata']['name']}: {key} is not JSON {kind.__name__}"
        )
    return value


#: A Leaderboard holds at most this many entries (its table stays a few ConfigMaps).
MAX_ENTRIES = 10_000


class LeaderboardFull(errors.OperatorError):
    """The Leaderboard holds MAX_ENTRIES entries already: retrying will not help."""


def publish(namespace: str, board_name: str, new: list[dict[str, Any]]) -> bool:
    """Adds entries; returns False when they were all there already."""
    with _lock(namespace, board_name):
        for attempt in range(20):
            board = ensure(namespace, board_name)
            spec = board.get("spec") or {}
            entries, index = read(namespace, board)
            merged = lb.merge(entries, new)
            if merged == lb.merge(entries, []):
                return False
            if len(merged) > MAX_ENTRIES:
                raise LeaderboardFull(
                    f"Leaderboard {namespace}/{board_name} holds {len(entries)} entries; at "
                    f"most {MAX_ENTRIES} are kept: delete old runs' entries or use another "
                    "Leaderboard"
                )
            ranked = lb.rank(merged, spec.get("rankBy") or {})
            names = _swap(namespace, board, ranked, index)
            if names is not None:
                stored = _store(namespace, board, ranked)
                _update_status(namespace, board, ranked, spec, names, stored)
                return True
            log.info(
                "leaderboard %s/%s changed meanwhile (attempt %d): retrying",
                namespace,
                board_name,
                attempt + 1,
            )
            _backoff(attempt)
        raise errors.Conflict(f"leaderboard {namespace}/{board_name}: too many conflicts")


def rerender(namespace: str, board_name: str) -> bool:
    """Ranks the table again after an edit of the Leaderboard's spec (rankBy, top) and
    writes it, with the status, when the ranking changed; returns whether it wrote."""
    with _lock(namespace, board_name):
        for attempt in range(20):
            board = k8s.get_leaderboard(namespace, board_name)
            if board is None:
                return False
            spec = board.get("spec") or {}
            entries, index = read(namespace, board)
            ranked = lb.rank(entries, spec.get("rankBy") or {})
            if index is None:
                _update_status(namespace, board, ranked, spec, [], None)
                return False
            if ranked == entries:
                _update_status(namespace, board, ranked, spec, index["configMaps"], None)
                return True
            names = _swap(namespace, board, ranked, index)
            if names is not None:
                stored = _store(namespace, board, ranked)
                _update_status(namespace, board, ranked, spec, names, stored)
                return True
            _backoff(attempt)
        raise errors.Conflict(f"leaderboard {namespace}/{board_name}: too many conflicts")


def _swap(
    namespace: str,
    board: Mapping[str, Any],
    ranked: list[dict[str, Any]],
    index: dict[str, Any] | None,
) -> list[str] | None:
    """Writes the new generation and swaps the index to it: the new table's ConfigMaps,
    or None when another writer swapped first (nothing of ours is left behind)."""
    base = prefix(board)
    generation = int(index["generation"]) + 1 if index else 1
    owner = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Leaderboard",
        "name": board["metadata"]["name"],
        "uid": board["metadata"]["uid"],
    }
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_BOARD: board_label(board["metadata"]["name"])}
    names = []
    # A unique suffix: a writer that loses the race deletes only what it wrote.
    suffix = secrets.token_hex(3)
    try:
        for i, chunk in enumerate(lb.shard(ranked)):
            name = f"{base}-{generation}-{suffix}-{i}"
            names.append(name)
            body = {
                "metadata": {"name": name, "labels": labels, "ownerReferences": [owner]},
                "data": lb.render(chunk),
            }
            try:
                k8s.create_config_map(namespace, body)
            except errors.Conflict:
                k8s.replace_config_map(namespace, name, body)
    except errors.OperatorError:
        # A failed publish is retried: it must not leave half a generation behind.
        for name in names:
            k8s.delete_config_map(namespace, name)
        raise
    index_data = {"index.json": json.dumps({"generation": generation, "configMaps": names})}
    try:
        if index is None:
            k8s.create_config_map(
                namespace,
                {
                    "metadata": {"name": base, "labels": labels, "ownerReferences": [owner]},
                    "data": index_data,
                },
            )
        else:
            k8s.replace_config_map(
                namespace,
                base,
                {
                    "metadata": {
                        "name": base,
                        "labels": labels,
                        "ownerReferences": [owner],
                        "resourceVersion": index["resourceVersion"],
                    },
                    "data": index_data,
                },
            )
    except errors.OperatorError as exc:
        # Another writer swapped first (Conflict: try again), or the write failed (a
        # quota, say: the error goes up and the publish is retried). Either way the new
        # generation goes: a retried publish never piles up ConfigMaps.
        for name in names:
            k8s.delete_config_map(namespace, name)
        if isinstance(exc, errors.Conflict):
            return None
        raise
    for name in (index or {}).get("configMaps", []):
        if name not in names:
            k8s.delete_config_map(namespace, name)
    return names


def s3_key_prefix(s3: S3Output, namespace: str, name: str) -> str:
    parts = [p for p in (s3.prefix.strip("/"), namespace, name) if p]
    return "/".join(parts) + "/"


def _store(
    namespace: str, board: Mapping[str, Any], ranked: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Copies the whole table to the object store when the Leaderboard asks for it.
    Returns the status fields that say how that went (None: no object store). The
    ConfigMaps stay the source of truth: a failed copy is reported, and the next
    publish writes the whole table again."""
    raw = ((board.get("spec") or {}).get("storage") or {}).get("s3")
    if not raw:
        return None
    s3 = S3Output.model_validate(raw)
    name = board["metadata"]["name"]
    now = _now()
    try:
        url = objectstore.put_texts(
            namespace, s3, s3_key_prefix(s3, namespace, name), lb.render(ranked)
        )
    except errors.ObjectStoreError as exc:
        message = str(exc)[:500]
        log.warning("leaderboard %s/%s: %s", namespace, name, message)
        k8s.event(board, "Warning", R.LEADERBOARD_STORE_FAILED, message)
        return {
            "condition": {
                "type": R.OBJECT_STORE_SYNCED,
                "status": "False",
                "reason": R.LEADERBOARD_STORE_FAILED,
                "message": message,
                "lastTransitionTime": now,
            }
        }
    return {
        "tableLocation": url,
        "condition": {
            "type": R.OBJECT_STORE_SYNCED,
            "status": "True",
            "reason": R.LEADERBOARD_STORE_WRITTEN,
            "message": f"the table is in {url}table.json (also .csv, .md)",
            "lastTransitionTime": now,
        },
    }


def _update_status(
    namespace: str,
    board: Mapping[str, Any],
    ranked: list[dict[str, Any]],
    spec: Mapping[str, Any],
    config_maps: list[str],
    stored: dict[str, Any] | None,
) -> None:
    status: dict[str, Any] = {
        "observedGeneration": board["metadata"].get("generation"),
        "entries": len(ranked),
        "models": len({(e["model"], e.get("revision")) for e in ranked}),
        "tasks": len({e["task"] for e in ranked}),
        "lastUpdate": _now(),
        "top": lb.top(ranked, int(spec.get("top") or 5)),
        "configMaps": [prefix(board), *config_maps],
    }
    if stored is not None:
        if "tableLocation" in stored:
            status["tableLocation"] = stored["tableLocation"]
        cond = stored["condition"]
        before = next(
            (
                c
                for c in (board.get("status") or {}).get("conditions") or []
                if c.get("type") == cond["type"]
            ),
            None,
        )
        if before and before.get("status") == cond["status"]:
            cond["lastTransitionTime"] = before.get("lastTransitionTime")
        status["conditions"] = [cond]
    k8s.patch_leaderboard_status(namespace, board["metadata"]["name"], status)


def entries_for_run(
    run: Mapping[str, Any],
    results: list[dict[str, Any]],
    finished_at: str,
    lmms_eval_version: str | None = None,
    commit: str | None = None,
) -> list[dict[str, Any]]:
    """Leaderboard entries of a finished run (its primary metric per task): the model's
    identity and the settings that change a score are part of each entry; the run's uid
    and spec hash tell a re-run from the same run published twice."""
    spec = run.get("spec") or {}
    model = spec.get("model") or {}
    status = run.get("status") or {}
    settings = identity.settings_label(spec, lmms_eval_version)
    return [
        {
            "model": identity.model_identity(spec, commit),
            "revision": model.get("revision"),
            "settings": settings,
            "runUid": run["metadata"].get("uid"),
            "specHash": status.get("specHash"),
            "task": r["task"],
            "metric": r["metric"],
            "value": r.get("value"),
            "stderr": r.get("stderr"),
            "higherIsBetter": r.get("higherIsBetter"),
            "run": f"{run['metadata']['namespace']}/{run['metadata']['name']}",
            "finishedAt": finished_at,
        }
        for r in results
    ]
