"""``kubectl lmms wait``: until runs end, and an exit code that says how: 0 when every run
Succeeded, ``RUN_FAILED`` when one Failed or was Cancelled, ``TIMED_OUT`` when
``--timeout`` passed first. A terminal phase counts once the status describes the
run's current spec (``observedGeneration``), not an evaluation an edit replaced; a run
deleted, or deleted and created again under its name (another uid), is an error."""

from __future__ import annotations

import re

from ..clock import Clock
from ..reconcile.reasons import SUCCEEDED, TERMINAL
from ..reconcile.times import human_duration
from . import output as out
from .views import Target, run_record

#: A Go duration as kubectl's --timeout takes it (1h30m, 90s, 2.5m), or plain seconds.
_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_timeout(text: str) -> float | None:
    """Seconds to wait: ``30m``, ``1h30m``, ``90s``, ``90``; 0 looks once; a negative
    value or ``never`` waits without end (None). Raises ValueError on anything else."""
    value = text.strip().lower()
    if value in ("never", "inf", "infinite"):
        return None
    sign = -1.0 if value.startswith("-") else 1.0
    body = value.lstrip("+-")
    try:
        seconds = float(body)
    except ValueError:
        parts = _PART.findall(body)
        if not parts or "".join(n + u for n, u in parts) != body:
            raise ValueError(f"not a duration: {text!r} (e.g. 90s, 30m, 1h30m)") from None
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    return None if sign < 0 else seconds


def _line(rec: dict[str, object]) -> str:
    detail = [str(x) for x in (rec.get("progress"), rec.get("reason")) if x]
    return f"EvalRun {rec['namespace']}/{rec['name']}: {rec['phase'] or 'no status yet'}" + (
        f" ({', '.join(detail)})" if detail else ""
    )


async def wait(
    target: Target,
    refs: list[str],
    timeout: float | None,
    interval: float,
    output: str,
    clock: Clock,
) -> tuple[str, int]:
    """Reads each run every ``interval`` seconds until all have ended or ``timeout``
    passed; each change of phase is told on stderr. A run that does not exist is an
    error (``kubectl apply`` returns once it exists)."""
    keys = list(dict.fromkeys(target.split(r) for r in refs))
    records: dict[tuple[str, str], dict[str, object]] = {}
    told: dict[tuple[str, str], str] = {}
    pending = list(keys)
    # The run first read under each name: one deleted and created again under it is
    # another evaluation, whose outcome is not the one waited for.
    uids: dict[tuple[str, str], object] = {}
    deadline = None if timeout is None else clock.monotonic() + timeout
    while True:
        for key in list(pending):
            run = target.api.get_evalrun(*key)
            if run is None:
                raise out.Failure(f"EvalRun {key[0]}/{key[1]} not found")
            uid = (run.get("metadata") or {}).get("uid")
            if uids.setdefault(key, uid) != uid:
                raise out.Failure(
                    f"EvalRun {key[0]}/{key[1]} was deleted and created again while waited "
                    f"for (uid {uids[key]}, now {uid}): the run waited for is gone"
                )
            rec = records[key] = run_record(run, clock.now())
            line = _line(rec)
            if told.get(key) != line:
                out.warn(line)
                told[key] = line
            if rec["upToDate"] and rec["phase"] in TERMINAL:
                pending.remove(key)
        if not pending:
            break
        left = None if deadline is None else deadline - clock.monotonic()
        if left is not None and left <= 0:
            break
        await clock.sleep(interval if left is None else min(interval, left))
    ended = [records[k] for k in keys]
    failed = [r for r in ended if r["phase"] in TERMINAL and r["phase"] != SUCCEEDED]
    code = out.RUN_FAILED if failed else out.TIMED_OUT if pending else out.OK
    if pending:
        names = ", ".join(f"{ns}/{name}" for ns, name in pending)
        waited = "no time" if not timeout else human_duration(timeout)
        out.warn(f"timed out after {waited}: still waiting for {names}")
    if output in ("json", "yaml"):
        return out.data(ended, output), code
    rows = [["NAMESPACE", "NAME", "PHASE", "REASON", "SCORE", "DURATION"]]
    for r in ended:
        seconds = r["durationSeconds"]
        rows.append(
            [
                str(r["namespace"]),
                str(r["name"]),
                str(r["phase"] or "-"),
                str(r["reason"] or "-"),
                str(r["score"] or "-"),
                "-" if not isinstance(seconds, int) else human_duration(seconds),
            ]
        )
    return out.table(rows), code
