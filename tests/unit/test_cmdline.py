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
    multi=st.sampled_from([None, "DataParallel", "ModelParallel"]),
)
def test_the_estimate_matches_the_runners_argv(
    tasks: list[str],
    custom: list[list[str]],
    args: dict[str, str],
    gen: dict[str, Any],
    revision: str | None,
    multi: str | None,
) -> None:
    raw: dict[str, Any] = {
        "model": {"type": "dummy", "pretrained": "org/m", "args": args},
        "tasks": tasks,
        "customTasks": [{"configMap": f"c{i}", "tasks": t} for i, t in enumerate(custom)],
        "evaluation": {"generation": gen, "limit": 10, "numFewshot": 3, "logSamples": True},
    }
    if revision:
        raw["model"]["revision"] = revision
    if multi:
        raw["model"]["multiGPU"] = multi  # model parallel adds device_map=auto
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


# -- several GPUs in one pod: the command and environment of each mode (spec.model.multiGPU) --
def _pod_argv(spec: dict[str, Any], memory: str = "") -> tuple[list[str], dict[str, Any]]:
    """What a runner pod runs: the operator's run configuration (multiGPU decided), read
    back by the runner, and the argv and environment it starts lmms-eval with."""
    import dataclasses
    import json

    from lmms_operator.config import Settings
    from lmms_operator.reconcile import job as jobs
    from lmms_operator.reconcile import multigpu

    runner = dataclasses.replace(Settings().runner, gpu_memory=multigpu.parse_gpu_memory(memory))
    run = jobs.RunRef("r", "team-a", "00000000-0000-0000-0000-000000000001")
    desired = jobs.build(run, validate(spec, _policy(memory)), runner, token="t")
    document = json.loads(desired.config_map["data"]["config.json"])
    cfg = from_document(document)
    leaked = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "x", "KEEP": "1"}
    dist = command.Distributed.from_env(cfg, {})
    return command.build(cfg, "/out", dist=dist), command.child_env(leaked, dist)


def _policy(memory: str) -> Any:
    from lmms_operator.reconcile import multigpu
    from lmms_operator.reconcile.validate import Policy

    return Policy(gpu_memory=multigpu.parse_gpu_memory(memory))


def _model_args(argv: list[str]) -> dict[str, str]:
    raw = argv[argv.index("--model_args") + 1]
    return dict(p.split("=", 1) for p in raw.split(","))


def test_model_parallel_is_one_process_with_device_map_auto_over_the_pods_gpus() -> None:
    spec = {
        "model": {"type": "qwen2_vl", "multiGPU": "ModelParallel"},
        "tasks": ["mme"],
        "resources": {"gpus": 4},
    }
    argv, env = _pod_argv(spec)
    assert argv[1:3] == ["-m", "lmms_runner.lmms_eval_main"]  # no accelerate, no torchrun
    assert "accelerate.commands.launch" not in argv and "--multi_gpu" not in argv
    assert _model_args(argv)["device_map"] == "auto"
    # One process sees every GPU of the pod and no leaked rank makes it a world of its own.
    assert env["KEEP"] == "1" and not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"} & set(env)
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_a_device_map_the_user_gives_wins() -> None:
    spec = {
        "model": {
            "type": "qwen2_vl",
            "multiGPU": "ModelParallel",
            "args": {"device_map": "balanced"},
        },
        "tasks": ["mme"],
        "resources": {"gpus": 2},
    }
    argv, _ = _pod_argv(spec)
    assert _model_args(argv)["device_map"] == "balanced"
    assert argv[argv.index("--model_args") + 1].count("device_map") == 1


def test_data_parallel_is_accelerate_with_one_process_per_gpu() -> None:
    spec = {
        "model": {"type": "qwen2_vl", "multiGPU": "DataParallel"},
        "tasks": ["mme"],
        "resources": {"gpus": 4},
    }
    argv, env = _pod_argv(spec)
    assert argv[1:8] == [
        "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4",
        "--num_machines", "1",
    ]  # fmt: skip
    assert "device_map" not in _model_args(argv)
    assert not {"RANK", "WORLD_SIZE"} & set(env)


def test_the_default_mode_reaches_the_runner_through_the_run_configuration() -> None:
    one = {"model": {"type": "llama_vision"}, "tasks": ["mme"], "resources": {"gpus": 4}}
    # An 11B model (about 27 GB with headroom) on 80 GiB GPUs: data parallel.
    argv, _ = _pod_argv(one, "nvidia.com/gpu=80Gi")
    assert "--multi_gpu" in argv and "device_map" not in _model_args(argv)
    # On 24 GiB GPUs it does not fit: one process over the four.
    argv, _ = _pod_argv(one, "nvidia.com/gpu=24Gi")
    assert "--multi_gpu" not in argv and _model_args(argv)["device_map"] == "auto"


def test_one_gpu_is_unchanged_and_model_parallel_on_one_gpu_proves_the_command() -> None:
    plain, _ = _pod_argv({"model": {"type": "qwen2_vl"}, "tasks": ["mme"]})
    assert plain[1:3] == ["-m", "lmms_runner.lmms_eval_main"]
    assert "device_map" not in _model_args(plain)
    spec = {"model": {"type": "qwen2_vl", "multiGPU": "ModelParallel"}, "tasks": ["mme"]}
    one, _ = _pod_argv(spec)
    assert one[1:3] == plain[1:3] and _model_args(one)["device_map"] == "auto"


def test_lmms_runner_config_by_hand_follows_the_specs_value() -> None:
    base: dict[str, Any] = {
        "model": {"type": "qwen2_vl"},
        "tasks": ["mme"],
        "resources": {"gpus": 2},
    }
    hand = from_document({"spec": base})  # unset: data parallel, as before
    assert "--multi_gpu" in command.build(hand, "/o", dist=command.Distributed.from_env(hand, {}))
    base["model"]["multiGPU"] = "ModelParallel"
    hand = from_document({"spec": base})
    argv = command.build(hand, "/o", dist=command.Distributed.from_env(hand, {}))
    assert "--multi_gpu" not in argv and _model_args(argv)["device_map"] == "auto"
    base["resources"] = {"gpus": 2, "nodes": 2}
    with pytest.raises(ValueError, match=r"spec\.model\.multiGPU"):
        from_document({"spec": base})


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING", "ERROR"])
def test_verbosity_is_lmms_evals_per_run(level: str) -> None:
    cfg = from_document(
        {"spec": {"model": {"type": "dummy"}, "tasks": ["mme"], "evaluation": {"verbosity": level}}}
    )
    argv = command.build(cfg, "/o")
    assert argv[argv.index("--verbosity") + 1] == level and argv.count("--verbosity") == 1
    default = from_document({"spec": {"model": {"type": "dummy"}, "tasks": ["mme"]}})
    assert command.build(default, "/o")[-1] == "INFO"
    with pytest.raises(ValueError, match=r"verbosity"):
        from_document(
            {
                "spec": {
                    "model": {"type": "dummy"},
                    "tasks": ["mme"],
                    "evaluation": {"verbosity": "TRACE"},
                }
            }
        )
