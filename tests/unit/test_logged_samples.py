"""spec.evaluation.logSamples without an object store: the runner reads lmms-eval's
``samples_<task>.jsonl`` into compact records and serves them (``GET /samples``); the
operator keeps them in ConfigMaps owned by the run, all or none, and ``status.samples``
points at them. What the runner serves is the tenant's code speaking: every part is
bounded, and a parser of it never fails on what it is given."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmms_operator import errors
from lmms_operator.api import EvalRunSpec
from lmms_operator.api.runner import (
    SAMPLE_TEXT_LIMIT,
    ResultsSummary,
    SampleRecord,
    SamplesReport,
    TaskSamples,
)
from lmms_operator.api.status import EvalRunStatus
from lmms_operator.applier import Applier
from lmms_operator.clock import Clock
from lmms_operator.k8s import Api
from lmms_operator.metrics import Metrics
from lmms_operator.objectstore import ObjectStore, StorePolicy
from lmms_operator.reconcile import publishing
from lmms_operator.reconcile import samples as keeping
from lmms_operator.reconcile.plan import KeepSamples
from lmms_operator.reconcile.results import CONFIG_MAP_BUDGET, MAX_TASKS
from lmms_runner import samples
from lmms_runner.progress import Tracker
from lmms_runner.server import RunnerServer

#: A record as lmms-eval 0.7.3's EvaluationTracker.save_results_samples writes it (a
#: generate_until task with the exact_match metric; the MME-style dict score too).
LOGGED = {
    "doc_id": 3,
    "target": "red",
    "filtered_resps": "Red.",
    "token_counts": [None],
    "doc_hash": "ab" * 32,
    "input": "What colour is the square?",
    "exact_match": 0.0,
    "mme_percetion_score": {"question_id": "q3", "category": "color", "score": 1},
    "resps": [["Red."]],
}

RUN: dict[str, Any] = {
    "metadata": {"name": "r", "namespace": "team-a", "uid": "u-1", "generation": 1},
    "spec": {
        "model": {"type": "qwen2_vl"},
        "tasks": ["colors"],
        "evaluation": {"logSamples": True},
    },
}
SPEC = EvalRunSpec.model_validate(RUN["spec"])
STATUS = {"jobName": "r-abc"}
NOW = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
SUMMARY = ResultsSummary.model_validate(
    {
        "tasks": [
            {
                "task": "colors",
                "primary": "exact_match",
                "metrics": [{"name": "exact_match", "value": 0.5}],
            }
        ],
        "provenance": {"model": "qwen2_vl", "configHash": "abc"},
    }
)


def write_samples(directory: Path, task: str, n: int, text: str = "red") -> Path:
    path = directory / "model__x" / f"20261207_235959_samples_{task}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({**LOGGED, "doc_id": i, "target": text, "exact_match": float(i % 2)})
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- the runner ---------------------------------------------------------------------------------


def test_a_logged_sample_becomes_a_compact_record() -> None:
    rec = samples.record(LOGGED, redact=lambda s: s.replace("Red", "***"))
    assert rec == SampleRecord(
        id=3,
        target="red",
        response="***.",
        scores={"exact_match": 0.0, "mme_percetion_score": 1.0},
    )
    long = samples.record({**LOGGED, "target": "x" * 5000})
    assert long is not None and long.cut and len(long.target or "") == SAMPLE_TEXT_LIMIT
    assert samples.record({**LOGGED, "doc_id": True}) is None
    assert samples.record({"target": "no id"}) is None


def test_the_runner_reads_every_task_and_keeps_the_full_files_on_the_volume(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out"
    write_samples(output / "tasks" / "colors", "colors", 10)
    write_samples(output, "shades", 4)
    (output / "model__x" / "20261207_235959_samples_shades.jsonl").open("a").write("not json\n")
    volume = tmp_path / "hf"
    report = samples.report(output, volume / "lmms-runner" / "abc" / "samples", str(volume))
    by_task = {t.task: t for t in report.tasks}
    assert {t: by_task[t].count for t in by_task} == {"colors": 10, "shades": 4}
    assert [r.id for r in by_task["colors"].records] == list(range(10))
    assert by_task["shades"].truncated and by_task["shades"].note == "1 line(s) not read"
    assert report.path == "lmms-runner/abc/samples"
    kept = sorted(p.name for p in (volume / "lmms-runner/abc/samples").iterdir())
    assert kept == ["samples_colors.jsonl", "samples_shades.jsonl"]


def test_samples_over_the_limit_lose_their_text_then_records() -> None:
    records = [SampleRecord(id=i, target="t" * 150, scores={"acc": 1.0}) for i in range(100)]
    whole = samples.compact([("a", records, 0)], limit=100_000)
    assert not whole[0].truncated and whole[0].records[0].target
    no_text = samples.compact([("a", records, 0)], limit=5_000)
    assert no_text[0].truncated and len(no_text[0].records) == 100
    assert no_text[0].records[0].target is None and no_text[0].records[0].scores == {"acc": 1.0}
    cut = samples.compact([("a", records, 0), ("b", records, 0)], limit=2_000)
    assert all(t.count == 100 and 0 < len(t.records) < 100 for t in cut)
    assert "record(s) dropped to fit" in (cut[0].note or "")
    size = sum(
        len(r.model_dump_json(by_alias=True, exclude_defaults=True)) + 1
        for t in cut
        for r in t.records
    )
    assert size <= 2_000


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from([*LOGGED, "x", "acc"]) | st.text(max_size=8), JSON, max_size=10)
)
def test_the_runner_reads_any_logged_record_without_failing(sample: dict[str, Any]) -> None:
    rec = samples.record(sample)
    if rec is not None:
        assert len(rec.target or "") <= SAMPLE_TEXT_LIMIT
        assert len(rec.response or "") <= SAMPLE_TEXT_LIMIT
        assert all(v == v and abs(v) != float("inf") for v in rec.scores.values())
        rec.model_dump_json()  # serves as JSON


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_the_runner_reads_any_file_without_failing(lines: list[bytes]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "samples_t.jsonl"
        path.write_bytes(b"\n".join(lines))
        records, skipped = samples.read_task(path)
        assert len(records) + skipped <= len(
            [x for x in b"\n".join(lines).splitlines() if x.strip()]
        )


def test_the_runner_serves_its_samples_with_the_token_only() -> None:
    server = RunnerServer("127.0.0.1", 0, Tracker(["colors"]), "t0ken")
    server.start()
    host, port = server.address

    def get(token: str | None) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://{host}:{port}/samples")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, None

    try:
        assert get("t0ken")[0] == 404  # none yet (or the run logs none)
        server.samples = SamplesReport(
            tasks=[
                TaskSamples(task="colors", count=1, records=[SampleRecord(id=0, scores={"acc": 1})])
            ]
        )
        assert get(None)[0] == 401 and get("wrong")[0] == 401
        code, body = get("t0ken")
        assert code == 200
        # JSON Lines, which the operator reads a line at a time.
        assert body == b'{"task":"colors","count":1}\n{"id":0,"scores":{"acc":1.0}}\n'
        [task] = keeping.read(body).tasks
        assert (task.task, task.count, task.lines) == (
            "colors",
            1,
            ('{"id":0,"scores":{"acc":1.0}}\n',),
        )
    finally:
        server.stop()


# -- the operator -------------------------------------------------------------------------------


def report(n: int, text: str = "red", tasks: tuple[str, ...] = ("colors",)) -> SamplesReport:
    return SamplesReport(
        tasks=[
            TaskSamples(
                task=task,
                count=n,
                records=[
                    SampleRecord(id=i, target=text, response=text, scores={"exact_match": i % 2})
                    for i in range(n)
                ],
            )
            for task in tasks
        ]
    )


def test_the_samples_go_to_config_maps_owned_by_the_run_and_the_status_points_at_them() -> None:
    plan = publishing.decide(
        RUN,
        SPEC,
        STATUS,
        publishing.Inputs(summary=SUMMARY, samples=keeping.from_report(report(10))),
        NOW,
    )
    assert isinstance(plan.samples, KeepSamples)
    (cm,) = plan.samples.config_maps
    meta = cm["metadata"]
    assert meta["name"] == "r-abc-samples-0" and meta["ownerReferences"][0]["uid"] == "u-1"
    assert meta["labels"]["eval.lmms.dev/samples-of"] == "u-1"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "lmms-operator"
    lines = cm["data"]["0.jsonl"].splitlines()
    assert json.loads(lines[3]) == {
        "id": 3,
        "target": "red",
        "response": "red",
        "scores": {"exact_match": 1.0},
    }
    assert json.loads(cm["data"]["index.json"]) == {"0.jsonl": "colors"}
    pointer = plan.status.get("samples")
    assert pointer == {
        "tasks": [
            {
                "task": "colors",
                "count": 10,
                "kept": 10,
                "truncated": False,
                "configMaps": ["r-abc-samples-0"],
            }
        ]
    }
    EvalRunStatus.model_validate({"samples": pointer})  # within the schema
    assert plan.status["results"][0]["value"] == 0.5
    assert [e.reason for e in plan.events] == ["ResultsCollected", "SamplesKept"]


def test_the_status_names_the_cache_volume_and_the_output_that_hold_the_full_files() -> None:
    run = {**RUN, "spec": {**RUN["spec"], "cache": {"persistentVolumeClaim": "hf-cache"}}}
    full = report(3).model_copy(update={"path": "lmms-runner/abc/samples"})
    summary = SUMMARY.model_copy(update={"s3_location": "s3://evals/team-a/r/abc/"})
    inputs = publishing.Inputs(summary=summary, samples=keeping.from_report(full))
    plan = publishing.decide(run, EvalRunSpec.model_validate(run["spec"]), STATUS, inputs, NOW)
    pointer = plan.status.get("samples") or {}
    assert pointer["persistentVolumeClaim"] == "hf-cache"
    assert pointer["path"] == "lmms-runner/abc/samples"
    assert pointer["location"] == "s3://evals/team-a/r/abc/"
    EvalRunStatus.model_validate({"samples": pointer})


def test_samples_not_kept_cost_the_samples_never_the_scores() -> None:
    logged = keeping.from_report(report(10))
    inputs = publishing.Inputs(summary=SUMMARY, samples=logged, samples_failed="exceeded quota")
    plan = publishing.decide(RUN, SPEC, STATUS, inputs, NOW)
    assert plan.samples is None and plan.status["results"][0]["value"] == 0.5
    assert plan.status["resultsConfigMap"] == "r-abc-results"
    assert (plan.status.get("samples") or {})["tasks"][0]["configMaps"] == []
    warning = next(e for e in plan.events if e.reason == "SamplesNotKept")
    assert warning.type == "Warning" and "exceeded quota" in warning.message
    # Results from the object store (the runner was not reached): where the files are.
    gone = publishing.decide(
        RUN,
        SPEC,
        STATUS,
        publishing.Inputs(termination='{"v":1,"ok":true,"tasks":{"colors":{"acc":0.5}}}'),
        NOW,
    )
    assert gone.samples is None and gone.status.get("samples") == {"tasks": []}
    assert any(e.reason == "SamplesNotKept" for e in gone.events)


def test_hostile_samples_stay_within_the_config_map_limits() -> None:
    # Escapes lengthen text (a bidi override is 6 characters escaped): still bounded.
    hostile = "\u202e" * SAMPLE_TEXT_LIMIT
    maps, pointer = keeping.keep("r-abc", report(20_000, hostile, ("a", "b\x1b[31m")))
    assert 1 < len(maps) <= keeping.MAX_CONFIG_MAPS
    for data in maps.values():
        assert sum(len(k.encode()) + len(v.encode()) for k, v in data.items()) < CONFIG_MAP_BUDGET
        assert "\u202e" not in "".join(data.values()) and "\x1b" not in "".join(data.values())
    assert pointer["tasks"][1]["task"] == "b\\x1b[31m"
    assert any(t["truncated"] and t["kept"] < 20_000 for t in pointer["tasks"])
    EvalRunStatus.model_validate({"samples": pointer})


class Writes:
    """The applier's writer, for one function's test: refuses the second ConfigMap."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.made: list[str] = []
        self.deleted: list[str] = []

    def create(self, obj: dict[str, Any]) -> bool:
        if self.made:
            raise self.error
        self.made.append(obj["metadata"]["name"])
        return True

    create_owned = create  # (none exists before: each is made or refused)

    def delete_config_map(self, namespace: str, name: str) -> None:
        self.deleted.append(name)


