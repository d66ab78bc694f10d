"""Writes to the API server: creates, patches, replaces, deletes and Events, through a
``Writer`` over the process's ``client.Api``.

Only the applier (``lmms_operator.applier``) imports this module; an import contract
(``pyproject.toml``) checks it, so that every change the operator makes to the cluster
is one step of a Plan. "Already exists" on create and "not found" on delete count as
success.

With leader election, every write but the Lease's own passes a ``fence`` first: a
process that no longer holds the Lease raises ``errors.NotLeading`` instead of writing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable, Mapping
from typing import Any

from .. import errors
from .client import MERGE_PATCH, Api, log, path, release


class Writer:
    """Every write the operator makes, through ``api``; ``fence`` (None: always open)
    says whether this process may write now."""

    def __init__(self, api: Api, fence: Callable[[], bool] | None = None) -> None:
        self.api = api
        self.fence = fence

    def _open(self) -> None:
        if self.fence is not None and not self.fence():
            raise errors.NotLeading("not written: this process no longer holds the leader Lease")

    def _send(self, method: str, path: str, **kwargs: Any) -> None:
        self._open()
        release(self.api.request(method, path, **kwargs))

    def _delete(self, path: str, **query: Any) -> bool:
        """Deletes; False when it was not there."""
        try:
            self._send("DELETE", path, query=query)
        except errors.NotFound:
            return False
        return True

    def _create(self, path: str, body: Mapping[str, Any]) -> bool:
        """Creates; False when it existed already."""
        try:
            self._send("POST", path, body=dict(body))
        except errors.Conflict:
            return False
        return True

    def _patch_status(
        self, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> bool:
        """Merge-patches the status subresource; False when the object is gone."""
        try:
            self._send(
                "PATCH",
                path(kind, namespace, name, "status"),
                body={"status": dict(status)},
                content_type=MERGE_PATCH,
            )
        except errors.NotFound:
            return False  # deleted meanwhile: nothing to report on
        return True

    def patch_evalrun_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        return self._patch_status("EvalRun", namespace, name, status)

    def create_leaderboard(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Creates a Leaderboard; None when one of that name exists already."""
        self._open()
        try:
            return self.api.call(
                "POST", path("Leaderboard", body["metadata"]["namespace"]), body=dict(body)
            )
        except errors.Conflict:
            return None

    def patch_leaderboard_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> bool:
        return self._patch_status("Leaderboard", namespace, name, status)

    def create(self, obj: Mapping[str, Any]) -> bool:
        """Creates a namespaced Job, ConfigMap, Secret, Service or NetworkPolicy; False when
        it existed."""
        kind = obj["kind"]
        if kind not in ("Job", "ConfigMap", "Secret", "Service", "NetworkPolicy"):
            raise ValueError(f"cannot create {kind}")
        return self._create(path(kind, obj["metadata"]["namespace"]), obj)

    def create_owned(self, obj: Mapping[str, Any]) -> bool:
        """``create``, where one that exists must have the owner ``obj`` names (made by an
        earlier pass): ``errors.Conflict`` when it is someone else's. True: made now."""
        if self.create(obj):
            return True
        meta = obj["metadata"]
        found = self.api.read_config_map(meta["namespace"], meta["name"]) or {}
        refs = (found.get("metadata") or {}).get("ownerReferences") or []
        uids = {r.get("uid") for r in refs if isinstance(r, Mapping)}
        if not any(r["uid"] in uids for r in meta.get("ownerReferences") or []):
            raise errors.Conflict(
                f"ConfigMap {meta['name']} exists and is not the run's: delete or rename it"
            )
        return False

    def patch_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self._send(
            "PATCH",
            path("Job", namespace, name),
            body={"spec": {"suspend": suspend}},
            content_type=MERGE_PATCH,
        )

    def patch_workload_active(self, namespace: str, name: str, active: bool) -> None:
        """Sets a Kueue Workload's ``spec.active`` (holds or releases a queued run); a
        Workload that is gone (its Job was deleted) needs nothing."""
        with contextlib.suppress(errors.NotFound):
            release(
                self.api.request(
                    "PATCH",
                    path("Workload", namespace, name),
                    body={"spec": {"active": active}},
                    content_type=MERGE_PATCH,
                )
            )

    def delete_run_children(self, namespace: str, selector: str) -> int:
        """Deletes the Jobs (with their pods and token Secrets), ConfigMaps, Services and
        NetworkPolicies matching ``selector``; returns how many Jobs were deleted."""
        deleted = 0
        for job in self.api.list_jobs(namespace, selector):
            name = job["metadata"]["name"]
            deleted += self._delete(path("Job", namespace, name), propagationPolicy="Background")
            # By name: the operator may not list Secrets (least privilege). A token whose Job
            # is gone already is removed with the run (owner reference).
            self.delete_secret(namespace, f"{name}-token")
        for kind in ("ConfigMap", "Service", "NetworkPolicy"):
            for item in self.api.list_objects(kind, namespace, selector):
                self._delete(path(kind, namespace, item["metadata"]["name"]))
        return deleted

    def delete_secret(self, namespace: str, name: str) -> None:
        self._delete(path("Secret", namespace, name))

    def create_config_map(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Creates a ConfigMap; raises ``errors.Conflict`` when it exists."""
        self._send("POST", path("ConfigMap", namespace), body=dict(body))

    def replace_config_map(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        """Replaces a ConfigMap; with ``metadata.resourceVersion`` set, raises
        ``errors.Conflict`` when another writer replaced it first."""
        self._send("PUT", path("ConfigMap", namespace, name), body=dict(body))

    def delete_config_map(self, namespace: str, name: str) -> None:
        self._delete(path("ConfigMap", namespace, name))

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Records a core/v1 Event about ``obj``; never fails the caller (and is not sent
        when the fence is closed)."""
        if self.fence is not None and not self.fence():
            return
        meta = obj["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{meta['name'][:200]}.",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "lmms-operator"},
            "reportingComponent": "lmms-operator",
            "reportingInstance": os.environ.get("POD_NAME", "lmms-operator"),
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "count": 1,
        }
        self.record(body, reason, meta["name"])

    def record(self, body: Mapping[str, Any], reason: str, about: str) -> None:
        """Posts an Event; best effort, and past the fence (the Lease's own Events)."""
        try:
            release(
                self.api.request(
                    "POST", path("Event", body["metadata"]["namespace"]), body=dict(body)
                )
            )
        except errors.ApiError as exc:  # events are best effort
            log.warning("could not record event %s on %s: %s", reason, about, exc)

    # -- the leader Lease: past the fence (the elector writes it to keep or take it) -----------
    def create_lease(self, body: Mapping[str, Any], timeout: float) -> dict[str, Any] | None:
        """Creates the Lease; None when another candidate created it first."""
        namespace = body["metadata"]["namespace"]
        try:
            return self.api.call("POST", path("Lease", namespace), body=dict(body), timeout=timeout)
        except errors.Conflict:
            return None

    def replace_lease(self, body: Mapping[str, Any], timeout: float) -> dict[str, Any] | None:
        """Replaces the Lease at the ``resourceVersion`` it names; None when another writer
        changed it first."""
        meta = body["metadata"]
        try:
            return self.api.call(
                "PUT",
                path("Lease", meta["namespace"], meta["name"]),
                body=dict(body),
                timeout=timeout,
            )
        except errors.Conflict:
            return None
