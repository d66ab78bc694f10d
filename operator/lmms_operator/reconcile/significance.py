"""Whether two scores differ by more than their standard errors. Pure.

lmms-eval reports a standard error with most metrics (bootstrap or analytic, per
metric). Two scores from independent runs are compared with a two-sided z-test on their
difference: ``z = (a - b) / sqrt(se_a² + se_b²)``, ``p = erfc(|z| / √2)``; the difference
is significant when ``p < alpha`` (``DEFAULT_ALPHA`` = 0.05 unless the caller chooses
another level). Where either score has no standard error, nothing is claimed: the
comparison says "unknown", never "tied" and never "significant".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class Difference:
    """``a - b`` and what can be said about it."""

    a: float
    b: float
    diff: float
    stderr: float | None
    z: float | None
    p: float | None
    significant: bool | None  # None: a standard error is missing

    @property
    def verdict(self) -> str:
        if self.significant is None:
            return "unknown (no stderr)"
        return "significant" if self.significant else "not significant"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def z_test(
    a: float,
    se_a: float | None,
    b: float,
    se_b: float | None,
    alpha: float = DEFAULT_ALPHA,
) -> Difference:
    """The two-sided z-test of ``a - b`` for scores of independent runs."""
    diff = a - b
    sa, sb = _number(se_a), _number(se_b)
    if sa is None or sb is None or sa < 0 or sb < 0:
        return Difference(a, b, diff, None, None, None, None)
    se = math.sqrt(sa * sa + sb * sb)
    if se == 0:
        # Exact scores (a deterministic metric on the same documents): any gap counts.
        return Difference(a, b, diff, 0.0, None, 0.0 if diff else 1.0, diff != 0)
    z = diff / se
    p = math.erfc(abs(z) / math.sqrt(2))
    return Difference(a, b, diff, se, z, p, p < alpha)


@dataclass(frozen=True)
class Row:
    task: str
    metric: str
    higher_is_better: bool | None
    difference: Difference | None  # None: the metric is in one result only
    a: float | None
    b: float | None

    @property
    def better(self) -> str:
        """Which side is significantly better: "A", "B", or "" (neither, or unknown)."""
        d = self.difference
        if d is None or not d.significant:
            return ""
        a_higher = d.diff > 0
        return "A" if a_higher == (self.higher_is_better is not False) else "B"


def compare(
    a: Iterable[Mapping[str, Any]],
    b: Iterable[Mapping[str, Any]],
    alpha: float = DEFAULT_ALPHA,
) -> list[Row]:
    """Per (task, metric) of either result list (``status.results`` or leaderboard
    entries: ``task``, ``metric``, ``value``, ``stderr``, ``higherIsBetter``)."""

    def index(results: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
        return {(str(r["task"]), str(r["metric"])): r for r in results}

    left, right = index(a), index(b)
    rows = []
    for key in sorted(set(left) | set(right)):
        ra, rb = left.get(key), right.get(key)
        va = _number(ra.get("value")) if ra else None
        vb = _number(rb.get("value")) if rb else None
        hib = next(
            (
                r.get("higherIsBetter")
                for r in (ra, rb)
                if r and r.get("higherIsBetter") is not None
            ),
            None,
        )
        diff = None
        if va is not None and vb is not None and ra is not None and rb is not None:
            diff = z_test(va, ra.get("stderr"), vb, rb.get("stderr"), alpha)
        rows.append(Row(key[0], key[1], hib, diff, va, vb))
    return rows


def tied_with_best(
    entry: Mapping[str, Any], best: Mapping[str, Any], alpha: float = DEFAULT_ALPHA
) -> bool:
    """Whether ``entry``'s gap to the best score is within error (not significant at
    ``alpha``). False where a standard error is missing: no tie is claimed then."""
    va, vb = _number(entry.get("value")), _number(best.get("value"))
    if va is None or vb is None:
        return False
    return z_test(va, entry.get("stderr"), vb, best.get("stderr"), alpha).significant is False
