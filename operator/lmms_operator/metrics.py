"""The operator's Prometheus metrics (one prefix: ``lmms_operator_``).

Label values are bounded: ``phase`` is one of the six phases, ``reason`` one of the
failure reasons in ``reconcile/reasons.py``, ``handler`` one of the operator's handlers,
``result`` ok/error. Per-run series (``namespace``, ``name``) exist only while the run
is active; score series exist per (leaderboard, model, task, metric) published.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .reconcile import status as st
from .reconcile.reasons import FAILURE_REASONS

PHASES = ("Pending", "Queued", "Running", "Succeeded", "Failed", "Cancelled")
REGISTRY = CollectorRegistry()

TRANSITIONS = Counter(
    "lmms_operator_evalrun_transitions_total",
    "Phase transitions of EvalRuns; from_phase is '' for a new run. Phases: "
    + ", ".join(PHASES)
    + ".",
    ["from_phase", "to_phase"],
    registry=REGISTRY,
)
FAILURES = Counter(
    "lmms_operator_evalrun_failures_total",
    "EvalRuns that ended Failed, by reason (InvalidSpec, Unschedulable, ImagePullError, "
    "OOMKilled, DeadlineExceeded, BackoffLimitExceeded, RunnerError, JobDeleted).",
    ["reason"],
    registry=REGISTRY,
)
# Every known reason starts at 0, so that rates and dashboards see the series before the
# first failure.
for _reason in FAILURE_REASONS:
    FAILURES.labels(_reason)
DURATION = Histogram(
    "lmms_operator_evalrun_duration_seconds",
    "Time from creation to the end of an EvalRun, by final phase.",
    ["phase"],
    buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
    registry=REGISTRY,
)
GPU_SECONDS = Counter(
    "lmms_operator_gpu_seconds_total",
    "GPU-seconds held by finished EvalRuns (GPUs per node x nodes x run time), by namespace "
    "and model type.",
    ["namespace", "model"],
    registry=REGISTRY,
)
PROGRESS = Gauge(
    "lmms_operator_evalrun_progress_ratio",
    "Progress (0..1) of each active EvalRun; the series goes when the run ends.",
    ["namespace", "name"],
    registry=REGISTRY,
)
THROUGHPUT = Gauge(
    "lmms_operator_evalrun_samples_per_second",
    "Samples per second of each active EvalRun; the series goes when the run ends.",
    ["namespace", "name"],
    registry=REGISTRY,
)
SCORE = Gauge(
    "lmms_operator_score",
    "Published scores: the primary metric of a task, per leaderboard, model and metric; "
    "direction is higher or lower (which is better) or unknown.",
    ["leaderboard", "model", "task", "metric", "direction"],
    registry=REGISTRY,
)
HANDLER_CALLS = Counter(
    "lmms_operator_handler_calls_total",
    "Handler calls, by handler and result (ok, error).",
    ["handler", "result"],
    registry=REGISTRY,
)
HANDLER_DURATION = Histogram(
    "lmms_operator_handler_duration_seconds",
    "Time spent in handlers, by handler.",
    ["handler"],
    registry=REGISTRY,
)
SCRAPES = Counter(
    "lmms_operator_scrapes_total",
    "Scrapes of runner pods, by result (ok, error).",
    ["result"],
    registry=REGISTRY,
)
SCRAPE_DURATION = Histogram(
    "lmms_operator_scrape_duration_seconds", "Time a runner scrape took.", registry=REGISTRY
)

_lock = threading.Lock()
# run uid -> (namespace, phase), for every run the watch shows (finished ones included):
# the lmms_operator_evalruns gauge counts them. Entries go when the run is deleted, or
# when a relist no longer holds it.
_phases: dict[str, tuple[str, str]] = {}


class _PhaseCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "lmms_operator_evalruns",
            "EvalRuns by phase (" + ", ".join(PHASES) + ").",
            labels=["phase"],
        )
        with _lock:
            counts = {p: 0 for p in PHASES}
            for _, phase in _phases.values():
                counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            family.add_metric([phase], n)
        yield family


REGISTRY.register(_PhaseCollector())


def serve(address: str) -> None:
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0", registry=REGISTRY)


def observe_status(
    run: Mapping[str, Any], old: Mapping[str, Any], fields: Mapping[str, Any]
) -> None:
    """Records what a status write changes: phase, transitions, ends, progress."""
    meta = run["metadata"]
    new_phase = fields.get("phase")
    old_phase = old.get("phase") or ""
    if new_phase and new_phase != old_phase:
        TRANSITIONS.labels(old_phase, new_phase).inc()
        with _lock:
            _phases[meta["uid"]] = (meta["namespace"], new_phase)
        if new_phase in st.TERMINAL:
            _ended(run, old, fields, new_phase)
    progress = fields.get("progress")
    if progress and (new_phase or old_phase) == "Running":
        PROGRESS.labels(meta["namespace"], meta["name"]).set(progress.get("percent", 0) / 100)
        if progress.get("samplesPerSecond") is not None:
            THROUGHPUT.labels(meta["namespace"], meta["name"]).set(progress["samplesPerSecond"])


def _ended(
    run: Mapping[str, Any], old: Mapping[str, Any], fields: Mapping[str, Any], phase: str
) -> None:
    meta = run["metadata"]
    if phase == "Failed":
        FAILURES.labels(fields.get("reason") or old.get("reason") or "Unknown").inc()
    created = st.parse_time(meta.get("creationTimestamp"))
    done = st.parse_time(fields.get("completionTime")) or dt.datetime.now(dt.UTC)
    if created and done:
        DURATION.labels(phase).observe(max(0.0, (done - created).total_seconds()))
    started = st.parse_time(fields.get("startTime") or old.get("startTime"))
    if started and done:
        spec = run.get("spec") or {}
        res = spec.get("resources") or {}
        gpus = int(res.get("gpus", 1)) * int(res.get("nodes", 1))
        GPU_SECONDS.labels(meta["namespace"], str((spec.get("model") or {}).get("type"))).inc(
            gpus * max(0.0, (done - started).total_seconds())
        )
    forget_run(meta["namespace"], meta["name"])


def forget_run(namespace: str, name: str) -> None:
    for gauge in (PROGRESS, THROUGHPUT):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)


def seen(uid: str, namespace: str, phase: str | None) -> None:
    """The watch showed a run in this phase."""
    if phase in PHASES:
        with _lock:
            _phases[uid] = (namespace, phase)


def retain(namespace: str | None, uids: set[str]) -> None:
    """A relist of ``namespace`` (None: all) holds these runs only: forget the others."""
    with _lock:
        for uid in [
            u for u, (ns, _) in _phases.items() if u not in uids and namespace in (None, ns)
        ]:
            del _phases[uid]


def deleted(uid: str, namespace: str, name: str) -> None:
    with _lock:
        _phases.pop(uid, None)
    forget_run(namespace, name)


def published(leaderboard: str, entries: list[dict[str, Any]]) -> None:
    for e in entries:
        if e.get("value") is not None:
            better = e.get("higherIsBetter")
            direction = "unknown" if better is None else ("higher" if better else "lower")
            SCORE.labels(leaderboard, str(e["model"]), e["task"], e["metric"], direction).set(
                e["value"]
            )


@contextmanager
def timed_handler(name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    except Exception:
        HANDLER_CALLS.labels(name, "error").inc()
        raise
    else:
        HANDLER_CALLS.labels(name, "ok").inc()
    finally:
        HANDLER_DURATION.labels(name).observe(time.monotonic() - start)
