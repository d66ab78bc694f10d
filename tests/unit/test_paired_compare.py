"""`compare` with both runs' logged samples: the paired t-test on the documents both runs
scored (matched by doc id), as lmms-eval 0.7.3's ``paired_ttest`` computes it; without
them the z-test; the output says which test each row used and how many documents were
paired. The samples come from ConfigMaps in the tenant's namespace: their parser never
fails on what it is given."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmms_operator import cli
from lmms_operator.cli import output as out
from lmms_operator.cli.samples import parse_lines
from lmms_operator.reconcile.significance import (
    PAIRED_T_TEST,
    Scores,
    compare,
    paired_t_test,
    t_critical,
    t_two_sided_p,
)
from tests import apistub

# Ten documents: A right on 8, B on 4; A right wherever B is. By hand: the differences
# A - B are 1 on docs 0, 2, 6, 9, else 0: mean 0.4, sample variance (4·0.6² + 6·0.4²)/9
# = 0.2667, standard error √(0.2667/10) = 0.1633, t = 0.4/0.1633 = √6 = 2.4495, 9
# degrees of freedom: p = 0.03679 (scipy.stats.ttest_rel), t(0.975, 9) = 2.2622, so
# the 95% interval is 0.4 ± 0.3694 = [0.030591, 0.769409].
A = [1, 1, 1, 0, 1, 0, 1, 1, 1, 1]
B = [0, 1, 0, 0, 1, 0, 0, 1, 1, 0]


def test_the_paired_test_gives_the_figures_computed_by_hand() -> None:
    d = paired_t_test(A, B)
    assert d.test == PAIRED_T_TEST and d.n == 10
    assert (d.a, d.b, d.diff) == pytest.approx((0.8, 0.4, 0.4))
    assert d.stderr == pytest.approx(math.sqrt(2.4 / 9 / 10))
    assert d.z == pytest.approx(math.sqrt(6))
    assert d.p == pytest.approx(0.036787497879786, rel=1e-9)
    assert d.ci == pytest.approx((0.030591, 0.769409), abs=1e-6)
    assert d.significant is True and paired_t_test(A, B, alpha=0.01).significant is False
    # Unpaired, the same scores are far from significant: the z-test of the two means
    # with their binomial standard errors, √(.8·.2/9) and √(.4·.6/9): z = 0.4/√(.4/9) =
    # 1.897, p = 0.0578.
    assert compare(
        [{"task": "t", "metric": "acc", "value": 0.8, "stderr": math.sqrt(0.16 / 9)}],
        [{"task": "t", "metric": "acc", "value": 0.4, "stderr": math.sqrt(0.24 / 9)}],
    )[0].difference.p == pytest.approx(0.05778, abs=1e-5)  # type: ignore[union-attr]


def test_edge_cases_follow_lmms_eval() -> None:
    same = paired_t_test([1, 0, 1], [1, 0, 1])
    assert (same.diff, same.p, same.significant) == (0, 1.0, False)
    shifted = paired_t_test([1, 1, 1], [0, 0, 0])  # every document differs alike
    assert shifted.p == 0.0 and shifted.significant is True and shifted.z == math.inf
    one = paired_t_test([1], [0])
    assert one.significant is None and one.verdict == "unknown (n < 2)"
    with pytest.raises(ValueError):
        paired_t_test([1, 0], [1])


def test_the_t_distribution_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 9, 30, 500, 20_000):
        for t in (0.0, 0.05, 1.0, 2.0, 3.5, 10.0, 60.0):
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9, abs=1e-15)
        assert t_critical(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)


def test_the_paired_test_is_lmms_evals() -> None:
    """The port gives what lmms-eval 0.7.3's own paired_ttest gives (its --baseline
    comparison), on scores of every kind: binary, graded, with ties."""
    metrics = pytest.importorskip("lmms_eval.api.metrics")
    rng = random.Random(32)
    cases: list[tuple[list[float], list[float]]] = [([*map(float, A)], [*map(float, B)])]
    for n in (2, 5, 40, 1000):
        cases.append(
            (
                [rng.randint(0, 1) * 1.0 for _ in range(n)],
                [rng.randint(0, 1) * 1.0 for _ in range(n)],
            )
        )
        cases.append(([rng.random() for _ in range(n)], [rng.random() * 0.9 for _ in range(n)]))
    for a, b in cases:
        mine = paired_t_test(a, b)
        theirs = metrics.paired_ttest(a, b)  # current - baseline: A - B here
        assert mine.n == theirs["n"]
        assert mine.diff == pytest.approx(theirs["mean_diff"], abs=1e-12)
        assert mine.stderr == pytest.approx(theirs["se_diff"], abs=1e-12)
        assert mine.z == pytest.approx(theirs["t_stat"], rel=1e-9)
        assert mine.p == pytest.approx(float(theirs["p_value"]), rel=1e-7, abs=1e-12)
        assert mine.ci == pytest.approx((theirs["ci_lower"], theirs["ci_upper"]), rel=1e-9)


def test_only_shared_documents_count() -> None:
    results = [{"task": "t", "metric": "acc,none", "value": 0.5, "stderr": 0.1}]
    a: Scores = {"t": {i: {"acc": float(A[i])} for i in range(10)} | {"extra": {"acc": 1.0}}}
    docs_b: dict[int | str, dict[str, float]] = {i: {"acc": float(B[i])} for i in range(10)}
    b: Scores = {"t": docs_b | {99: {"acc": 0.0}}}
    (row,) = compare(results, results, samples=(a, b))
    d = row.difference
    assert d is not None and d.test == PAIRED_T_TEST and d.n == 10
    assert d.p == pytest.approx(0.036787497879786, rel=1e-9)
    # No metric scored per document in both: the z-test (here on equal values).
    (row,) = compare(results, results, samples=(a, {"t": {0: {"other": 1.0}}}))
    assert row.difference is not None and row.difference.test == "z" and row.difference.p == 1.0


def test_the_parser_matches_what_the_operator_writes() -> None:
    text = "\n".join(
        [
            '{"id":0,"target":"red","response":"red","scores":{"exact_match":1.0}}',
            '{"id":"q-1","scores":{"exact_match":0,"mme":0.5}}',
            '{"id":2,"scores":{"exact_match":true,"nan":NaN,"big":1e999}}',  # not numbers
            '{"id":true,"scores":{"a":1}}',  # not an id
            '{"id":3,"scores":{"a":1}}',
            '{"id":3,"scores":{"a":0}}',  # twice: which counts is not knowable
            "not json",
            "[1, 2]",
        ]
    )
    assert parse_lines(text) == {
        0: {"exact_match": 1.0},
        "q-1": {"exact_match": 0.0, "mme": 0.5},
        2: {},
    }


RECORD = st.fixed_dictionaries(
    {},
    optional={
        "id": st.integers() | st.text(max_size=300) | st.booleans() | st.none() | st.floats(),
        "scores": st.dictionaries(
            st.text(max_size=300),
            st.integers() | st.floats() | st.booleans() | st.text(max_size=5) | st.none(),
            max_size=5,
        )
        | st.lists(st.integers(), max_size=3)
        | st.none(),
        "target": st.text(max_size=20),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(RECORD.map(json.dumps) | st.text(max_size=60), max_size=20))
def test_the_parser_reads_any_config_map_without_failing(lines: list[str]) -> None:
    docs = parse_lines("\n".join(lines))
    for doc, scores in docs.items():
        assert isinstance(doc, int | str) and not isinstance(doc, bool)
        assert all(isinstance(v, float) and math.isfinite(v) for v in scores.values())
        assert all(len(k) <= 253 for k in scores)


# -- the command, against a stand-in API server ------------------------------------------------


def run(name: str, value: float, scores: list[int] | None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": "Succeeded",
        "results": [{"task": "colors", "metric": "exact_match", "value": value, "stderr": 0.15}],
    }
    if scores is not None:
        status["samples"] = {
            "tasks": [
                {"task": "colors", "count": 10, "kept": 10, "configMaps": [f"{name}-samples-0"]}
            ]
        }
    return {
        "kind": "EvalRun",
        "metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}", "generation": 1},
        "spec": {"model": {"type": "dummy", "pretrained": name}, "tasks": ["colors"]},
        "status": status,
    }


def lines(scores: list[int]) -> str:
    return "\n".join(
        json.dumps({"id": i, "scores": {"exact_match": s}}) for i, s in enumerate(scores)
    )


@pytest.fixture()
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[apistub.ApiStub]:
    for server in apistub.serve():
        for name, value, scores in (("base", 0.8, A), ("cand", 0.4, B), ("plain", 0.4, None)):
            server.put(run(name, value, scores))
            if scores is not None:
                server.config_map("team-a", f"{name}-samples-0", {"0.jsonl": lines(scores)})
                cm = server.objects[f"/api/v1/namespaces/team-a/configmaps/{name}-samples-0"]
                cm["metadata"]["ownerReferences"] = [{"uid": f"uid-{name}", "kind": "EvalRun"}]
        # A ConfigMap the run does not own is not read, whatever its status says.
        server.put(run("forged", 0.4, B))
        server.config_map("team-a", "forged-samples-0", {"0.jsonl": lines(B)})
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path)))
        yield server


def compare_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        code = cli.kubectl_main(["compare", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().out


def test_compare_pairs_two_runs_that_logged_their_samples(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = compare_cli(capsys, "base", "cand")
    assert code == out.REGRESSION  # B significantly worse: paired p = 0.037
    row = next(line for line in text.splitlines() if line.startswith("colors"))
    assert "paired n=10" in row and "2.45" in row and "0.0368" in row and row.rstrip().endswith("A")
    assert "paired t-test on the per-document scores" in text and "(10 paired)" in text
    (doc,) = json.loads(compare_cli(capsys, "base", "cand", "-o", "json")[1])
    assert (doc["test"], doc["paired"], doc["significant"]) == ("paired-t", 10, True)
    assert doc["p"] == pytest.approx(0.036787497879786) and doc["diff"] == pytest.approx(0.4)
    assert doc["ci"] == pytest.approx([0.030591, 0.769409], abs=1e-6)


def test_compare_says_it_used_the_unpaired_test_without_both_samples(
    stub: apistub.ApiStub, capsys: pytest.CaptureFixture[str]
) -> None:
    for other in ("plain", "forged"):
        code, text = compare_cli(capsys, "base", other)
        row = next(line for line in text.splitlines() if line.startswith("colors"))
        assert " z " in row and "not significant" in row  # z = 0.4 / (0.15·√2) = 1.89
        assert "unpaired: both runs' logged samples (spec.evaluation.logSamples)" in text
        assert code == out.OK
