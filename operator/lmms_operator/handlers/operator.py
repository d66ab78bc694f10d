"""Kopf runs the process: start-up, shutdown and the liveness probe. Each handler calls
one function of the runtime, which watches EvalRuns and their children itself (with
server-side selectors) and holds the operator's state."""

from __future__ import annotations

from typing import Any

import kopf

from ..config import Settings
from ..runtime import Runtime

#: Set by ``lmms-operator run`` (the namespaces to watch) before Kopf starts.
SETTINGS = Settings.from_env()
_runtime: Runtime | None = None


@kopf.on.startup()
async def start(**_: Any) -> None:
    global _runtime
    _runtime = Runtime(SETTINGS)
    await _runtime.start()


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    if _runtime is not None:
        await _runtime.stop()


# A failed probe fails the liveness endpoint (no retries: the kubelet asks again).
@kopf.on.probe(id="watches", errors=kopf.ErrorsMode.PERMANENT)
def watches(**_: Any) -> dict[str, Any]:
    return _runtime.health() if _runtime is not None else {"starting": True}
