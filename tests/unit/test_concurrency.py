"""spec.model.concurrency (the requests in flight to an OpenAI-compatible model) and the
progress that counts answers as they arrive."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import pytest
from tqdm import tqdm  # type: ignore[import-untyped]

from lmms_operator.reconcile import job as jobs
from lmms_operator.reconcile.validate import InvalidSpec, validate
from lmms_runner import command, resume
from lmms_runner.config import ConfigError, RunConfig, from_document
from lmms_runner.patches import answer_count, chunked_answers, prefetch
from lmms_runner.progress import Tracker
from lmms_runner.redact import Redactor
from lmms_runner.supervise import Forwarder

URL = "http://10.0.0.7:8000/v1"


def spec(model: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "tasks": ["mme"]}


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidSpec) as exc:
        validate(raw)
    return [str(p) for p in exc.value.problems]


def config(model: dict[str, Any]) -> RunConfig:
    return from_document({"kind": "EvalRun", "metadata": {"name": "r"}, "spec": spec(model)})


def margs(cfg: RunConfig) -> dict[str, str]:
    argv = command.build(cfg, "/out")
    return dict(kv.split("=", 1) for kv in argv[argv.index("--model_args") + 1].split(","))


def test_concurrency_is_bounded_by_the_schema() -> None:
    for bad in (0, 257, -1):
        (p,) = problems(spec({"type": "openai", "concurrency": bad}))
        assert p.startswith("spec.model.concurrency:"), p
    assert validate(spec({"type": "openai", "concurrency": 256})).model.concurrency == 256
    assert validate(spec({"type": "openai"})).model.concurrency is None


def test_concurrency_on_a_backend_that_holds_the_model_is_refused() -> None:
    (p,) = problems(spec({"type": "qwen2_vl", "pretrained": "Qwen/Qwen2-VL-2B", "concurrency": 4}))
    assert p.startswith("spec.model.concurrency:") and "'qwen2_vl'" in p
    assert "openai" in p


def test_concurrency_beside_the_arg_it_sets_is_refused() -> None:
    args = {"base_url": URL, "num_concurrent": "8"}
    (p,) = problems(spec({"type": "openai", "args": args, "concurrency": 16}))
    assert (
        p == "spec.model.concurrency: set either concurrency or model.args.num_concurrent, not both"
    )
    # Either alone is fine.
    validate(spec({"type": "openai", "args": args}))
    validate(spec({"type": "openai", "args": {"base_url": URL}, "concurrency": 16}))


def test_the_runner_passes_concurrency_as_lmms_eval_reads_it() -> None:
    cfg = config({"type": "openai", "args": {"base_url": URL}, "concurrency": 16})
    got = margs(cfg)
    assert got == {"base_url": URL, "num_concurrent": "16", "adaptive_max_concurrency": "16"}
    # Above lmms-eval's default adaptive maximum (128), which bounds num_concurrent too.
    big = margs(config({"type": "openai", "args": {"base_url": URL}, "concurrency": 200}))
    assert big["num_concurrent"] == big["adaptive_max_concurrency"] == "200"
    # lmms-eval's async backend reads its bound from num_cpus.
    asy = margs(config({"type": "async_openai", "args": {"base_url": URL}, "concurrency": 8}))
    assert asy["num_cpus"] == "8" and "num_concurrent" not in asy
    # Unset: nothing added, lmms-eval's default holds.
    assert margs(config({"type": "openai", "args": {"base_url": URL}})) == {"base_url": URL}


def test_the_operators_run_configuration_carries_it_to_the_runners_command() -> None:
    spec_ = validate(spec({"type": "openai", "args": {"base_url": URL}, "concurrency": 24}))
    run = jobs.RunRef("r", "team-a", "0b8e6f5c-1111-2222-3333-444455556666")
    document = json.loads(json.dumps(jobs.run_config(run, spec_, "h")))
    assert document["spec"]["model"]["concurrency"] == 24
    assert margs(from_document(document))["num_concurrent"] == "24"


def test_a_configuration_by_hand_is_checked_like_a_spec() -> None:
    with pytest.raises(ConfigError, match=r"spec\.model\.concurrency: model type 'llava'"):
        config({"type": "llava", "pretrained": "liuhaotian/llava-v1.5-7b", "concurrency": 2})


def test_requests_in_flight_and_the_cache_chunks_that_keep_them_so() -> None:
    def flight(model: dict[str, Any], cpus: int = 8) -> int | None:
        return command.in_flight(config(model), cpus)

    assert flight({"type": "openai", "concurrency": 16}) == 16
    assert flight({"type": "openai"}) == 32  # lmms-eval's default num_concurrent
    assert flight({"type": "openai", "args": {"num_concurrent": "200"}}) == 128
    assert flight({"type": "async_openai"}, cpus=6) == 3
    assert flight({"type": "qwen2_vl", "pretrained": "Qwen/Qwen2-VL-2B"}) is None
    # With a cache volume lmms-eval answers in chunks; a chunk smaller than the requests
    # in flight would bound them.
    assert resume.checkpoint_interval(None) == resume.CHECKPOINT_INTERVAL == "8"
    assert resume.checkpoint_interval(1) == "8"
    assert resume.checkpoint_interval(16) == "64"


def _bar(n: int, total: int) -> str:
    return f"Model Responding:  {100 * n // total}%|█     | {n}/{total} [00:02<00:02,  3.22it/s]"


def test_progress_counts_answers_between_redraws() -> None:
    """tqdm redrew at the first answer of each burst; the counted answers say where the
    bar really stands."""
    t = Tracker(["colors"])
    t.feed(_bar(0, 96))
    t.feed(_bar(1, 96))
    seen = []
    for n in range(2, 33):
        t.feed(f"lmms-runner: responded {n}/96")
    seen.append(t.snapshot().done)
    t.feed(_bar(33, 96))  # a redraw at the next burst's first answer
    for n in range(34, 65):
        t.feed(f"lmms-runner: responded {n}/96")
    seen.append(t.snapshot().done)
    assert seen == [32, 64]
    assert t.snapshot().phase == "evaluating" and 0 < t.snapshot().percent < 95


def test_counted_answers_follow_a_second_request_type_and_chunks() -> None:
    t = Tracker(["colors", "shades"])
    for n in range(1, 11):
        t.feed(f"lmms-runner: responded {n}/10")
    for n in range(1, 5):
        t.feed(f"lmms-runner: responded {n}/6")
    snap = t.snapshot()
    assert (snap.done, snap.total) == (14, 16)
    chunked = Tracker(["colors"])
    chunked.feed("lmms-runner: answered 8/16")
    for n in range(1, 4):
        chunked.feed(f"lmms-runner: responded {n}/8")
    assert (chunked.snapshot().done, chunked.snapshot().total) == (11, 16)


def test_each_update_of_a_responding_bar_prints_its_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    update = answer_count.counting_update(tqdm.update)
    monkeypatch.setattr(tqdm, "update", update)
    bar = tqdm(total=5, desc="Model Responding", file=io.StringIO())
    for _ in range(3):
        bar.update(1)
    bar.update(2)
    bar.close()
    other = tqdm(total=3, desc="Postprocessing", file=io.StringIO())
    other.update(3)
    disabled = tqdm(total=3, desc="Model Responding", disable=True)
    disabled.update(3)
    lines = [x for x in err.getvalue().split("\r") if x]
    assert lines == [f"lmms-runner: responded {n}/5" for n in (1, 2, 3, 5)]


def test_counted_answers_reach_the_tracker_and_not_the_log() -> None:
    t = Tracker(["colors"])
    out = io.StringIO()
    stream = io.BytesIO(
        b"Model Responding:   0%|  | 0/4 [00:00<?, ?it/s]\rlmms-runner: responded 1/4\r"
        b"\rlmms-runner: responded 2/4\rsome log line\n"
    )
    forwarder = Forwarder(stream, out, t, Redactor([]))
    forwarder.run()
    assert t.snapshot().done == 2
    assert "responded" not in out.getvalue() and "some log line" in out.getvalue()


def test_the_answers_of_a_chunk_are_synced_once_at_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """lmms-eval fsyncs its audit log once per answer after a chunk is answered, with no
    request in flight; the runner syncs each file once per chunk instead."""
    synced: list[tuple[int, list[int]]] = []

    class Os:
        def fsync(self, fd: int) -> None:
            synced.append((fd, list(seen)))

    seen: list[int] = []
    files = chunked_answers.DeferredFsync(Os())

    def execute(cache: object, lm: object, reqtype: str, requests: list[int]) -> list[int]:
        for r in requests:
            seen.append(r)
            files.fsync(7)  # as lmms-eval's _log_to_audit does after each answer
        return [r * 10 for r in requests]

    monkeypatch.setenv("LMMS_CACHE_CHECKPOINT_INTERVAL", "2")
    monkeypatch.setattr(prefetch, "prefetch_after_answers", lambda: None)
    chunked = chunked_answers.chunked_execute(execute, files)
    assert chunked(None, None, "generate_until", [1, 2, 3, 4, 5]) == [10, 20, 30, 40, 50]
    assert synced == [(7, [1, 2]), (7, [1, 2, 3, 4]), (7, [1, 2, 3, 4, 5])]
    files.fsync(7)  # outside an answer (the cache's close): at once
    assert len(synced) == 4
