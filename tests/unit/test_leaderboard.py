"""Ranking and storage of leaderboard tables (pure)."""

from __future__ import annotations

import json

from lmms_operator.reconcile import leaderboard as lb


def entry(
    model: str,
    task: str,
    metric: str,
    value: float,
    hib: bool = True,
    run: str | None = None,
    at: str = "2026-11-27T10:00:00Z",
) -> dict[str, object]:
    return {
        "model": model,
        "revision": None,
        "task": task,
        "metric": metric,
        "value": value,
        "stderr": None,
        "higherIsBetter": hib,
        "run": run or f"ns/{model}",
        "finishedAt": at,
    }


def test_ranking_respects_direction_and_rank_by() -> None:
    entries = [
        entry("a", "mme", "score", 1400),
        entry("b", "mme", "score", 1500),
        entry("a", "asr", "wer", 0.20, hib=False),
        entry("b", "asr", "wer", 0.10, hib=False),
        entry("a", "mme", "cognition", 300),
    ]
    ranked = lb.rank(entries, {"mme": "score"})
    mme = [r for r in ranked if r["task"] == "mme" and r["rank"]]
    assert [(r["model"], r["rank"]) for r in mme] == [("b", 1), ("a", 2)]
    asr = [r for r in ranked if r["task"] == "asr"]
    assert [(r["model"], r["rank"]) for r in asr] == [("b", 1), ("a", 2)]  # lower WER wins
    assert next(r for r in ranked if r["metric"] == "cognition")["rank"] == 0
    assert [r["model"] for r in lb.top(ranked, 1)] == ["b", "b"]


def test_publishing_twice_changes_nothing_and_reruns_replace() -> None:
    first = lb.merge([], [entry("a", "mme", "score", 1400, run="ns/r1")])
    again = lb.merge(
        first, [entry("a", "mme", "score", 1400, run="ns/r1", at="2026-11-28T00:00:00Z")]
    )
    assert again == first
    rerun = lb.merge(
        first, [entry("a", "mme", "score", 1450, run="ns/r2", at="2026-11-28T00:00:00Z")]
    )
    assert len(rerun) == 1 and rerun[0]["value"] == 1450
    older = lb.merge(rerun, [entry("a", "mme", "score", 1, run="ns/r0", at="2026-11-01T00:00:00Z")])
    assert older == rerun  # an older finish never replaces a newer one


def test_tables_render_and_split_under_the_limit() -> None:
    ranked = lb.rank([entry(f"model-{i:04d}", "mme", "score", float(i)) for i in range(6000)], {})
    shards = lb.shard(ranked)
    assert len(shards) > 1 and sum(len(s) for s in shards) == 6000
    for chunk in shards:
        files = lb.render(chunk)
        assert sum(len(v.encode()) for v in files.values()) < 1024 * 1024
    files = lb.render(ranked[:2])
    assert json.loads(files["table.json"])[0]["rank"] == 1
    assert files["table.csv"].splitlines()[0].startswith("rank,task,metric,value")
    assert "| 1 | mme | score ↑ |" in files["table.md"]


def test_nan_and_infinite_scores_are_not_ranked() -> None:
    entries = [
        {"model": "a", "task": "t", "metric": "acc", "value": float("nan")},
        {"model": "b", "task": "t", "metric": "acc", "value": 0.5},
        {"model": "c", "task": "t", "metric": "acc", "value": float("inf")},
    ]
    ranked = {e["model"]: e["rank"] for e in lb.rank(entries, {})}
    assert ranked == {"b": 1, "a": 0, "c": 0}


def test_a_rerun_of_the_same_evalrun_replaces_its_entry() -> None:
    """An edited spec, or the EvalRun re-created under the same name, is a new
    evaluation: its entry replaces the old one (it used to be dropped as a duplicate)."""
    first = dict(entry("a", "mme", "score", 1400, run="ns/r"), runUid="u1", specHash="h1")
    table = lb.merge([], [first])
    edited = dict(
        entry("a", "mme", "score", 1450, run="ns/r", at="2026-11-28T00:00:00Z"),
        runUid="u1",
        specHash="h2",
    )
    assert lb.merge(table, [edited])[0]["value"] == 1450
    recreated = dict(edited, runUid="u2", specHash="h1", value=1500.0)
    assert lb.merge(table, [recreated])[0]["value"] == 1500
    again = dict(first, finishedAt="2026-11-29T00:00:00Z", value=1.0)
    assert lb.merge(table, [again]) == table  # the same evaluation published twice


def test_settings_that_change_a_score_are_part_of_an_entry() -> None:
    full = dict(entry("a", "mme", "score", 1400), settings="lmms-eval=0.7.3")
    quick = dict(
        entry("a", "mme", "score", 900, at="2026-11-28T00:00:00Z"),
        settings="limit=10 lmms-eval=0.7.3",
    )
    table = lb.merge([full], [quick])
    assert sorted(e["value"] for e in table) == [900, 1400]  # the full run keeps its row
    files = lb.render(lb.rank(table, {}))
    assert "limit=10 lmms-eval=0.7.3" in files["table.md"]
    assert "settings" in files["table.csv"].splitlines()[0]


def test_entries_within_error_of_the_best_are_marked_tied() -> None:
    def scored(model: str, value: float, stderr: float | None) -> dict[str, object]:
        return dict(entry(model, "mme", "acc", value), stderr=stderr)

    ranked = lb.rank(
        [
            scored("best", 0.80, 0.02),
            scored("close", 0.78, 0.02),  # z = 0.71: within error
            scored("far", 0.60, 0.02),  # z = 7.1
            scored("unknown", 0.79, None),  # no stderr: no tie claimed
        ],
        {},
    )
    by_model = {r["model"]: r for r in ranked}
    assert [r["model"] for r in ranked] == ["best", "unknown", "close", "far"]
    assert "tiedWithBest" not in by_model["best"]
    assert by_model["close"]["tiedWithBest"] is True
    assert by_model["far"]["tiedWithBest"] is False
    assert by_model["unknown"]["tiedWithBest"] is False
    tables = lb.render(ranked)
    assert "| 3 ≈1 | mme |" in tables["table.md"] and "tied with the best" in tables["table.md"]
    assert tables["table.csv"].splitlines()[0].split(",")[6] == "tiedWithBest"
    assert json.loads(tables["table.json"])[2]["tiedWithBest"] is True
    # A new best moves the mark: nothing stale from an earlier ranking survives.
    again = lb.rank([*ranked, scored("new", 0.95, 0.01)], {})
    assert not any(r.get("tiedWithBest") for r in again)
    # Nor on entries that are no longer ranked (rankBy now names another metric).
    other = lb.rank([*ranked, dict(entry("best", "mme", "f1", 0.5))], {"mme": "f1"})
    assert not any("tiedWithBest" in r for r in other if r["metric"] == "acc")
