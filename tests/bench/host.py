"""How fast the host is while a benchmark runs, so that figures taken at different hours
can be read side by side.

On a shared 2-core machine the same code starts up to 1.5 times slower at one hour than
at another, and a benchmark whose cases compete for the cores (four pods starting at
once) moves with it. Two figures say which kind of hour a run had:

- ``reference_seconds()``: the CPU seconds a fixed, single-threaded piece of pure Python
  takes (about 0.3 s on an idle host). It grows when the host's cores are slower (other
  machines' load on the same hardware, the clock, the caches), which CPU time, unlike
  wall time, does not hide.
- ``Steal``: the share of the machine's CPU time the hypervisor gave to others while a
  case ran (``/proc/stat``), time in which no process of ours could run at all.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path


def _work() -> int:
    total = 0
    table: dict[int, int] = {}
    for i in range(800_000):
        table[i % 1024] = table.get(i % 1024, 0) + i
        total += len(str(i))
    return total + len(table)


def reference_seconds(repeats: int = 5) -> float:
    """CPU seconds of the fixed workload, median of ``repeats``."""
    spent = []
    for _ in range(repeats):
        start = time.process_time()
        _work()
        spent.append(time.process_time() - start)
    return statistics.median(spent)


def _cpu_ticks(stat: Path) -> tuple[int, int] | None:
    """(all ticks, steal ticks) of the machine, or None where /proc/stat says nothing."""
    try:
        fields = stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "cpu" or len(fields) < 9:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: in user already]
    ticks = [int(v) for v in fields[1:9]]
    return sum(ticks), ticks[7]


class Steal:
    """The share of CPU time stolen from this machine between ``start()`` and
    ``stop()`` (0.0 to 1.0; NaN where the kernel does not report it)."""

    def __init__(self, stat: Path = Path("/proc/stat")) -> None:
        self._stat = stat
        self._start: tuple[int, int] | None = None

    def start(self) -> None:
        self._start = _cpu_ticks(self._stat)

    def stop(self) -> float:
        end = _cpu_ticks(self._stat)
        if self._start is None or end is None or end[0] <= self._start[0]:
            return float("nan")
        return (end[1] - self._start[1]) / (end[0] - self._start[0])
