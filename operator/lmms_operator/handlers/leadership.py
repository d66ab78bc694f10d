"""``lmms-operator run --leader-elect``: the work runs only while this process holds the
leader Lease.

Each term gets a controller of its own (informers, store, engine, runner protocol),
started when the Lease is taken and stopped when it is lost or given up; the process
itself goes on, campaigning again, and keeps serving metrics and health. Every write of
a term's controller passes its fence (``LeaderElector.holds(term)``): a pass still
running on a thread when the term ends writes nothing. A standby exports no per-run or
score series (``Metrics.standby``), and ``lmms_operator_leader`` says which process leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .. import k8s
from ..applier import LeaseLock
from ..clock import Clock
from ..config import LeaderElection, Settings
from ..controller import Controller
from ..engine.leader import LeaderElector
from ..metrics import Metrics

log = logging.getLogger("lmms.leader")


class Leadership:
    """The elector and the controller of the current term (None on a standby)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        election: LeaderElection,
        api: k8s.Api | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings, self.metrics = settings, metrics
        self.api = api or k8s.Api()
        namespace = election.namespace or k8s.own_namespace()
        timeout = election.timing.request_timeout
        self.lock = LeaseLock(self.api, namespace, election.name, timeout)
        self.elector = LeaderElector(
            self.lock,
            election.identity,
            election.timing,
            on_started=self._started,
            on_stopped=self._stopped,
            clock=clock,
        )
        self.controller: Controller | None = None
        self._starting: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.metrics.standby()
        log.info("campaigning for %r as %s", self.lock, self.elector.identity)
        self.elector.start()

    async def stop(self) -> None:
        """Stops the work, then releases the Lease (SIGTERM)."""
        await self.elector.stop()

    def health(self) -> dict[str, Any]:
        """For the liveness probe: healthy on a standby too, as long as it campaigns."""
        if not self.elector.campaigning:
            raise RuntimeError("the leader election stopped")
        found = {"leader": self.elector.leading, "holder": self.elector.holder}
        controller = self.controller
        if controller is not None:
            found.update(controller.health())
        return found

    async def _started(self, term: int) -> None:
        self.metrics.leader.set(1)
        self.controller = controller = Controller(
            self.settings, self.metrics, api=self.api, fence=lambda: self.elector.holds(term)
        )
        # Started beside the elector: renewals go on while the informers list.
        self._starting = asyncio.get_running_loop().create_task(controller.start())
        self._starting.add_done_callback(_failed)

    async def _stopped(self, term: int) -> None:
        controller, self.controller = self.controller, None
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        if controller is not None:
            await controller.stop()
            # An informer's last event would put its run back in the phase gauge.
            await asyncio.to_thread(_join, controller.informers)
        self.metrics.standby()


def _join(informers: list[k8s.Informer]) -> None:
    for informer in informers:
        informer.join(2.0)


def _failed(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if (exc := task.exception()) is not None:
            log.error("the controller did not start: %r", exc, exc_info=exc)