def test_the_samples_config_maps_are_made_all_or_none() -> None:
    applier = Applier(Clock(), ObjectStore(StorePolicy(), Api()), Metrics(), Api())
    maps = tuple({"metadata": {"name": f"s-{i}"}} for i in range(3))
    applier.writes = Writes(errors.Invalid("too large"))  # type: ignore[assignment]
    replan = applier._samples("team-a", KeepSamples(maps))
    assert replan is not None and replan.samples_failed == "too large"
    # Only those it made: never a ConfigMap of that name someone else made before.
    assert applier.writes.deleted == ["s-0"]  # type: ignore[attr-defined]
    # An API server that does not answer fails the pass: it is retried, not given up.
    applier.writes = Writes(errors.Unavailable("no answer"))  # type: ignore[assignment]
    with pytest.raises(errors.Unavailable):
        applier._samples("team-a", KeepSamples(maps))


def test_the_operator_reads_a_samples_answer_within_its_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator reads the runner's JSON Lines a line at a time: lines that are no
    record (not JSON, too long, no id) are counted in the task's note; tasks past
    MAX_TASKS and records past SAMPLES_MAX_RECORDS are counted in ``left_out`` (the
    SamplesKept Event), and the runner serves no more records than the operator reads."""
    lines = [
        b'{"path":"lmms-runner/abc/samples"}',
        b'{"task":"colors","count":3,"note":"text cut"}',
        b'{"id":0,"scores":{"acc":1.0}}',
        b"not json",
        b'{"id":1,"target":"' + b"x" * 40_000 + b'"}',
        b'{"target":"no id"}',
        *(b'{"task":"t%d","count":0}' % i for i in range(300)),
    ]
    logged = keeping.read(b"\n".join(lines))
    assert logged.path == "lmms-runner/abc/samples" and len(logged.tasks) == MAX_TASKS
    colors = logged.tasks[0]
    assert colors.lines == ('{"id":0,"scores":{"acc":1.0}}\n',) and colors.truncated
    assert colors.note == "3 line(s) not records; text cut"
    assert logged.left_out == "45 task(s) over the operator's bound of 256"
    monkeypatch.setattr(keeping, "SAMPLES_MAX_RECORDS", 2)
    logged = keeping.read(b'{"task":"a","count":5}\n' + b'{"id":0}\n' * 5)
    assert len(logged.tasks[0].lines) == 2 and "3 record(s) over" in str(logged.left_out)
    monkeypatch.setattr(samples, "SAMPLES_MAX_RECORDS", 4)
    recs = [SampleRecord(id=i) for i in range(5)]
    served = samples.compact([("a", recs, 0), ("b", recs, 0)])
    assert [len(t.records) for t in served] == [2, 2]
    assert all("3 record(s) dropped" in str(t.note) for t in served)
