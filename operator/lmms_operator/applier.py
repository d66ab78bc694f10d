"""The one writer: carries out Plans. Nothing else writes to the Kubernetes API (an import
contract in ``pyproject.toml`` keeps ``k8s.writes`` this module's alone).

A Plan is carried out in its order (``reconcile/plan.py``). What can only be known by
trying is answered, not decided, here: a token Secret or a Job that exists already, an
object the API server refuses, a Leaderboard publish that will not be retried each end
the attempt with a ``Replan`` that says what was found, and the pass plans again.

Leaderboard tables live in ConfigMaps: ``<prefix>`` is the index (generation and the
table's ConfigMaps); ``<prefix>-<generation>-<suffix>-<i>`` hold the table (JSON, CSV,
Markdown). A publish writes a new generation, then swaps the index with optimistic
concurrency (resourceVersion), retrying on conflict after a random pause that grows with
each lost race (writers in lockstep would otherwise keep colliding), then deletes the
old generation: readers always see one complete table, and no entry is lost when many
runs finish at once.

The leader Lease (``LeaseLock``) is written here too, past the fence that every other
write passes (``k8s.writes``): the elector (``engine.leader``) decides, this writes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import errors, k8s, leaderboards, objectstore
from .api import GROUP, VERSION, S3Output
from .clock import Clock
from .k8s.writes import Writer
from .metrics import Metrics
from .reconcile import leaderboard as lb
from .reconcile import lease
from .reconcile import reasons as R
from .reconcile.job import LABEL_MANAGED_BY, MANAGED_BY
from .reconcile.plan import Evaluation, IndexEntries, KeepSamples, Plan, PublishEntries, Replan
from .reconcile.publishing import PUBLISH_TRIES
from .reconcile.times import fmt_time

log = logging.getLogger("lmms.applier")

#: The pause after a lost race for a Leaderboard's index: uniform in
#: [0, min(cap, base * 2**attempt)] seconds.
BACKOFF_BASE = 0.02
BACKOFF_CAP = 1.0
#: Tries of a Leaderboard write that keeps losing the race before it gives up (Conflict).
SWAP_TRIES = 20


def backoff(attempt: int, sleep: Callable[[float], None] = time.sleep) -> float:
    """Sleeps before the next try of a writer that lost the race ``attempt + 1`` times,
    a random time so that writers that collided do not read and write again together;
    returns the time slept."""
    pause = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
    sleep(pause)
    return pause


class Applier:
    """Carries out Plans for one operator process. ``locks``: one writer per Leaderboard
    in this process (a fixed set, hashed by name: it never grows with the leaderboards
    seen); other writers are caught by the resourceVersion of the index ConfigMap."""

    LOCKS = 64

    def __init__(
        self,
        clock: Clock,
        store: objectstore.ObjectStore,
        metrics: Metrics,
        api: k8s.Api,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        self.clock, self.store, self.metrics = clock, store, metrics
        self.api, self.writes = api, Writer(api, fence)
        self._locks = tuple(threading.Lock() for _ in range(self.LOCKS))

    # -- a run's plan --------------------------------------------------------------------------
    def apply(self, run: Mapping[str, Any], plan: Plan) -> Replan | None:
        """Carries out ``plan`` for the run; a ``Replan`` when the pass must plan again
        (nothing after the step that found it was done)."""
        meta = run["metadata"]
        namespace = meta["namespace"]
        for selector in plan.delete:
            self.writes.delete_run_children(namespace, selector)
        for create in plan.create:
            try:
                self.writes.create(create.obj)
            except errors.ApiError as exc:
                if not create.best_effort:
                    raise
                log.warning("%s not created: %s", create.obj["metadata"]["name"], exc)
        if plan.samples is not None:
            replan = self._samples(namespace, plan.samples)
            if replan is not None:
                return replan
        if plan.evaluation is not None:
            replan = self._evaluation(run, plan.evaluation)
            if replan is not None:
                return replan
        if plan.suspend is not None:
            self.writes.patch_job_suspend(namespace, *plan.suspend)
        if plan.activate is not None:
            self.writes.patch_workload_active(namespace, *plan.activate)
        for step in plan.publish:
            replan = self._publish(step)
            if replan is not None:
                return replan
        for entries in plan.index:
            self._index(namespace, entries)
        if plan.status:
            self.writes.patch_evalrun_status(namespace, meta["name"], dict(plan.status))
        for event in plan.events:
            self.writes.event(run, event.type, event.reason, event.message)
        if plan.stop and self.writes.delete_run_children(namespace, plan.stop):
            message = f"deleted the Job of the run: {plan.stop_reason}"
            self.writes.event(run, "Normal", R.JOB_STOPPED, message)
        return None

    def _evaluation(self, run: Mapping[str, Any], ev: Evaluation) -> Replan | None:
        """The evaluation's objects, the token Secret first and the Job last. A Job the
        API server refuses leaves nothing behind (the token Secret is deleted; it is the
        only object made before the Job that no owner reference would clean up soon)."""
        namespace = run["metadata"]["namespace"]
        secret = ev.token_secret["metadata"]["name"]
        try:
            if not self.writes.create(ev.token_secret) and not ev.token_known:
                return Replan(token_exists=True)  # the Job must carry the Secret's token
            for obj in ev.before_job:
                self.writes.create(obj)
            created = self.writes.create(ev.job)
        except errors.Invalid as exc:
            self.writes.delete_secret(namespace, secret)  # nothing half-created
            return Replan(refused=exc.message)
        if not created:
            return Replan(job_exists=True)  # read it back: its state decides
        return None

    def _samples(self, namespace: str, step: KeepSamples) -> Replan | None:
        """The samples' ConfigMaps, all or none: one refused (too large, over a quota,
        forbidden, someone else's of that name) deletes the run's made before it, and the
        pass plans again without them. An API server that does not answer fails the pass."""
        made = 0
        try:
            for made, obj in enumerate(step.config_maps):  # noqa: B007 (read below)
                self.writes.create_owned(obj)
        except errors.Unavailable:
            raise
        except errors.ApiError as exc:
            for obj in step.config_maps[:made]:  # the run's own, never someone else's
                try:
                    self.writes.delete_config_map(namespace, obj["metadata"]["name"])
                except errors.ApiError as again:  # owned by the run: collected with it
                    log.warning("%s not deleted: %s", obj["metadata"]["name"], again)
            return Replan(samples_failed=str(exc)[:1000])
        return None

    def _publish(self, step: PublishEntries) -> Replan | None:
        try:
            self.publish(step.namespace, step.board, [dict(e) for e in step.entries])
        except errors.OperatorError as exc:
            permanent = (leaderboards.LeaderboardFull, leaderboards.LeaderboardCorrupt)
            if step.attempt < PUBLISH_TRIES and not isinstance(exc, permanent):
                raise errors.PublishFailed(str(exc)) from exc
            message = f"not published to Leaderboard {step.board!r} after {step.attempt} tries"
            return Replan(publish_failed=f"{message}: {exc}"[:1000])
        self.metrics.published(
            step.namespace, step.board, [dict(e) for e in step.entries], step.run_uid
        )
        return None

    def _index(self, namespace: str, step: IndexEntries) -> None:
        """Best effort: the index saves later work; the results are published anyway."""
        added = 0
        for cm in step.config_maps:
            try:
                added += self.writes.create(cm)
            except errors.ApiError as exc:
                log.warning("evaluation index entry %s not added: %s", cm["metadata"]["name"], exc)
        if added:
            log.info("%s: %d task(s) added to the evaluation index", namespace, added)
        if step.s3 is None:
            return
        copies = {
            f"{cm['metadata']['name']}.json": cm["data"]["entry.json"] for cm in step.config_maps
        }
        try:
            s3 = S3Output.model_validate(step.s3)
            self.store.put_texts(namespace, s3, step.s3_prefix, copies)
        except (errors.ObjectStoreError, ValueError) as exc:
            # The cluster's copy is the index; the bucket's is a spare.
            log.warning("evaluation index not copied to the object store: %s", exc)

    # -- Leaderboards ----------------------------------------------------------------------------
    def _lock(self, namespace: str, name: str) -> threading.Lock:
        return self._locks[hash((namespace, name)) % len(self._locks)]

    def publish(self, namespace: str, board_name: str, new: list[dict[str, Any]]) -> bool:
        """Adds entries to a Leaderboard's table; False when they were all there already."""
        with self._lock(namespace, board_name):
            for attempt in range(SWAP_TRIES):
                board = self._ensure_board(namespace, board_name)
                entries, index = leaderboards.read(self.api, namespace, board)
                merged = lb.merge(entries, new)
                if merged == lb.merge(entries, []):
                    return False
                if len(merged) > leaderboards.MAX_ENTRIES:
                    raise leaderboards.LeaderboardFull(
                        f"Leaderboard {namespace}/{board_name} holds {len(entries)} entries; "
                        f"at most {leaderboards.MAX_ENTRIES} are kept: delete old runs' entries "
                        "or use another Leaderboard"
                    )
                ranked = lb.rank(merged, (board.get("spec") or {}).get("rankBy") or {})
                if self._write_table(namespace, board, ranked, index):
                    return True
                log.info(
                    "leaderboard %s/%s changed meanwhile (attempt %d): retrying",
                    namespace,
                    board_name,
                    attempt + 1,
                )
                backoff(attempt)
        raise errors.Conflict(f"leaderboard {namespace}/{board_name}: too many conflicts")

    def rerender(self, namespace: str, board_name: str) -> bool:
        """Ranks the table again after an edit of the Leaderboard's spec (rankBy, top) and
        writes it, with the status, when the ranking changed; returns whether it wrote."""
        with self._lock(namespace, board_name):
            for attempt in range(SWAP_TRIES):
                board = self.api.get_leaderboard(namespace, board_name)
                if board is None:
                    return False
                entries, index = leaderboards.read(self.api, namespace, board)
                ranked = lb.rank(entries, (board.get("spec") or {}).get("rankBy") or {})
                if index is None:
                    self._board_status(board, ranked, [], None)
                    return False
                if ranked == entries:
                    self._board_status(board, ranked, index["configMaps"], None)
                    return True
                if self._write_table(namespace, board, ranked, index):
                    return True
                backoff(attempt)
        raise errors.Conflict(f"leaderboard {namespace}/{board_name}: too many conflicts")

    def _write_table(
        self,
        namespace: str,
        board: Mapping[str, Any],
        ranked: list[dict[str, Any]],
        index: dict[str, Any] | None,
    ) -> bool:
        """The new generation, the object store's copy and the status; False when another
        writer swapped the index first."""
        names = self._swap(namespace, board, ranked, index)
        if names is None:
            return False
        self._board_status(board, ranked, names, self._store(namespace, board, ranked))
        return True

    def _ensure_board(self, namespace: str, name: str) -> dict[str, Any]:
        """The Leaderboard, created with defaults when missing."""
        board = self.api.get_leaderboard(namespace, name)
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
        created = self.writes.create_leaderboard(body)
        if created is not None:
            return created
        board = self.api.get_leaderboard(namespace, name)  # created by someone else meanwhile
        if board is None:
            raise errors.Conflict(
                f"leaderboard {namespace}/{name} was created and deleted meanwhile"
            )
        return board

    def _swap(
        self,
        namespace: str,
        board: Mapping[str, Any],
        ranked: list[dict[str, Any]],
        index: dict[str, Any] | None,
    ) -> list[str] | None:
        """Writes the new generation and swaps the index to it: the new table's ConfigMaps,
        or None when another writer swapped first (nothing of ours is left behind)."""
        base = leaderboards.prefix(board)
        generation = int(index["generation"]) + 1 if index else 1
        owner = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Leaderboard",
            "name": board["metadata"]["name"],
            "uid": board["metadata"]["uid"],
        }
        labels = {
            LABEL_MANAGED_BY: MANAGED_BY,
            leaderboards.LABEL_BOARD: leaderboards.board_label(board["metadata"]["name"]),
        }
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
                    self.writes.create_config_map(namespace, body)
                except errors.Conflict:
                    self.writes.replace_config_map(namespace, name, body)
        except errors.OperatorError:
            # A failed publish is retried: it must not leave half a generation behind.
            for name in names:
                self.writes.delete_config_map(namespace, name)
            raise
        meta: dict[str, Any] = {"name": base, "labels": labels, "ownerReferences": [owner]}
        data = {"index.json": json.dumps({"generation": generation, "configMaps": names})}
        try:
            if index is None:
                self.writes.create_config_map(namespace, {"metadata": meta, "data": data})
            else:
                meta["resourceVersion"] = index["resourceVersion"]
                self.writes.replace_config_map(namespace, base, {"metadata": meta, "data": data})
        except errors.OperatorError as exc:
            # Another writer swapped first (Conflict: try again), or the write failed (a
            # quota, say: the error goes up and the publish is retried). Either way the new
            # generation goes: a retried publish never piles up ConfigMaps.
            for name in names:
                self.writes.delete_config_map(namespace, name)
            if isinstance(exc, errors.Conflict):
                return None
            raise
        for name in (index or {}).get("configMaps", []):
            if name not in names:
                self.writes.delete_config_map(namespace, name)
        return names

    def _store(
        self, namespace: str, board: Mapping[str, Any], ranked: list[dict[str, Any]]
    ) -> tuple[str | None, str | None] | None:
        """Copies the whole table to the object store when the Leaderboard asks for it:
        (its URL, why it failed), or None without an object store. The ConfigMaps stay the
        source of truth: a failed copy is reported, and the next publish writes it again."""
        raw = ((board.get("spec") or {}).get("storage") or {}).get("s3")
        if not raw:
            return None
        name = board["metadata"]["name"]
        field = objectstore.BOARD_FIELD
        try:
            s3 = S3Output.model_validate(raw)
            prefix = leaderboards.s3_key_prefix(s3, namespace, name)
            table = lb.render(ranked)
            return self.store.put_texts(namespace, s3, prefix, table, field=field), None
        except (errors.ObjectStoreError, ValueError) as exc:
            # Whatever the store or its endpoint did, the publish stands (the ConfigMaps
            # are the table): the condition says why the copy is missing, no retry.
            message = str(exc) if isinstance(exc, errors.ObjectStoreError) else f"{field}: {exc}"
            message = message[:500]
            log.warning("leaderboard %s/%s: %s", namespace, name, message)
            self.writes.event(board, "Warning", R.LEADERBOARD_STORE_FAILED, message)
            return None, message

    def _board_status(
        self,
        board: Mapping[str, Any],
        ranked: list[dict[str, Any]],
        config_maps: list[str],
        stored: tuple[str | None, str | None] | None,
    ) -> None:
        names = [leaderboards.prefix(board), *config_maps]
        status = lb.board_status(board, ranked, names, stored, self.clock.now())
        meta = board["metadata"]
        self.writes.patch_leaderboard_status(meta["namespace"], meta["name"], status)


