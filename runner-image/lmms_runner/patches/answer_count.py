"""Each answer of the model is counted as it arrives, not when lmms-eval's bar redraws.

Every lmms-eval backend advances its "Model Responding" tqdm bar once per answer (once per
batch where it answers in batches), but tqdm redraws the bar only every ``mininterval``
(0.1 s) and every ``miniters`` updates, which it adapts to the rate: what a redraw shows
lags the answers, and the redraws of a bar whose answers come in bursts (an
OpenAI-compatible server answering many concurrent requests at once) show a burst's first
answer, not its last. ``install`` makes each update of such a bar print a line
``lmms-runner: responded N/TOTAL`` (the bar's count and total), which the runner's
progress tracker reads as it reads a redraw, and leaves out of the log. Ranks other than
0 draw no bar (lmms-eval disables it there), so only rank 0 counts, as before.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

#: The lmms-eval versions whose backends' bars this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})

#: The description of the bar lmms-eval's backends advance per answer (some add a suffix).
RESPONDING = "Model Responding"
#: What each update prints (``lmms_runner.progress.RESPONDED`` reads it).
PREFIX = "lmms-runner: responded"


def counting_update(original: Any) -> Any:
    """``tqdm.update`` that, for a "Model Responding" bar, prints the count after it."""
    lock = threading.Lock()

    def update(self: Any, n: float | None = 1) -> Any:
        shown = original(self, n)
        # A disabled bar (another rank's) is never fully built: check before reading it.
        if getattr(self, "disable", True):
            return shown
        total = getattr(self, "total", None)
        if total and str(getattr(self, "desc", "")).startswith(RESPONDING):
            with lock:
                # Carriage returns on both sides: a line of its own beside tqdm's redraws.
                sys.stderr.write(f"\r{PREFIX} {int(self.n)}/{int(total)}\r")
                sys.stderr.flush()
        return shown

    update.__wrapped__ = original  # type: ignore[attr-defined]
    return update


def install() -> None:
    """Every tqdm bar counts its answers (see the module's docstring)."""
    from tqdm import std  # type: ignore[import-untyped]

    if not hasattr(std.tqdm.update, "__wrapped__"):
        std.tqdm.update = counting_update(std.tqdm.update)
