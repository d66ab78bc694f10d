"""A spec through the whole path to lmms-eval's own parser, and what came out.

spec -> ``reconcile.validate.validate`` -> ``reconcile.admission.decide`` (the whole
plan: the Job and the runner's configuration ConfigMap from ``reconcile.job``) -> the
runner's ``config.from_document`` on that ConfigMap's document -> ``command.build`` for
each lmms-eval process the runner starts -> lmms-eval 0.7.3's argument parser and
``simple_parse_args_string`` -> compared with what the spec says.

``check`` raises ``AssertionError`` (with the field, the value and what lmms-eval
parsed) when an accepted spec does not round-trip; any other exception is the operator's
or the runner's, and propagates. A refused spec must carry problems naming ``spec``
fields. Used by ``tests/unit/test_prop_evalrun.py`` and ``tests/bench/properties.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmms_operator import concurrency, presets
from lmms_operator.config import Settings
from lmms_operator.errors import InvalidSpec
from lmms_operator.reconcile import admission, modelendpoint, shards
from lmms_operator.reconcile import job as jobs
from lmms_operator.reconcile.validate import FEATURES, Policy, validate
from lmms_runner import command, config

NOW = dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC)
RUN = {"name": "prop", "namespace": "team-a", "uid": "0000-prop", "generation": 1}
#: The kernel's limits on execve: one string (NUL included), and all strings and pointers.
MAX_ARG_STRLEN = 32 * 4096
ARG_MAX = 2 * 1024 * 1024
#: What lmms-eval 0.7.3 does instead of evaluating when --tasks is one of these
#: (``cli_evaluate_single``: it lists tasks and exits 0).
LISTING = frozenset({"list", "list_groups", "list_tags", "list_subtasks"})
OUTPUT = "/var/lib/lmms/output"
#: The runner's directory of merged custom-task folders (``Runner._include_paths``).
TASKS = "/tmp/lmms-runner-tasks"

DEFAULT_POLICY = Policy()
#: Every feature and any model arg: the widest an admin can make it.
OPEN_POLICY = dataclasses.replace(
    Policy(), features=frozenset(FEATURES), model_args=("*:*",), env=("*",)
)


@dataclass(frozen=True)
class Outcome:
    accepted: bool
    #: The fields the problems named, when refused.
    fields: tuple[str, ...] = ()
    #: Seconds spent in validate, admission and the runner's builders.
    seconds: float = 0.0
    processes: int = 0


@functools.cache
def lmms_eval_parser() -> argparse.ArgumentParser:
    """lmms-eval's own parser (``parse_eval_args`` builds it and parses ``sys.argv``)."""
    from lmms_eval.__main__ import parse_eval_args

    saved = sys.argv
    sys.argv = ["lmms-eval"]
    try:
        parser, _ = parse_eval_args()
    finally:
        sys.argv = saved
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def check(raw: Mapping[str, Any], policy: Policy = DEFAULT_POLICY) -> Outcome:
    """Validate, plan, build and parse back one spec; AssertionError if it does not
    round-trip."""
    start = time.perf_counter()
    try:
        spec = validate(raw, policy, str(RUN["namespace"]))
    except InvalidSpec as exc:
        fields = tuple(p.field for p in exc.problems)
        assert fields, f"refused with no problem: {exc}"
        assert all(f == "spec" or f.startswith(("spec.", "spec[")) for f in fields), fields
        return Outcome(False, fields, time.perf_counter() - start)
    planned = _plan(raw, spec, policy)
    if planned is None:
        return Outcome(True, (), time.perf_counter() - start, 0)
    job, document = planned
    cfg = config.from_document(document)
    runs = _processes(cfg, job)
    seconds = time.perf_counter() - start
    expected_tasks = shards.units(spec)
    evaluated: list[str] = []
    for argv, env in runs:
        _check_limits(argv, env)
        evaluated += _check_argv(spec, argv)
    if len(runs) == 1:
        assert evaluated == expected_tasks, f"--tasks {evaluated} != the spec's {expected_tasks}"
    assert sorted(evaluated) == sorted(expected_tasks), (
        f"--tasks over all processes {evaluated} != the spec's {expected_tasks}"
    )
    return Outcome(True, (), seconds, len(runs))


