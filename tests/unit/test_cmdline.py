"""Kernel limits at admission, with the estimate kept in step with the runner's builder."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmms_operator.api import parse_spec
from lmms_operator.reconcile import cmdline
from lmms_operator.reconcile.validate import InvalidSpec, validate
from lmms_runner import command
from lmms_runner.config import from_document

WORD = st.from_regex(r"[a-z][a-z0-9_]{0,30}", fullmatch=True)
GEN = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2, allow_nan=False),
        "maxNewTokens": st.integers(1, 1_000_000),
        "topP": st.floats(0.01, 1),
        "numBeams": st.integers(1, 64),
        "doSample": st.booleans(),
    },
)


def _real(raw: dict[str, Any]) -> list[str]:
    """The argv the runner builds, with its longest launcher (multi-node)."""
    cfg = from_document({"spec": raw})
    dist = command.Distributed(gpus=8, nodes=4, master_addr="x" * 63 + "-0." + "x" * 63 + "-rdzv")
    paths = [f"/etc/lmms/tasks/{s.config_map}" for s in cfg.spec.custom_tasks]
    return command.build(cfg, "/var/lib/lmms/output", paths, "/var/cache/x/response-cache", dist)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(
    tasks=st.lists(WORD, min_size=1, max_size=8, unique=True),
    custom=st.lists(st.lists(WORD, max_size=5, unique=True), max_size=3),
    args=st.dictionaries(
        WORD,
        st.from_regex(r"([A-Za-z0-9./-]([A-Za-z0-9./ -]{0,38}[A-Za-z0-9./-])?)?", fullmatch=True),
        max_size=5,
    ),
    gen=GEN,
    revision=st.none() | WORD,
)
def test_the_estimate_matches_the_runners_argv(
    tasks: list[str],
    custom: list[list[str]],
    args: dict[str, str],
    gen: dict[str, Any],
    revision: str | None,
) -> None:
    raw: dict[str, Any] = {
        "model": {"type": "dummy", "pretrained": "org/m", "args": args},
        "tasks": tasks,
        "customTasks": [{"configMap": f"c{i}", "tasks": t} for i, t in enumerate(custom)],
        "evaluation": {"generation": gen, "limit": 10, "numFewshot": 3, "logSamples": True},
    }
    if revision:
        raw["model"]["revision"] = revision
    spec = parse_spec(raw)
    argv = _real(raw)
    after = {flag: argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag.startswith("--")}
    estimate = {e.what: e.size for e in cmdline.elements(spec)}
    # The elements the spec decides: byte for byte what the runner passes.
    assert estimate["--model"] == len(after["--model"].encode()) + 1
    assert estimate.get("--model_args", 1) == len(after.get("--model_args", "").encode()) + 1
    assert estimate["the joined task list (--tasks)"] == len(after["--tasks"].encode()) + 1
    assert estimate.get("--gen_kwargs", 1) == len(after.get("--gen_kwargs", "").encode()) + 1
    # And the whole command line is never more than the estimate.
    count, size = cmdline.argv_estimate(spec)
    assert len(argv) <= count
    assert sum(len(a.encode()) + 1 for a in argv) <= size


def _refused(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidSpec) as exc:
        validate(raw)
    return [p.field for p in exc.value.problems]


def test_custom_task_names_that_overflow_one_argument_name_spec_tasks() -> None:
    names = [f"t{j:02d}_{i:03d}_" + "x" * 180 for j in range(20) for i in range(100)]
    sources = [
        {"configMap": f"tasks-{j}", "tasks": names[j * 100 : (j + 1) * 100]} for j in range(20)
    ]
    # 2,000 names of 189 characters: about 380 KB in one --tasks argument.
    fields = _refused({"model": {"type": "dummy"}, "tasks": [], "customTasks": sources})
    assert "spec.tasks" in fields
    # 600 of them fit.
    validate({"model": {"type": "dummy"}, "tasks": [], "customTasks": sources[:6]})


def test_model_args_that_overflow_one_argument_are_refused() -> None:
    args = {f"k{i}": "v" * 4096 for i in range(31)}
    assert _refused({"model": {"type": "dummy", "args": args}, "tasks": ["mme"]}) == [
        "spec.model.args"
    ]
    args = {f"k{i}": "v" * 4096 for i in range(25)}
    validate({"model": {"type": "dummy", "args": args}, "tasks": ["mme"]})


def test_the_environment_is_bounded() -> None:
    env = [{"name": f"NCCL_DEBUG{i}", "value": "v" * 4096} for i in range(64)]
    assert "spec.env" in _refused({"model": {"type": "dummy"}, "tasks": ["mme"], "env": env})


def test_the_limits_are_the_kernels_with_a_margin() -> None:
    assert cmdline.MAX_ARG_STRLEN == 131072 and cmdline.ARG_MAX == 2 * 1024 * 1024
    assert cmdline.ELEMENT_LIMIT < cmdline.MAX_ARG_STRLEN
    assert cmdline.TOTAL_LIMIT < cmdline.ARG_MAX
