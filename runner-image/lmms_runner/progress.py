"""Follows lmms-eval's output (loguru on stdout, tqdm bars on stderr) into a structured
progress state. lmms-eval reports progress only through these lines."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections import deque

from lmms_operator.api.runner import Harness, RunnerPhase, RunnerProgress, TaskState

TQDM = re.compile(
    r"(?:(?P<desc>[^\r\n|]*?):\s*)?(?P<pct>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)"
    r"\s*\[(?P<elapsed>[\d:]+)<(?P<remaining>[\d:?]+)(?:,\s*(?P<rate>[\d.]+|\?)\s*(?P<unit>it/s|s/it))?"
)
SELECTED = re.compile(r"Selected Tasks: \[(?P<tasks>[^\]]*)\]")
POSTPROCESSED = re.compile(r"Postprocessed (?P<n>\d+) docs for (?P<task>[^/\s]+)")
LOGURU_LEVEL = re.compile(r"\|\s*(?P<level>DEBUG|INFO|SUCCESS|WARNING|ERROR|CRITICAL)\s*\|")
#: lmms-eval's API backends log this, then score a placeholder answer: a silent wrong.
FAILED_REQUEST = re.compile(r"All \d+ attempts failed")
EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit|NotFound)\b.*:")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RESPONDING = "Model Responding"
#: Printed by lmms-eval's process before each chunk of a request type
#: (``lmms_runner.patches.chunked_answers``).
ANSWERED = re.compile(r"^lmms-runner: answered (?P<n>\d+)/(?P<total>\d+)$")
#: Printed by lmms-eval's process at each answer: the "Model Responding" bar's count, as
#: a redraw would show it (``lmms_runner.patches.answer_count``).
RESPONDED = re.compile(r"^lmms-runner: responded (?P<n>\d+)/(?P<total>\d+)$")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(clock: str) -> float | None:
    if "?" in clock:
        return None
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


class Tracker:
    """Thread-safe: the output readers feed it, the HTTP server reads snapshots."""

    def __init__(
        self, tasks: list[str], keep_lines: int = 20, harness: Harness | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._harness = harness  # which lmms-eval runs, and whether patched
        self._tasks = {t: TaskState(name=t) for t in tasks}
        self._phase: RunnerPhase = "starting"
        self._bars_done = 0  # samples of "Model Responding" bars that finished
        self._bar_n = 0
        self._bar_total = 0
        self._rate: float | None = None
        self._eta: float | None = None
        self._started = _now()
        self._updated = self._started
        self._last = deque[str](maxlen=keep_lines)
        self._reason: str | None = None
        self._message: str | None = None
        self.last_error: str | None = None
        self.failed_requests = 0
        self.changes = 0  # bumps on every state change (for tests and /metrics)
        self._t0 = time.monotonic()
        # lmms-eval processes: one for the whole run, or (with a cache volume) one per
        # task, each bringing its own "Model Responding" bars.
        self._invocations = 1
        self._finished_invocations = 0
        self._current_task: str | None = None  # the one task of a per-task process
        self._shown = 0.0  # the highest percent reported: it never goes down
        # While lmms-eval answers a request type in chunks: (answered before the current
        # chunk, requests of the type, what earlier types added to _bars_done).
        self._chunks: tuple[int, int] | None = None

    def plan(self, invocations: int) -> None:
        """The run will start lmms-eval this many times (one per task with a cache volume)."""
        with self._lock:
            self._invocations = max(1, invocations)

    def begin_task(self, task: str | None) -> None:
        """A per-task lmms-eval process starts: its bars count for ``task``."""
        with self._lock:
            self._current_task = task
            self._bars_done = self._bar_n = self._bar_total = 0

    def finish_invocation(self) -> None:
        """One lmms-eval process is done (or its task was done in an earlier attempt)."""
        with self._lock:
            self._finished_invocations = min(self._invocations, self._finished_invocations + 1)
            self._bars_done = self._bar_n = self._bar_total = 0
            self._current_task = None
            self.changes += 1

    #: What the tracker keeps of lmms-eval's output (which a custom task or a model's
    #: code can fill with anything): this many tasks, names this long.
    MAX_TASKS = 256
    MAX_NAME = 253

    def _task(self, name: str, state: TaskState | None = None) -> None:
        name = name[: self.MAX_NAME]
        if name in self._tasks or len(self._tasks) < self.MAX_TASKS:
            if state is not None:
                self._tasks[name] = state.model_copy(update={"name": name})
            else:
                self._tasks.setdefault(name, TaskState(name=name))

    def feed(self, line: str) -> None:
        line = ANSI.sub("", line[:16384]).strip()
        if not line:
            return
        with self._lock:
            self._updated = _now()
            self.changes += 1
            if self._phase == "starting":
                # Any line of lmms-eval's (a log line at any --verbosity, a checkpoint's
                # loading bar, a library's warning): it is loading the tasks and the model.
                self._phase = "loading"
            answered = ANSWERED.match(line)
            if answered:
                n, total = int(answered.group("n")), int(answered.group("total"))
                if self._chunks is None:
                    self._bar_n = self._bar_total = 0  # the bars now count chunks
                self._chunks = (n, total)
                self._bar_n = self._bar_total = 0
                if n >= total:  # the request type is answered
                    self._bars_done += total
                    self._chunks = None
                return
            responded = RESPONDED.match(line)
            if responded:
                self._responding(int(responded.group("n")), int(responded.group("total")))
                return
            bar = TQDM.search(line)
            if bar:
                self._on_bar(bar)
                return
            self._last.append(line[:500])
            level = LOGURU_LEVEL.search(line)
            if level and level.group("level") in ("ERROR", "CRITICAL"):
                self.last_error = line.split(" - ", 1)[-1][:1000]
                if FAILED_REQUEST.search(line):
                    self.failed_requests += 1
            elif EXCEPTION_LINE.match(line):
                # The last line of a traceback says what went wrong; "Traceback" does not.
                self.last_error = line[:1000]
            selected = SELECTED.search(line)
            if selected:
                for name in re.findall(r"'([^']+)'", selected.group("tasks")):
                    self._task(name)
            post = POSTPROCESSED.search(line)
            if post:
                self._phase = "postprocessing"
                n = int(post.group("n"))
                self._task(post.group("task"), TaskState(name="", done=n, total=n))

    def _responding(self, n: int, total: int) -> None:
        """The "Model Responding" bar stands at ``n`` of ``total`` answers: from a redraw,
        or counted at each answer (``RESPONDED``)."""
        if self._phase in ("starting", "loading"):
            self._phase = "evaluating"
        if self._chunks is None and n < self._bar_n and self._bar_n >= self._bar_total > 0:
            self._bars_done += self._bar_total  # a new request type started
        self._bar_n, self._bar_total = n, total
        task = self._current_task
        if task is not None and task in self._tasks and self._tasks[task].total <= total:
            # One task per process: the bar counts that task's requests.
            self._tasks[task] = TaskState(name=task, done=min(n, total), total=total)

    def _on_bar(self, bar: re.Match[str]) -> None:
        desc = (bar.group("desc") or "").strip()
        n, total = int(bar.group("n")), int(bar.group("total"))
        if desc.startswith(RESPONDING):
            self._responding(n, total)
            rate = bar.group("rate")
            if rate and rate != "?":
                value = float(rate)
                self._rate = (
                    value if bar.group("unit") == "it/s" else (1 / value if value else None)
                )
            self._eta = _seconds(bar.group("remaining"))
        elif desc.startswith("Postprocessing"):
            self._phase = "postprocessing"

    def set_phase(
        self, phase: RunnerPhase, reason: str | None = None, message: str | None = None
    ) -> None:
        with self._lock:
            self._phase = phase
            self._reason, self._message = reason, message
            self._updated = _now()
            self.changes += 1

    @property
    def phase(self) -> RunnerPhase:
        with self._lock:
            return self._phase

    def _percent(self, done: int, total: int) -> float:
        """Overall percent: finished lmms-eval processes, plus the current one's share
        (answers 95%, post-processing the rest). Never 100 before the run is done, and
        never lower than what was shown before (a second bar restarting at 0, a new
        per-task process)."""
        if self._phase == "done":
            return 100.0
        current = 0.0
        if self._phase in ("postprocessing", "uploading"):
            current = 0.95
        elif total:
            current = 0.95 * done / total
        value = 100.0 * (self._finished_invocations + current) / self._invocations
        self._shown = max(self._shown, min(round(value, 2), 99.9))
        return self._shown

    def snapshot(self) -> RunnerProgress:
        with self._lock:
            if self._chunks is not None:
                answered, of = self._chunks
                done = self._bars_done + answered + self._bar_n
                total = self._bars_done + of
            else:
                done = self._bars_done + self._bar_n
                total = self._bars_done + self._bar_total
            percent = self._percent(done, total)
            return RunnerProgress(
                phase=self._phase,
                percent=percent,
                done=done,
                total=total,
                tasks=[t.model_copy() for t in self._tasks.values()],
                samples_per_second=self._rate,
                eta_seconds=self._eta,
                started_at=self._started,
                updated_at=self._updated,
                reason=self._reason,
                message=self._message,
                last_lines=list(self._last),
                harness=self._harness.model_copy() if self._harness else None,
            )
