"""Two scores differ significantly only beyond their standard errors (z-test)."""

from __future__ import annotations

import math

import pytest

from lmms_operator.reconcile.significance import compare, tied_with_best, z_test


def test_a_gap_within_the_errors_is_not_significant() -> None:
    d = z_test(0.80, 0.02, 0.78, 0.02)
    assert d.diff == pytest.approx(0.02)
    assert d.stderr == pytest.approx(math.sqrt(2) * 0.02)
    assert d.z == pytest.approx(0.7071, abs=1e-3)
    assert d.p == pytest.approx(0.4795, abs=1e-3)
    assert d.significant is False and d.verdict == "not significant"


def test_a_gap_beyond_the_errors_is_significant_at_the_chosen_level() -> None:
    d = z_test(0.80, 0.01, 0.75, 0.01)  # z = 3.54, p = 0.0004
    assert d.significant is True and d.p == pytest.approx(0.000405, rel=1e-2)
    # z = 2.0 (p = 0.0455): significant at 0.05, not at 0.01.
    assert z_test(0.70, 0.03, 0.60, 0.04).significant is True
    assert z_test(0.70, 0.03, 0.60, 0.04, alpha=0.01).significant is False


def test_without_a_standard_error_nothing_is_claimed() -> None:
    d = z_test(0.9, None, 0.1, 0.01)
    assert d.significant is None and d.p is None and d.verdict == "unknown (no stderr)"
    assert z_test(0.9, float("nan"), 0.1, 0.01).significant is None


def test_exact_scores_differ_whenever_they_differ() -> None:
    assert z_test(0.5, 0.0, 0.5, 0.0).significant is False
    assert z_test(0.5, 0.0, 0.4, 0.0).significant is True


def test_compare_matches_tasks_and_metrics_and_names_the_better_side() -> None:
    a = [
        {"task": "mme", "metric": "score", "value": 0.80, "stderr": 0.01},
        {"task": "asr", "metric": "wer", "value": 0.30, "stderr": 0.01, "higherIsBetter": False},
        {"task": "only-a", "metric": "acc", "value": 0.5},
    ]
    b = [
        {"task": "mme", "metric": "score", "value": 0.70, "stderr": 0.01},
        {"task": "asr", "metric": "wer", "value": 0.20, "stderr": 0.01, "higherIsBetter": False},
    ]
    rows = {(r.task, r.metric): r for r in compare(a, b)}
    assert rows["mme", "score"].better == "A"
    assert rows["asr", "wer"].better == "B"  # lower WER is better
    assert rows["only-a", "acc"].difference is None and rows["only-a", "acc"].b is None


def test_tied_with_best_needs_both_errors() -> None:
    best = {"value": 0.80, "stderr": 0.02}
    assert tied_with_best({"value": 0.78, "stderr": 0.02}, best)
    assert not tied_with_best({"value": 0.60, "stderr": 0.02}, best)
    assert not tied_with_best({"value": 0.79}, best)  # unknown: no tie claimed
