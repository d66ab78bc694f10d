"""The operator's Prometheus metrics (one prefix: ``lmms_operator_``).

Label values are bounded: ``phase`` is one of the six phases, ``reason`` one of the
failure reasons in ``reconcile/reasons.py``, ``handler`` one of the operator's handlers,
``result`` ok/error. Every series about runs carries the run's ``namespace`` (what the
ServiceMonitor's ``honorLabels`` keeps): counts by namespace and phase or reason, never
by run name. Per-run series (``namespace``, ``name``) exist only while the run is active; score series exist per (namespace, leaderboard, model, task, metric)
published, and go when every run that set them, or their Leaderboard, is deleted.
Values that come from tenants (model, task and metric names) are cut to
``MAX_LABEL`` characters, with a hash of the whole when cut.

The registry, its series and what keeps them right (each run's phase, which runs set
which score series) live in one ``Metrics`` object per process, made by the command
line and passed to what records into it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import math
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .reconcile import identity
from .reconcile import reasons as R
from .reconcile.reasons import FAILURE_REASONS
from .reconcile.times import parse_time

PHASES = R.PHASES
MAX_LABEL = 128


class Metrics:
    """The operator's registry and series, and what keeps them right."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_* (CPU, resident memory, open files) and python_gc_*/python_info: what
        # docs/operations.md's sizing table is checked against in production.
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.transitions = Counter(
            "lmms_operator_evalrun_transitions_total",
            "Phase transitions of EvalRuns, by namespace; from_phase is '' for a new run. "
            "Phases: " + ", ".join(PHASES) + ".",
            ["namespace", "from_phase", "to_phase"],
            registry=self.registry,
        )
        self.failures = Counter(
            "lmms_operator_evalrun_failures_total",
            "EvalRuns that ended Failed, by namespace and reason (InvalidSpec, Unschedulable, "
            "ImagePullError, OOMKilled, DeadlineExceeded, BackoffLimitExceeded, RunnerError, "
            "JobDeleted, ...); every reason starts at 0 in a namespace once a run is seen there.",
            ["namespace", "reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "lmms_operator_evalrun_duration_seconds",
            "Time from creation to the end of an EvalRun, by namespace and final phase.",
            ["namespace", "phase"],
            buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
            registry=self.registry,
        )
        self.gpu_seconds = Counter(
            "lmms_operator_gpu_seconds_total",
            "GPU-seconds held by EvalRuns' pods (GPUs per pod x each pod's time from start to "
            "end), counted when a run ends or is deleted while active, by namespace and model "
            "identity.",
            ["namespace", "model"],
            registry=self.registry,
        )
        self.progress = Gauge(
            "lmms_operator_evalrun_progress_ratio",
            "Progress (0..1) of each active EvalRun; the series goes when the run ends.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.throughput = Gauge(
            "lmms_operator_evalrun_samples_per_second",
            "Samples per second of each active EvalRun; the series goes when the run ends.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.score = Gauge(
            "lmms_operator_score",
            "Published scores: the primary metric of a task, per namespace, leaderboard, model and "
            "metric; direction is higher or lower (which is better) or unknown.",
            ["namespace", "leaderboard", "model", "task", "metric", "direction"],
            registry=self.registry,
        )
        self.score_stderr = Gauge(
            "lmms_operator_score_stderr",
            "Standard error of each published score (lmms-eval's), with the labels of its "
            "lmms_operator_score series; absent where lmms-eval reported none. The ScoreRegression "
            "alert uses it to fire only for significant drops.",
            ["namespace", "leaderboard", "model", "task", "metric", "direction"],
            registry=self.registry,
        )
        self.undecodable = Counter(
            "lmms_operator_undecodable_objects_total",
            "Objects the informers skipped because they cannot be decoded (nested too deeply), "
            "by resource; an EvalRun among them ends Failed (InvalidSpec) with a Warning Event.",
            ["kind"],
            registry=self.registry,
        )
        self.handler_calls = Counter(
            "lmms_operator_handler_calls_total",
            "Handler calls, by handler and result (ok, error).",
            ["handler", "result"],
            registry=self.registry,
        )
        self.handler_duration = Histogram(
            "lmms_operator_handler_duration_seconds",
            "Time spent in handlers, by handler.",
            ["handler"],
            registry=self.registry,
        )
        self.scrapes = Counter(
            "lmms_operator_scrapes_total",
            "Scrapes of runner pods, by result (ok, error).",
            ["result"],
            registry=self.registry,
        )
        self.scrape_duration = Histogram(
            "lmms_operator_scrape_duration_seconds",
            "Time a runner scrape took.",
            registry=self.registry,
        )
        self.leader = Gauge(
            "lmms_operator_leader",
            "1 while this process does the work (it holds the leader Lease, or runs without "
            "--leader-elect), 0 while it is a standby.",
            registry=self.registry,
        )
        self._lock = threading.Lock()
        # Namespaces whose failure series start at 0 (every known reason), so that rates
        # and alerts see the series before the first failure there.
        self._namespaces: set[str] = set()
        # run uid -> (namespace, phase), for every run the watch shows (finished ones
        # included): the lmms_operator_evalruns gauge counts them. Entries go when the run
        # is deleted, or when a relist no longer holds it.
        self._phases: dict[str, tuple[str, str]] = {}
        # Score series -> the runs that set them, and run uid -> its series (bounded by
        # the entries published; both lose a run's entries when the run goes).
        self._score_runs: dict[tuple[str, ...], set[str]] = {}
        self._run_scores: dict[str, set[tuple[str, ...]]] = {}
        self.registry.register(_PhaseCollector(self))

    def standby(self) -> None:
        """This process stopped leading: the series that describe the cluster's runs and
        scores go (the leader's stand for them), so that sums over replicas count each once."""
        self.leader.set(0)
        with self._lock:
            self._phases.clear()
            self._score_runs.clear()
            self._run_scores.clear()
        for gauge in (self.progress, self.throughput, self.score, self.score_stderr):
            gauge.clear()

    def phase_counts(self) -> dict[tuple[str, str], int]:
        """EvalRuns the watch shows, by namespace and phase (the lmms_operator_evalruns
        gauge): every phase of each namespace that holds a run, zeros included."""
        with self._lock:
            counts: dict[tuple[str, str], int] = {}
            for namespace in sorted({ns for ns, _ in self._phases.values()}):
                counts.update({(namespace, p): 0 for p in PHASES})
            for namespace, phase in self._phases.values():
                counts[namespace, phase] = counts.get((namespace, phase), 0) + 1
        return counts

    def _namespace_seen(self, namespace: str) -> None:
        if namespace in self._namespaces:
            return
        self._namespaces.add(namespace)
        for reason in FAILURE_REASONS:
            self.failures.labels(namespace, reason)

    def serve(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)

    def count_gpu_seconds(self, run: Mapping[str, Any], pods: list[dict[str, Any]]) -> None:
        meta = run["metadata"]
        seconds = gpu_seconds(run, pods)
        if seconds > 0:
            model = identity.model_identity(run.get("spec") or {})
            self.gpu_seconds.labels(meta["namespace"], bounded(model)).inc(seconds)

    def observe_status(
        self,
        run: Mapping[str, Any],
        old: Mapping[str, Any],
        fields: Mapping[str, Any],
        pods: list[dict[str, Any]] | None = None,
    ) -> None:
        """Records what a status write changes: phase, transitions, ends (with the GPU-seconds
        of the run's ``pods``), progress."""
        meta = run["metadata"]
        new_phase = fields.get("phase")
        old_phase = old.get("phase") or ""
        if new_phase and new_phase != old_phase:
            self.transitions.labels(meta["namespace"], old_phase, new_phase).inc()
            with self._lock:
                self._phases[meta["uid"]] = (meta["namespace"], new_phase)
                self._namespace_seen(meta["namespace"])
            if new_phase in R.TERMINAL:
                self._ended(run, old, fields, new_phase)
                self.count_gpu_seconds(run, pods or [])
        progress = fields.get("progress")
        if progress and (new_phase or old_phase) == R.RUNNING:
            self.progress.labels(meta["namespace"], meta["name"]).set(
                progress.get("percent", 0) / 100
            )
            if progress.get("samplesPerSecond") is not None:
                self.throughput.labels(meta["namespace"], meta["name"]).set(
                    progress["samplesPerSecond"]
                )

    def _ended(
        self, run: Mapping[str, Any], old: Mapping[str, Any], fields: Mapping[str, Any], phase: str
    ) -> None:
        meta = run["metadata"]
        if phase == R.FAILED:
            reason = fields.get("reason") or old.get("reason") or "Unknown"
            self.failures.labels(meta["namespace"], reason).inc()
        created = parse_time(meta.get("creationTimestamp"))
        done = parse_time(fields.get("completionTime")) or dt.datetime.now(dt.UTC)
        if created and done:
            self.duration.labels(meta["namespace"], phase).observe(
                max(0.0, (done - created).total_seconds())
            )
        self.forget_run(meta["namespace"], meta["name"])

    def forget_run(self, namespace: str, name: str) -> None:
        for gauge in (self.progress, self.throughput):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)

    def seen(self, uid: str, namespace: str, phase: str | None) -> None:
        """The watch showed a run in this phase."""
        if phase in PHASES:
            with self._lock:
                self._phases[uid] = (namespace, phase)
                self._namespace_seen(namespace)

    def retain(self, namespace: str | None, uids: set[str]) -> None:
        """A relist of ``namespace`` (None: all) holds these runs only: forget the others."""
        with self._lock:
            for uid in [
                u
                for u, (ns, _) in self._phases.items()
                if u not in uids and namespace in (None, ns)
            ]:
                del self._phases[uid]

    def deleted(self, uid: str, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)
        self.forget_run(namespace, name)
        self.run_scores_gone(uid)

    def published(
        self, namespace: str, leaderboard: str, entries: list[dict[str, Any]], uid: str
    ) -> None:
        """Score series of a run's entries (set by ``uid``)."""
        with self._lock:
            for e in entries:
                if e.get("value") is None:
                    continue
                better = e.get("higherIsBetter")
                direction = "unknown" if better is None else ("higher" if better else "lower")
                labels = (
                    namespace,
                    bounded(leaderboard),
                    bounded(e["model"]),
                    bounded(e["task"]),
                    bounded(e["metric"]),
                    direction,
                )
                self.score.labels(*labels).set(e["value"])
                stderr = e.get("stderr")
                if isinstance(stderr, int | float) and math.isfinite(stderr):
                    self.score_stderr.labels(*labels).set(stderr)
                else:  # this score has none: an older one's must not stand for it
                    with contextlib.suppress(KeyError):
                        self.score_stderr.remove(*labels)
                self._score_runs.setdefault(labels, set()).add(uid)
                self._run_scores.setdefault(uid, set()).add(labels)

    def rebuild_scores(
        self, namespace: str, leaderboard: str, entries: list[dict[str, Any]]
    ) -> None:
        """The series of a Leaderboard's table, as at start-up (each entry stands for the run
        that published it)."""
        by_run: dict[str, list[dict[str, Any]]] = {}
        for e in entries:
            by_run.setdefault(str(e.get("runUid") or e.get("run")), []).append(e)
        for uid, rows in by_run.items():
            self.published(namespace, leaderboard, rows, uid)

    def _drop_scores(self, series: list[tuple[str, ...]]) -> None:
        for labels in series:
            self._score_runs.pop(labels, None)
            with contextlib.suppress(KeyError):
                self.score.remove(*labels)
            with contextlib.suppress(KeyError):
                self.score_stderr.remove(*labels)

    def run_scores_gone(self, uid: str) -> None:
        """The run was deleted: the score series only it set go."""
        with self._lock:
            gone = []
            for labels in self._run_scores.pop(uid, set()):
                runs = self._score_runs.get(labels, set())
                runs.discard(uid)
                if not runs:
                    gone.append(labels)
            self._drop_scores(gone)

    def retain_leaderboards(self, namespace: str | None, boards: set[tuple[str, str]]) -> None:
        """A relist of ``namespace`` (None: all) holds these Leaderboards only."""
        listed = {(ns, bounded(name)) for ns, name in boards}
        with self._lock:
            stale = {
                k[:2] for k in self._score_runs if namespace in (None, k[0]) and k[:2] not in listed
            }
        for ns, board in stale:
            self._leaderboard_gone(ns, board)

    def leaderboard_gone(self, namespace: str, leaderboard: str) -> None:
        """The Leaderboard was deleted: its score series go."""
        self._leaderboard_gone(namespace, bounded(leaderboard))

    def _leaderboard_gone(self, namespace: str, label: str) -> None:
        with self._lock:
            gone = [k for k in self._score_runs if k[0] == namespace and k[1] == label]
            for runs in (self._score_runs.get(k, set()) for k in gone):
                for uid in runs:
                    self._run_scores.get(uid, set()).difference_update(gone)
            self._drop_scores(gone)

    @contextmanager
    def timed_handler(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        except Exception:
            self.handler_calls.labels(name, "error").inc()
            raise
        else:
            self.handler_calls.labels(name, "ok").inc()
        finally:
            self.handler_duration.labels(name).observe(time.monotonic() - start)


class _PhaseCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "lmms_operator_evalruns",
            "EvalRuns the operator sees, by namespace and phase ("
            + ", ".join(PHASES)
            + "); a namespace's series go when it holds no run.",
            labels=["namespace", "phase"],
        )
        for (namespace, phase), n in self._metrics.phase_counts().items():
            family.add_metric([namespace, phase], n)
        yield family


