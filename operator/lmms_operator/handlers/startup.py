"""Operator-wide Kopf settings."""

from __future__ import annotations

from typing import Any

import kopf

from ..api import GROUP


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Kopf watches no resource of its own (the runtime's informers do, with server-side
    # selectors), so it stores nothing on any object; these settings only keep any
    # future use under our name.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # No cluster scanning (watching CRDs and namespaces): the chart's RBAC grants no
    # cluster-wide read of CRDs or namespaces.
    settings.scanning.disabled = True
    settings.networking.request_timeout = 60
    # Kopf's own events about handler retries would repeat ours.
    settings.posting.level = 40  # logging.ERROR