class LeaseLock:
    """The leader Lease ``namespace/name``: read through ``k8s``, written here (client-go's
    ``resourcelock.LeaseLock``). ``timeout`` bounds each request (``Timing.request_timeout``)."""

    def __init__(self, api: k8s.Api, namespace: str, name: str, timeout: float) -> None:
        self.api, self.writes = api, Writer(api)
        self.namespace, self.name, self.timeout = namespace, name, timeout
        self._uid: str | None = None

    def __repr__(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def get(self) -> tuple[lease.LeaderRecord, str] | None:
        """The record and its resourceVersion; None when there is no Lease."""
        found = self.api.get_lease(self.namespace, self.name, timeout=self.timeout)
        if found is None:
            return None
        self._uid = found["metadata"].get("uid")
        return lease.record_of(found), str(found["metadata"]["resourceVersion"])

    def write(self, record: lease.LeaderRecord, resource_version: str | None) -> str | None:
        """Creates (``resource_version`` None) or replaces the Lease; its new
        resourceVersion, or None when another writer came first."""
        body = lease.lease_body(self.namespace, self.name, record, resource_version)
        if resource_version is None:
            written = self.writes.create_lease(body, self.timeout)
        else:
            written = self.writes.replace_lease(body, self.timeout)
        if written is None:
            return None
        self._uid = written["metadata"].get("uid")
        return str(written["metadata"]["resourceVersion"])

    def event(self, identity: str, message: str, when: dt.datetime) -> None:
        """An Event on the Lease (reason ``LeaderElection``, as client-go's), best effort."""
        wall = fmt_time(when)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.name}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": lease.API_VERSION,
                "kind": lease.KIND,
                "name": self.name,
                "namespace": self.namespace,
                "uid": self._uid,
            },
            "reason": R.LEADER_ELECTION,
            "message": f"{identity} {message}"[:1024],
            "type": "Normal",
            "source": {"component": "lmms-operator", "host": identity[:253]},
            "reportingComponent": "lmms-operator",
            "reportingInstance": identity[:128],
            "firstTimestamp": wall,
            "lastTimestamp": wall,
            "count": 1,
        }
        self.writes.record(body, R.LEADER_ELECTION, repr(self))
