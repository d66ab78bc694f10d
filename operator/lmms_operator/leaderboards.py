"""Reading a Leaderboard's table: it lives in ConfigMaps, its summary in status.

Storage: ConfigMap ``<prefix>`` is the index (generation and the table's ConfigMaps);
``<prefix>-<generation>-<suffix>-<i>`` hold the table (JSON, CSV, Markdown), split before
a ConfigMap would pass 1 MiB. The applier writes them (``Applier.publish``); what is
read here is checked and bounded, since anyone who may edit ConfigMaps in the namespace
may have edited them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from . import errors, k8s
from .api import S3Output
from .reconcile.job import LABEL_PREFIX

log = logging.getLogger("lmms.leaderboards")

LABEL_BOARD = f"{LABEL_PREFIX}/leaderboard"


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
    api: k8s.Api, namespace: str, board: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The table's entries and the index ConfigMap (None when nothing was published).
    A table swapped while it is read is read again."""
    for _ in range(20):
        index = api.read_config_map(namespace, prefix(board))
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
            cm = api.read_config_map(namespace, cm_name)
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


def s3_key_prefix(s3: S3Output, namespace: str, name: str) -> str:
    parts = [p for p in (s3.prefix.strip("/"), namespace, name) if p]
    return "/".join(parts) + "/"
