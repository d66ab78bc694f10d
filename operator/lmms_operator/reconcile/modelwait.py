"""A run whose served model or judge is not ready yet (``modelendpoint``): Pending with
reason WaitingForModel, no Job and so no GPU held, looked at again every few seconds (less
often the longer it waits);
Failed with reason ModelNotReady, naming the field, once an endpoint waited past its
waitSeconds. Pure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from . import reasons as R
from . import status as st
from .job import LABEL_RUN_UID
from .modelendpoint import MAX_RETRY, RETRY, Readiness
from .plan import Plan
from .times import fmt_time


def plan(
    run: Mapping[str, Any], ready: Mapping[str, Readiness], waited: float, now: dt.datetime
) -> Plan | None:
    """None when every endpoint is ready; ``waited``: seconds this spec has waited."""
    unready = {f: r for f, r in ready.items() if not r.ready}
    if not unready:
        return None
    status = dict(run.get("status") or {})
    generation = int(run["metadata"].get("generation") or 1)
    late = [f for f, r in unready.items() if waited >= r.wait_seconds]
    if late:
        message = "; ".join(
            f"{f}{unready[f].where}: {unready[f].waiting} after {int(waited)}s "
            f"(waitSeconds: {unready[f].wait_seconds})"
            for f in late
        )
        ob = st.Observation(R.FAILED, R.MODEL_NOT_READY, message, completion_time=fmt_time(now))
        before = {"conditions": status.get("conditions") or [], "phase": status.get("phase")}
        failed = Plan(delete=[f"{LABEL_RUN_UID}={run['metadata']['uid']}"])
        return failed.then(st.transition(before, ob, generation, None, None, now))
    message = "; ".join(
        f"{f}{r.where}: {r.waiting}; waiting up to {r.wait_seconds}s, with no Job meanwhile"
        for f, r in unready.items()
    )
    ob = st.Observation(R.PENDING, R.WAITING_FOR_MODEL, message)
    waiting = st.transition(
        status, ob, generation, status.get("specHash"), status.get("jobName"), now
    )
    left = min(r.wait_seconds - waited for r in unready.values())
    pace = min(MAX_RETRY, max(RETRY, waited / 10))
    waiting.retry_after = max(0.5, min(pace, left))
    return waiting