def gpu_seconds(
    run: Mapping[str, Any], pods: list[dict[str, Any]], now: dt.datetime | None = None
) -> float:
    """GPU-seconds the run's pods held: for each pod that started, from its start to the
    end of its container (or its deletion, or now), times the GPUs per pod (none for a
    model served at spec.model.endpoint: its pod requests none)."""
    now = now or dt.datetime.now(dt.UTC)
    spec = run.get("spec") or {}
    gpus = (
        0
        if (spec.get("model") or {}).get("endpoint")
        else int((spec.get("resources") or {}).get("gpus", 1))
    )
    total = 0.0
    for pod in pods:
        status = pod.get("status") or {}
        started = parse_time(status.get("startTime"))
        if started is None:
            continue
        ends = [
            parse_time(((c.get("state") or {}).get("terminated") or {}).get("finishedAt"))
            for c in status.get("containerStatuses") or []
        ]
        ended = max((e for e in ends if e is not None), default=None)
        ended = ended or parse_time((pod.get("metadata") or {}).get("deletionTimestamp"))
        total += gpus * max(0.0, ((ended or now) - started).total_seconds())
    return total


def bounded(value: object, limit: int = MAX_LABEL) -> str:
    """A label value of at most ``limit`` characters: cut, with a hash of the whole."""
    text = str(value)
    if len(text) <= limit:
        return text
    return text[: limit - 11] + "~" + hashlib.sha256(text.encode()).hexdigest()[:10]
