"""Operator-wide Kopf settings: our own bookkeeping names, watch timeouts, workers."""

from __future__ import annotations

from typing import Any

import kopf

from ..api import GROUP


class _NoDiffBase(kopf.DiffBaseStorage):
    """Nothing compares an object with its last-handled state (no on.create/update/delete
    handlers), so none is built, fetched or stored: Kopf would otherwise deep-copy every
    watched object on every event to build one."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # The handlers are level-triggered (event handlers, indexes and the operator's own
    # loops), so Kopf stores nothing on the objects: no progress or diff-base
    # annotations, no finalizer. These settings only keep any future use under our name.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # No cluster scanning (watching CRDs and namespaces): the resources are known, and
    # the chart's RBAC grants no cluster-wide read of CRDs or namespaces. Namespaces are
    # given by exact name (--namespace), never as globs.
    settings.scanning.disabled = True
    # Watches that hang on a dead connection would miss events: bound them.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 16
    # Kopf's own events about handler retries would repeat ours.
    settings.posting.level = 40  # logging.ERROR
