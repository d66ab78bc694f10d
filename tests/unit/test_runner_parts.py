"""The runner's pure parts: the lmms-eval command, results parsing, the termination
message, progress parsing and redaction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmms_operator.api.runner import Provenance
from lmms_runner import command, results
from lmms_runner.config import from_document
from lmms_runner.progress import Tracker
from lmms_runner.redact import Redactor

PROV = Provenance(model="qwen2_vl", config_hash="abc")


def cfg(**spec: Any) -> Any:
    base: dict[str, Any] = {"model": {"type": "qwen2_vl"}, "tasks": ["mme", "textvqa_val"]}
    base.update(spec)
    return from_document({"kind": "EvalRun", "metadata": {"name": "r"}, "spec": base})


def test_command_is_an_argument_list_with_every_setting() -> None:
    c = cfg(
        model={"type": "qwen2_vl", "revision": "v1", "args": {"max_pixels": "1003520"}},
        evaluation={
            "batchSize": 4,
            "limit": 10,
            "numFewshot": 0,
            "seed": 7,
            "logSamples": True,
            "generation": {"temperature": 0, "maxNewTokens": 64},
        },
    )
    argv = command.build(c, "/out", ["/tasks"], cache_file="/cache")
    assert argv[1:3] == ["-m", "lmms_runner.lmms_eval_main"]
    joined = " ".join(argv)
    assert "--model qwen2_vl" in joined
    assert (
        "--model_args pretrained=Qwen/Qwen2-VL-7B-Instruct,revision=v1,max_pixels=1003520" in joined
    )
    assert "--tasks mme,textvqa_val" in joined and "--include_path /tasks" in joined
    assert "--batch_size 4" in joined and "--limit 10" in joined and "--num_fewshot 0" in joined
    assert "--seed 7" in joined and "--log_samples" in joined and "--use_cache /cache" in joined
    assert "--gen_kwargs temperature=0.0,max_new_tokens=64" in joined
    assert argv[-4:] == ["--timezone", "UTC", "--verbosity", "INFO"] or "--timezone UTC" in joined


def test_launchers_for_gpus_and_nodes() -> None:
    c = cfg()
    multi = command.build(c, "/o", dist=command.Distributed(gpus=4))
    assert multi[1:8] == [
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "4",
        "--num_machines",
        "1",
    ]
    nodes = command.build(
        c, "/o", dist=command.Distributed(gpus=8, nodes=2, node_rank=1, master_addr="j-0.j-rdzv")
    )
    assert nodes[1:3] == ["-m", "torch.distributed.run"]
    assert (
        "--nnodes=2" in nodes and "--node_rank=1" in nodes and "--master_addr=j-0.j-rdzv" in nodes
    )
    env = command.child_env(
        {"RANK": "3", "WORLD_SIZE": "8", "MASTER_ADDR": "x", "KEEP": "1", "LMMS_RUNNER_TOKEN": "t"},
        command.Distributed(gpus=4),
    )
    assert env.get("KEEP") == "1" and not {"RANK", "WORLD_SIZE", "MASTER_ADDR"} & set(env)
    assert "LMMS_RUNNER_TOKEN" not in env


RESULTS: dict[str, Any] = {
    "results": {
        "mme": {
            "alias": "mme",
            "mme_cognition_score,none": 320.5,
            "mme_cognition_score_stderr,none": "N/A",
            "mme_perception_score,none": 1450.2,
        },
        "wer_task": {
            "alias": "wer_task",
            "wer,none": 0.12,
            "wer_stderr,none": 0.01,
            "per_class,none": [0.1, 0.2],
            "breakdown,none": {"overall": 0.7, "by_source": {"news": 0.6, "chat": "n/a"}},
        },
        "grp": {"alias": "grp", "acc,none": 0.5},
    },
    "higher_is_better": {
        "mme": {"mme_perception_score": True, "mme_cognition_score": True},
        "wer_task": {"wer": False},
    },
    "group_subtasks": {"grp": ["a", "b"], "mme": []},
    "n-samples": {"mme": {"original": 2374, "effective": 100}},
}


def test_results_are_parsed_with_direction_and_odd_values() -> None:
    summary = results.parse(RESULTS, PROV)
    by = {t.task: t for t in summary.tasks}
    assert by["mme"].primary == "mme_perception_score"  # the order of higher_is_better
    assert by["mme"].samples == 100
    cog = next(m for m in by["mme"].metrics if m.name == "mme_cognition_score")
    assert cog.value == 320.5 and cog.stderr is None  # "N/A" stderr copes
    wer = {m.name: m for m in by["wer_task"].metrics}
    assert wer["wer"].higher_is_better is False and wer["wer"].stderr == 0.01
    # Nested values are flattened into dotted keys, not a JSON string.
    assert wer["per_class.0"].value == 0.1 and wer["per_class.1"].value == 0.2
    assert wer["breakdown.overall"].value == 0.7
    assert wer["breakdown.by_source.news"].value == 0.6
    assert wer["breakdown.by_source.chat"].value is None
    assert wer["breakdown.by_source.chat"].raw == '"n/a"'
    assert wer["breakdown.overall"].higher_is_better is None
    assert by["grp"].group is True and by["mme"].group is False


def test_missing_tasks_are_found() -> None:
    assert results.missing_tasks(RESULTS, ["mme", "grp", "nope"]) == ["nope"]
    assert results.missing_tasks(RESULTS, ["some_tag"], tags=["some_tag"]) == []


def test_termination_message_fits_and_says_when_it_truncated() -> None:
    small = json.loads(results.termination_message(results.parse(RESULTS, PROV)))
    assert small["ok"] is True and small["truncated"] is False
    assert next(iter(small["tasks"]["mme"])) == "mme_perception_score"
    many = {
        "results": {
            f"task_{i:04d}": {"acc,none": i / 1000, "f1,none": 0.5, "bleu,none": 0.1}
            for i in range(400)
        }
    }
    text = results.termination_message(results.parse(many, PROV))
    assert len(text.encode()) <= 4096
    doc = json.loads(text)
    assert doc["truncated"] is True and doc["tasks"]


def test_combining_per_task_results() -> None:
    a = {
        "results": {"x": {"acc,none": 1.0}},
        "higher_is_better": {"x": {"acc": True}},
        "total_evaluation_time_seconds": "2.5",
    }
    b = {
        "results": {"y": {"acc,none": 0.0}},
        "higher_is_better": {"y": {"acc": True}},
        "total_evaluation_time_seconds": "1.5",
    }
    c = results.combine([a, b])
    assert set(c["results"]) == {"x", "y"} and c["total_evaluation_time_seconds"] == 4.0


def test_progress_from_lmms_eval_output() -> None:
    t = Tracker(["colors"])
    t.feed(
        "2026-11-27 07:19:24 | INFO     | lmms_eval.__main__:cli:731 - Selected Tasks: ['colors']"
    )
    assert t.snapshot().phase == "loading"
    t.feed("Model Responding:  50%|█████     | 9/18 [00:02<00:02,  3.22it/s, tokens=18]")
    snap = t.snapshot()
    # Answers are 95% of the work, post-processing the rest.
    assert (snap.phase, snap.done, snap.total, snap.percent) == ("evaluating", 9, 18, 47.5)
    assert snap.samples_per_second == 3.22 and snap.eta_seconds == 2
    t.feed(
        "2026-11-27 | INFO | lmms_eval.evaluator:evaluate:1399 - Postprocessed 18 docs for "
        "colors/none with 4 worker(s) in 0.00s"
    )
    snap = t.snapshot()
    assert snap.phase == "postprocessing" and snap.percent < 100  # not before the end
    assert snap.tasks[0].done == snap.tasks[0].total == 18
    t.set_phase("done")
    assert t.snapshot().percent == 100
    t.feed("2026-11-27 | ERROR | lmms_eval.models:x:140 - All 5 attempts failed. Last error: boom")
    assert t.failed_requests == 1 and "All 5 attempts failed" in (t.last_error or "")


POST = (
    "2026-11-27 | INFO | lmms_eval.evaluator:evaluate:1399 - Postprocessed {n} docs for "
    "{task}/none with 4 worker(s) in 0.00s"
)


def _bar(n: int, total: int) -> str:
    return f"Model Responding:  {100 * n // total}%|█     | {n}/{total} [00:02<00:02,  3.22it/s]"


def test_progress_never_decreases_and_reaches_100_only_at_the_end() -> None:
    # One process for two tasks: a second request type restarts its bar at 0.
    t = Tracker(["colors", "shades"])
    seen = []
    for line in [_bar(5, 10), _bar(10, 10), _bar(0, 6), _bar(3, 6), _bar(6, 6)]:
        t.feed(line)
        seen.append(t.snapshot().percent)
    t.feed(POST.format(n=10, task="colors"))
    seen.append(t.snapshot().percent)
    assert seen == sorted(seen) and max(seen) < 100, seen


def test_progress_follows_answers_given_in_chunks() -> None:
    """lmms-eval's process answers a request type in chunks (each with its own bar:
    ``patches.chunked_answers``) and says where the whole type stands before each."""
    t = Tracker(["colors"])
    seen = []
    for start in range(0, 16, 8):
        t.feed(f"lmms-runner: answered {start}/16")
        for n in (0, 4, 8):
            t.feed(_bar(n, 8))
            snap = t.snapshot()
            seen.append((snap.done, snap.total))
    t.feed("lmms-runner: answered 16/16")
    snap = t.snapshot()
    assert seen == [(0, 16), (4, 16), (8, 16), (8, 16), (12, 16), (16, 16)]
    assert (snap.done, snap.total) == (16, 16) and snap.percent == 95.0


def test_per_task_processes_count_per_task_and_overall() -> None:
    # With a cache volume: one lmms-eval process per task.
    t = Tracker(["colors", "shades"])
    t.plan(2)
    t.begin_task("colors")
    t.feed(_bar(4, 16))
    snap = t.snapshot()
    by = {x.name: x for x in snap.tasks}
    assert (by["colors"].done, by["colors"].total) == (4, 16)  # moves during generation
    t.feed(_bar(16, 16))
    t.feed(POST.format(n=16, task="colors"))
    after_first = t.snapshot().percent
    assert 45 <= after_first < 55, after_first  # one of two tasks: not 100%
    t.finish_invocation()
    t.begin_task("shades")
    t.feed(_bar(0, 8))
    assert t.snapshot().percent >= after_first
    t.feed(_bar(8, 8))
    assert 95 <= t.snapshot().percent < 100
    by = {x.name: x for x in t.snapshot().tasks}
    assert (by["shades"].done, by["shades"].total) == (8, 8)
    assert (by["colors"].done, by["colors"].total) == (16, 16)


def test_progress_keeps_a_bounded_number_of_bounded_task_names() -> None:
    t = Tracker(["colors"])
    names = ", ".join(f"'{'t' * 400}{i}'" for i in range(1000))
    t.feed(f"2026-11-27 | INFO | lmms_eval.__main__:cli:731 - Selected Tasks: [{names}]")
    for i in range(1000):
        t.feed(
            f"2026-11-27 | INFO | lmms_eval.evaluator:evaluate:1399 - Postprocessed 5 docs for "
            f"x{i}/none with 4 worker(s) in 0.00s"
        )
    tasks = t.snapshot().tasks
    assert len(tasks) == Tracker.MAX_TASKS and max(len(x.name) for x in tasks) <= 253
    assert tasks[0].name == "colors"


def test_redaction() -> None:
    r = Redactor.from_environment(
        {"HF_TOKEN": "hf_abcdefghijklmnopqrstuvwx", "OTHER": "visible"},
        {"api_key": "secret-value-1", "max_pixels": "1003520"},
    )
    text = r(
        "token hf_abcdefghijklmnopqrstuvwx key secret-value-1 px 1003520 visible sk-"
        "ABCDEFGHIJKLMNOPQRST"
    )
    assert "hf_abc" not in text and "secret-value-1" not in text and "sk-ABC" not in text
    assert "1003520" in text and "visible" in text


def test_the_resolved_commit_comes_from_the_hugging_face_cache(tmp_path: Path) -> None:
    from lmms_runner.provenance import resolved_commit

    commit = "0123456789abcdef0123456789abcdef01234567"
    refs = tmp_path / "hub" / "models--org--tiny" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(commit)
    assert resolved_commit(str(tmp_path), "org/tiny", None) == commit
    assert resolved_commit(str(tmp_path), "org/tiny", "main") == commit
    assert resolved_commit(str(tmp_path), "org/tiny", "v2") is None  # not downloaded
    assert resolved_commit(str(tmp_path), "/models/local", None) is None
    pinned = "fedcba9876543210fedcba9876543210fedcba98"
    assert resolved_commit(None, "org/tiny", pinned) == pinned


def test_provenance_records_the_lock_the_image_was_installed_from(tmp_path: Path) -> None:
    import hashlib

    from lmms_runner.provenance import locked_packages

    lock = tmp_path / "runner.txt"
    lock.write_text(
        "# pyproject-sha256: x\nlmms-eval==0.7.3 \\\n    --hash=sha256:aa\n"
        "torch==2.15.0 \\\n    --hash=sha256:bb\n"
    )
    found = locked_packages(str(lock))
    assert found["locked"] == {"lmms-eval": "0.7.3", "torch": "2.15.0"}
    assert found["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert locked_packages(None) == {} and locked_packages(str(tmp_path / "none")) == {}


@pytest.mark.parametrize("verbosity", ["WARNING", "ERROR"])
def test_progress_without_lmms_evals_info_lines(verbosity: str) -> None:
    """spec.evaluation.verbosity above INFO hides "Selected Tasks" and "Postprocessed":
    the phase and the percent still move, from the bars and the answers."""
    t = Tracker(["colors"])
    assert t.snapshot().phase == "starting"
    if verbosity == "WARNING":
        t.feed("2026-12-07 10:00:00 | WARNING  | lmms_eval.models:__init__:12 - slow processor")
    t.feed("Loading checkpoint shards: 100%|██████████| 4/4 [00:03<00:00,  1.20it/s]")
    assert t.snapshot().phase == "loading"
    t.feed("Model Responding:  50%|█████     | 9/18 [00:02<00:02,  3.22it/s]")
    snap = t.snapshot()
    assert (snap.phase, snap.done, snap.total, snap.percent) == ("evaluating", 9, 18, 47.5)
    t.feed("Model Responding: 100%|██████████| 18/18 [00:04<00:00,  3.22it/s]")
    t.feed("Postprocessing: 100%|██████████| 18/18 [00:00<00:00, 900.00it/s]")
    snap = t.snapshot()
    assert snap.phase == "postprocessing" and 90 <= snap.percent < 100
    t.feed("2026-12-07 | ERROR | lmms_eval.models:x:140 - All 5 attempts failed. Last error: x")
    assert t.failed_requests == 1  # ERROR lines are there at every verbosity
