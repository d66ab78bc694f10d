"""Kopf runs the process: start-up, shutdown and the liveness probe. Each handler calls
one method of the controller, which watches EvalRuns and their children itself (with
server-side selectors), or, with ``--leader-elect``, of ``Leadership``, which runs a
controller only while this process holds the leader Lease. The settings and the
controller live in Kopf's operator memo (``kopf.run(memo=...)``), not in this module."""

from __future__ import annotations

from typing import Any

import kopf

from ..config import LeaderElection, Settings
from ..controller import Controller
from ..metrics import Metrics
from .leadership import Leadership


@kopf.on.startup()
async def start(memo: kopf.Memo, **_: Any) -> None:
    settings = memo.get("settings") or Settings.from_env()
    metrics = memo.get("metrics") or Metrics()
    election = memo.get("election") or LeaderElection()
    if election.enabled:
        memo["controller"] = leadership = Leadership(settings, metrics, election)
        leadership.start()
        return
    memo["controller"] = controller = Controller(settings, metrics)
    metrics.leader.set(1)
    await controller.start()


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    controller = memo.get("controller")
    if controller is not None:
        await controller.stop()


# A failed probe fails the liveness endpoint (no retries: the kubelet asks again).
@kopf.on.probe(id="watches", errors=kopf.ErrorsMode.PERMANENT)
def watches(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    controller = memo.get("controller")
    return controller.health() if controller is not None else {"starting": True}
