"""The operator's one clock. Everything that reads the time reads it here, so that a test
can hand the code a fake clock and move time on by hand, with no sleeps.

Two times, for two purposes: wall time (UTC) is written into statuses and compared with
the timestamps the API server writes; monotonic time measures intervals (backoff, debounce,
resync, how long a runner has not answered), which a wall clock stepped by NTP would
stretch or run backwards. Formatting a timestamp is ``reconcile.times.fmt_time``'s, not
the clock's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time


class Clock:
    """Wall time (UTC, for status timestamps) and monotonic time (for intervals)."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Waits ``seconds`` of monotonic time. Timers wait here rather than in
        ``asyncio.sleep``, so that a fake clock's waits end when the test moves its time
        on, not when real time passes."""
        await asyncio.sleep(max(0.0, seconds))
