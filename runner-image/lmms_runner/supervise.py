"""One lmms-eval process, supervised: started in a session of its own, its output
forwarded (redacted) to ours and fed to the progress tracker, stopped on request."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from .log import log
from .patches.answer_count import PREFIX as COUNTED
from .progress import Tracker
from .redact import Redactor


class Stopped(Exception):
    """The runner was told to stop (SIGTERM) while lmms-eval ran."""


class Forwarder(threading.Thread):
    """Copies one output stream of lmms-eval to ours, redacted, and feeds the tracker.

    tqdm redraws a bar with carriage returns many times a second; the log keeps at most
    one line per bar per second so ``kubectl logs`` stays readable, and none of the
    answer counts (``patches.answer_count``), which only the tracker reads."""

    def __init__(self, stream: IO[bytes], out: IO[str], tracker: Tracker, redact: Redactor) -> None:
        super().__init__(daemon=True)
        self.stream, self.out, self.tracker, self.redact = stream, out, tracker, redact
        self._last_bar = 0.0

    def run(self) -> None:
        buf = b""
        while True:
            chunk = (
                self.stream.read1(65536)
                if hasattr(self.stream, "read1")
                else self.stream.read(65536)
            )
            if not chunk:
                break
            buf += chunk
            while True:
                cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0), default=-1)
                if cut < 0:
                    break
                line, sep, buf = buf[:cut], buf[cut : cut + 1], buf[cut + 1 :]
                self._line(line.decode(errors="replace"), is_redraw=sep == b"\r")
        if buf:
            self._line(buf.decode(errors="replace"), is_redraw=False)

    def _line(self, text: str, is_redraw: bool) -> None:
        if not text.strip():
            return
        self.tracker.feed(text)
        if text.startswith(COUNTED):
            return
        now = time.monotonic()
        if is_redraw and now - self._last_bar < 1.0 and "100%" not in text:
            return
        if is_redraw:
            self._last_bar = now
        self.out.write(self.redact(text) + "\n")
        self.out.flush()


class Supervisor:
    """Runs lmms-eval processes one at a time; ``terminate`` stops the current one and
    marks the run as stopping."""

    def __init__(self, tracker: Tracker, redact: Redactor) -> None:
        self.tracker, self.redact = tracker, redact
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()

    def run(self, argv: list[str], env: dict[str, str]) -> int:
        """Runs ``argv`` with ``env`` to its end; its exit code."""
        self.child = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        assert self.child.stdout is not None and self.child.stderr is not None
        readers = [
            Forwarder(self.child.stdout, sys.stdout, self.tracker, self.redact),
            Forwarder(self.child.stderr, sys.stderr, self.tracker, self.redact),
        ]
        for r in readers:
            r.start()
        rc = self.child.wait()
        for r in readers:
            r.join(timeout=10)
        log(f"lmms-eval exited with code {rc}")
        return rc

    def terminate(self) -> None:
        self.stopping.set()
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, signal.SIGTERM)
