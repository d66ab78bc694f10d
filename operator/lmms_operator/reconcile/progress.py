"""Progress: what a runner's answers (``/progress``) change in the run's status, and when
to ask it again. Pure.

- ``status.progress`` and the Progress column, written only when they changed;
- ``RunnerReachable``, True once a runner answers, False once it has not for a while;
- ``HarnessPatched``, whether the runner applied its patches to the lmms-eval it found
  (an lmms-eval the patches were not written for runs plain);
- for a fan-out, each shard's entry in ``status.shards`` and the run's overall progress;
- when to scrape again: sooner than the regular interval when a runner is about to
  finish (``follow_up``), and whether to ask for its results with a long poll
  (``near_end``, ``results_wait``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from ..api import Progress, TaskProgress
from ..api.runner import RunnerProgress
from . import conditions as C
from . import reasons as R
from . import shards as shard_plan
from .grammar import escape_hidden
from .plan import Event, Plan, StatusPatch
from .times import fmt_time

#: At most this many tasks, with names of at most this length, in status.progress.
MAX_PROGRESS_TASKS = 256
MAX_TASK_NAME = 253
#: Seconds a runner may go unanswered (every scrape failing) before RunnerReachable
#: turns False: a runner that has just started may not listen yet, and a slow answer or
#: two is not an outage.
UNREACHABLE_AFTER = 60.0

#: Seconds to a follow-up scrape of a runner about to finish: the first ``FAST_FOLLOW_UPS``
#: in a row come this soon, each further one waits twice as long as the one before, up to
#: the regular interval.
FOLLOW_UP = 0.5
FAST_FOLLOW_UPS = 4
#: Runner phases past the last answer, before the results are ready.
FINISHING = ("postprocessing", "uploading")
#: The longest the operator asks a runner near its end to hold ``/results`` until they
#: are ready (a long poll): its results are collected, and its pod and GPUs freed, the
#: moment they are, instead of at the next scrape. A long poll's timeout is its wait plus
#: the scrape timeout.
RESULTS_WAIT = 5.0
#: The runner's reason for an evaluation that failed: it has no results to collect.
EVALUATION_FAILED = "EvaluationFailed"


def progress_plan(status: Mapping[str, Any], progress: RunnerProgress, now: dt.datetime) -> Plan:
    """status.progress (the typed ``Progress``) and the Progress column, when they changed
    (lastUpdate aside)."""
    percent = round(progress.percent, 1)
    new = Progress(
        percent=percent,
        # The runner is the tenant's code: what it reports is escaped (a kubectl column,
        # `kubectl lmms wait`'s lines) and bounded before the status.
        tasks=[
            TaskProgress(name=escape_hidden(t.name)[:MAX_TASK_NAME], done=t.done, total=t.total)
            for t in progress.tasks[:MAX_PROGRESS_TASKS]
        ],
        samples_per_second=round(progress.samples_per_second, 3)
        if progress.samples_per_second is not None
        else None,
        eta_seconds=round(progress.eta_seconds) if progress.eta_seconds is not None else None,
        phase=progress.phase,
    ).to_wire()
    old = dict(status.get("progress") or {})
    old.pop("lastUpdate", None)
    if old == new:
        return Plan()
    new["lastUpdate"] = fmt_time(now)
    return Plan(status=StatusPatch(progress=new, summary=f"{percent:.0f}%"))


def reachability(
    run: Mapping[str, Any],
    status: Mapping[str, Any],
    reachable: bool,
    message: str,
    now: dt.datetime,
) -> Plan:
    """The RunnerReachable condition (and an Event when it changes); never fails a run."""
    current = C.find(status.get("conditions"), R.RUNNER_REACHABLE)
    wanted = "True" if reachable else "False"
    if current is not None and current.get("status") == wanted:
        return Plan()
    if current is None and reachable:
        return Plan()
    cond = C.condition(
        None,
        R.RUNNER_REACHABLE,
        "True" if reachable else "False",
        R.SCRAPED if reachable else R.SCRAPE_FAILED,
        message,
        now,
        int(run["metadata"].get("generation") or 1),
        max_message=1000,
    )
    event = Event(
        "Normal" if reachable else "Warning",
        R.RUNNER_REACHABLE if reachable else R.RUNNER_UNREACHABLE,
        message,
    )
    return Plan(
        status=StatusPatch(conditions=C.put(status.get("conditions"), cond)), events=[event]
    )


def harness(
    run: Mapping[str, Any], status: Mapping[str, Any], progress: RunnerProgress, now: dt.datetime
) -> Plan:
    """HarnessPatched: False (with a Warning Event) when the runner found an lmms-eval its
    patches were not written for and runs it plain; True when it patched it."""
    found = progress.harness
    if found is None:
        return Plan()
    current = C.find(status.get("conditions"), R.HARNESS_PATCHED)
    wanted = "True" if found.patched else "False"
    if current is not None and current.get("status") == wanted:
        return Plan()
    # The runner's words (the tenant's code) reach a condition and an Event: escaped.
    version = escape_hidden(found.lmms_eval_version or "unknown")
    message = (
        escape_hidden(found.message, keep="\n")
        if found.message
        else (
            f"lmms-eval {version}: the runner's patches apply"
            if found.patched
            else f"lmms-eval {version}: the runner's patches were not written for it; it runs plain"
        )
    )
    cond = C.condition(
        current,
        R.HARNESS_PATCHED,
        "True" if found.patched else "False",
        R.KNOWN_HARNESS if found.patched else R.UNKNOWN_HARNESS,
        message,
        now,
        int(run["metadata"].get("generation") or 1),
        max_message=1000,
    )
    events = [] if found.patched else [Event("Warning", R.UNKNOWN_HARNESS, message)]
    return Plan(status=StatusPatch(conditions=C.put(status.get("conditions"), cond)), events=events)


def answered(
    run: Mapping[str, Any],
    status: Mapping[str, Any],
    progress: RunnerProgress,
    message: str,
    now: dt.datetime,
) -> Plan:
    """A runner answered: RunnerReachable, HarnessPatched and its progress."""
    plan = reachability(run, status, True, message, now)
    after = {**status, **plan.status}
    plan = plan.then(harness(run, after, progress, now))
    return plan.then(progress_plan({**status, **plan.status}, progress, now))


def shards_progress_plan(
    status: Mapping[str, Any],
    answers: Mapping[int, RunnerProgress],
    now: dt.datetime,
    pods: Mapping[int, str] | None = None,
) -> Plan:
    """status.shards (each shard's pod, phase and documents) and the run's overall
    progress, from the shards' runners that answered this scrape (``pods``: their pods'
    names); a shard whose runner is gone counts as done once its results are kept, else
    as it last answered."""
    shards = [dict(s) for s in status.get("shards") or []]
    parts: dict[int, RunnerProgress] = {}
    for entry in shards:
        i = int(entry.get("index", 0))
        answer = answers.get(i)
        if answer is not None:
            entry.update(
                phase=answer.phase,
                percent=round(answer.percent, 1),
                done=answer.done,
                total=answer.total,
            )
            if pods and i in pods:
                entry["pod"] = pods[i]
            parts[i] = answer
        elif entry.get("resultsCollected") or entry.get("phase") is not None:
            collected = bool(entry.get("resultsCollected"))
            parts[i] = RunnerProgress(
                phase="done" if collected else entry.get("phase") or "starting",
                percent=100.0 if collected else float(entry.get("percent") or 0.0),
                done=int(entry.get("done") or 0),
                total=int(entry.get("total") or 0),
            )
    plan = progress_plan(status, shard_plan.aggregate(parts, len(shards)), now)
    if shards != list(status.get("shards") or []):
        plan.status["shards"] = shards
    return plan


# -- when to scrape again --------------------------------------------------------------------
def results_wait(interval: float) -> float:
    """Seconds of ``/results?wait=`` for a scrape ``interval``: up to the next regular
    scrape, at most ``RESULTS_WAIT``."""
    return max(0.0, min(RESULTS_WAIT, interval))


def near_end(progress: RunnerProgress, wait: float) -> bool:
    """Whether a runner is worth a long poll of ``wait`` seconds for its results: past its
    last answer, or expecting it within the wait."""
    if not wait or progress.reason == EVALUATION_FAILED:
        return False
    if progress.phase in FINISHING:
        return True
    eta = progress.eta_seconds
    return progress.phase == "evaluating" and eta is not None and eta <= wait


def follow_up(progress: Iterable[RunnerProgress], interval: float, streak: int) -> float | None:
    """When to scrape a run again, sooner than the regular ``interval``, because one of its
    runners (``progress``: those not yet collected) will finish before then: it is past its
    last answer (postprocessing, uploading, done but not collected) or expects to be within
    the interval (``eta_seconds``). A finished runner holds its results, and its GPUs,
    until the operator collects them: without a follow-up that waits half an interval on
    average. ``streak`` is the number of follow-ups in a row before this one: after
    ``FAST_FOLLOW_UPS`` of them the delay doubles with each, so a runner that says it is
    finishing and never does (the runner is the tenant's code) costs a few scrapes more,
    then the regular rate (``interval``) for as long as it says so. None: no runner is
    about to finish (the streak is over)."""
    soonest: float | None = None
    for p in progress:
        if p.reason == EVALUATION_FAILED:
            continue  # nothing to collect: the runner exits
        if p.phase in ("postprocessing", "uploading", "done", "failed"):
            due = 0.0
        elif p.phase == "evaluating" and p.eta_seconds is not None and p.eta_seconds < interval:
            due = max(0.0, p.eta_seconds)
        else:
            continue
        soonest = due if soonest is None else min(soonest, due)
    if soonest is None:
        return None
    backoff = FOLLOW_UP * (1 << min(32, max(0, streak - FAST_FOLLOW_UPS + 1)))
    return min(interval, max(soonest, backoff))
