"""Whether two scores differ by more than their standard errors. Pure.

Two tests, and each answer says which it used:

- **Paired** (``paired_t_test``), when both runs logged their samples: the per-document
  scores of the documents both runs evaluated (matched by doc id; only shared documents
  count) are compared with a two-sided paired t-test, as lmms-eval 0.7.3's own
  ``lmms_eval.api.metrics.paired_ttest`` (its ``--baseline`` comparison) computes it: the
  mean of the differences, their standard error ``sd / √n``, ``t`` with ``n - 1``
  degrees of freedom, ``p = 2 (1 - T(|t|))`` and a 95% confidence interval. It is the
  test to use for two models on one benchmark: the documents' own difficulty cancels out.
  (Ported, so that the command line needs neither lmms-eval nor scipy; a unit test
  checks it against lmms-eval's.)
- **Unpaired** (``z_test``) otherwise: lmms-eval reports a standard error with most
  metrics (bootstrap or analytic, per metric), and two scores are compared as from
  independent runs: ``z = (a - b) / sqrt(se_a² + se_b²)``, ``p = erfc(|z| / √2)``.

A difference is significant when ``p < alpha`` (``DEFAULT_ALPHA`` = 0.05 unless the
caller chooses another level). Where a test cannot be made (no standard error, fewer
than two shared documents), nothing is claimed: the comparison says "unknown", never
"tied" and never "significant".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_ALPHA = 0.05
Z_TEST = "z"
PAIRED_T_TEST = "paired-t"


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
    test: str = Z_TEST  # or PAIRED_T_TEST (then ``z`` is the t statistic)
    n: int | None = None  # the paired documents
    ci: tuple[float, float] | None = None  # the paired test's 95% interval of a - b

    @property
    def verdict(self) -> str:
        if self.significant is None:
            return "unknown (no stderr)" if self.test == Z_TEST else "unknown (n < 2)"
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


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(ln + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """``2 (1 - T(|t|))`` for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return min(1.0, _betai(df / 2.0, 0.5, df / (df + t * t)))


def t_critical(df: int, level: float = 0.95) -> float:
    """The ``t`` with two-sided p = 1 - level (scipy's ``t.ppf((1 + level) / 2, df)``)."""
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > 1.0 - level:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_two_sided_p(mid, df) > 1.0 - level:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


def paired_t_test(
    a: Sequence[float], b: Sequence[float], alpha: float = DEFAULT_ALPHA
) -> Difference:
    """The two-sided paired t-test of ``a - b`` over the documents both runs scored
    (``a[i]`` and ``b[i]``: one document), as lmms-eval 0.7.3's ``paired_ttest``."""
    if len(a) != len(b):
        raise ValueError(f"paired scores of different lengths: {len(a)} and {len(b)}")
    n = len(a)
    mean_a = math.fsum(a) / n if n else math.nan
    mean_b = math.fsum(b) / n if n else math.nan
    if n < 2:
        return Difference(mean_a, mean_b, mean_a - mean_b, None, None, None, None, PAIRED_T_TEST, n)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean = math.fsum(diffs) / n
    se = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1) / n)
    if se == 0:
        # Every document differs by the same amount (lmms-eval: p 0, or 1 when none).
        t = math.copysign(math.inf, mean) if mean else 0.0
        p = 0.0 if mean else 1.0
    else:
        t = mean / se
        p = t_two_sided_p(t, n - 1)
    half = t_critical(n - 1) * se
    return Difference(
        mean_a,
        mean_b,
        mean,
        se,
        t,
        p,
        p < alpha,
        PAIRED_T_TEST,
        n,
        (mean - half, mean + half),
    )


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


#: Per-document scores of one run: task -> doc id -> metric -> score.
Scores = Mapping[str, Mapping[int | str, Mapping[str, float]]]


def paired_scores(
    a: Scores, b: Scores, task: str, metric: str
) -> tuple[list[float], list[float]] | None:
    """The scores of ``metric`` (``name`` or ``name,filter``: lmms-eval logs the name) of
    the documents of ``task`` that both runs scored, in doc-id order; None when either
    run has no samples of the task."""
    docs_a, docs_b = a.get(task), b.get(task)
    if not docs_a or not docs_b:
        return None
    key = metric.split(",")[0]
    shared = [d for d in docs_a if d in docs_b and key in docs_a[d] and key in docs_b[d]]
    shared.sort(key=lambda d: (isinstance(d, str), d if isinstance(d, int) else 0, str(d)))
    return [docs_a[d][key] for d in shared], [docs_b[d][key] for d in shared]


def compare(
    a: Iterable[Mapping[str, Any]],
    b: Iterable[Mapping[str, Any]],
    alpha: float = DEFAULT_ALPHA,
    samples: tuple[Scores, Scores] | None = None,
) -> list[Row]:
    """Per (task, metric) of either result list (``status.results`` or leaderboard
    entries: ``task``, ``metric``, ``value``, ``stderr``, ``higherIsBetter``). With
    ``samples`` (both runs' per-document scores), a metric that both runs scored per
    document gets the paired test; the others the z-test."""

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
        pairs = paired_scores(*samples, *key) if samples is not None else None
        if pairs is not None and len(pairs[0]) >= 2:
            diff = paired_t_test(*pairs, alpha)
        elif va is not None and vb is not None and ra is not None and rb is not None:
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