def _plan(
    raw: Mapping[str, Any], spec: Any, policy: Policy
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The Job and the runner's configuration document, from admission's whole plan
    with every referenced object present (None: the spec cancels the run, as asked; a
    suspended run's, once resumed)."""
    secrets: dict[str, Mapping[str, bytes] | None] = {
        name: {k: b"x" for k in keys} for _, name, keys in admission.secret_refs(spec)
    }
    refs = admission.References(
        config_maps=frozenset(c.config_map for c in spec.custom_tasks),
        pvcs=frozenset([spec.cache.persistent_volume_claim] if spec.cache else []),
        secrets=secrets,
    )
    run = {"apiVersion": "eval.lmms.dev/v1alpha1", "kind": "EvalRun", "metadata": dict(RUN)}
    run["spec"] = dict(raw)
    snap = admission.Snapshot(
        run=run,
        spec=spec,
        now=NOW,
        new_token="t0ken",
        references=refs,
        custom=tuple({"data": {}} for _ in spec.custom_tasks),
        # A named endpoint or judge, ready: what its API objects would show.
        endpoints={
            field: modelendpoint.Readiness(True, "http://model.team-a.svc:8000/v1")
            for field, _ in modelendpoint.references(spec)
        },
    )
    settings = Settings()
    rules = admission.Rules(policy, settings.runner, settings.timeouts)
    plan = admission.decide(snap, rules)
    if spec.cancel:
        assert plan.evaluation is None and plan.status.get("phase") == "Cancelled", plan.status
        return None
    if spec.suspend:
        # A run suspended before it ever started gets no Job until it is resumed.
        assert plan.evaluation is None and plan.status.get("reason") == "Suspended", plan.status
        return None
    assert plan.evaluation is not None, f"accepted, but no Job planned: {plan.status}"
    job = dict(plan.evaluation.job)
    configs = [
        o
        for o in plan.evaluation.before_job
        if o["kind"] == "ConfigMap" and "config.json" in (o.get("data") or {})
    ]
    assert len(configs) == 1, "one run configuration ConfigMap"
    return job, json.loads(configs[0]["data"]["config.json"])


def _container_env(job: Mapping[str, Any], index: int) -> dict[str, str]:
    """The runner's environment in pod ``index``: plain values, and the Job index where a
    field reference names it; Secrets and other fields are unknown here (left empty)."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            path = ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
            env[var["name"]] = str(index) if path == jobs.JOB_INDEX else ""
    return env


def _processes(
    cfg: config.RunConfig, job: Mapping[str, Any]
) -> list[tuple[list[str], dict[str, str]]]:
    """Each lmms-eval process the runner starts (``evaluation.Runner``): per pod (a shard
    or node 0), and with a state volume task by task (``_evaluate_all``)."""
    pods = int(job["spec"].get("completions") or 1)
    shard_pods = range(pods) if cfg.shards else [0]
    out = []
    for index in shard_pods:
        env = _container_env(job, index)
        pod_cfg = cfg.for_shard(env.get("LMMS_SHARD_INDEX"))
        dist = command.Distributed.from_env(pod_cfg, env)
        include = [TASKS] if pod_cfg.spec.custom_tasks else []
        state = env.get("LMMS_STATE_DIR")
        cache = f"{state}/{pod_cfg.state_key}/response-cache" if state else None
        child = command.child_env(env, dist)
        if state and len(pod_cfg.tasks) > 1 and dist.nodes == 1:
            for task in pod_cfg.tasks:
                argv = command.build(pod_cfg, OUTPUT, include, cache, dist, tasks=[task])
                out.append((argv, child))
        else:
            out.append((command.build(pod_cfg, OUTPUT, include, cache, dist), child))
    return out


def _check_limits(argv: list[str], env: Mapping[str, str]) -> None:
    """Each string under MAX_ARG_STRLEN, all of them with their pointers under ARG_MAX."""
    strings = [a.encode() for a in argv] + [f"{k}={v}".encode() for k, v in env.items()]
    longest = max(len(s) + 1 for s in strings)
    where = next(i for i, s in enumerate(strings) if len(s) + 1 == longest)
    assert longest <= MAX_ARG_STRLEN, (
        f"argv/env element {where} ({(argv + list(env))[where][:40]!r}...) is {longest} bytes "
        f"with its NUL; execve refuses more than {MAX_ARG_STRLEN} (E2BIG)"
    )
    total = sum(len(s) + 1 + 8 for s in strings) + 16
    assert total <= ARG_MAX, f"argv and env are {total} bytes; execve refuses over {ARG_MAX}"


def _same(a: Any, b: Any) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or (type(a) is type(b) and a == b)


def _check_argv(spec: Any, argv: list[str]) -> list[str]:
    """lmms-eval's reading of one command line against the spec; its tasks."""
    from lmms_eval.utils import handle_arg_string, simple_parse_args_string

    tail = argv[len(argv) - argv[::-1].index("lmms_runner.lmms_eval_main") :]
    ns = lmms_eval_parser().parse_args(tail)
    assert ns.model == spec.model.type, f"--model {ns.model!r} != {spec.model.type!r}"
    pretrained, args = presets.resolve(spec.model.type, spec.model.pretrained, spec.model.args)
    wanted: dict[str, str] = {}
    if pretrained:
        wanted["pretrained"] = pretrained
    if spec.model.revision:
        wanted["revision"] = spec.model.revision
    wanted.update(args)
    # What the runner adds: device_map=auto for model parallel (unless args set one), and
    # the requests in flight (spec.model.concurrency).
    if spec.model.multi_gpu == "ModelParallel" and "device_map" not in args:
        wanted["device_map"] = "auto"
    wanted.update(concurrency.model_args(spec.model.type, spec.model.concurrency))
    expected = {k: handle_arg_string(v) for k, v in wanted.items()}
    parsed = simple_parse_args_string(ns.model_args)
    differ = {
        k: (wanted.get(k), parsed.get(k, "<missing>"))
        for k in expected.keys() | parsed.keys()
        if k not in expected or k not in parsed or not _same(expected[k], parsed[k])
    }
    assert not differ, (
        f"spec.model args {{key: (spec value, lmms-eval parsed)}}: {differ!r}; "
        f"--model_args {ns.model_args!r}"
    )
    assert ns.tasks not in LISTING, f"--tasks {ns.tasks!r}: lmms-eval lists tasks instead"
    tasks: list[str] = ns.tasks.split(",")
    ev = spec.evaluation
    assert ns.batch_size == str(ev.batch_size) and ns.seed == [ev.seed] * 4, (
        ns.batch_size,
        ns.seed,
    )
    assert ns.limit == (float(ev.limit) if ev.limit is not None else None), ns.limit
    assert ns.num_fewshot == ev.num_fewshot and ns.log_samples == ev.log_samples
    assert ns.output_path == OUTPUT, ns.output_path
    return tasks
