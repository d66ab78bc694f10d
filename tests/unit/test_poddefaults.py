"""The platform's runner pod defaults (reconcile.poddefaults, settings LMMS_RUNNER_*): what
an admin's values become, how a bad one stops the operator at start-up naming the variable,
and how the defaults merge with a run's own placement, which the placement policy still
checks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from lmms_operator.config import Settings
from lmms_operator.errors import InvalidSpec
from lmms_operator.reconcile import job as jobs
from lmms_operator.reconcile import kueue as kueue_mod
from lmms_operator.reconcile import poddefaults as pd
from lmms_operator.reconcile.placement import PlacementPolicy
from lmms_operator.reconcile.validate import Policy, validate

RUN = jobs.RunRef("r", "team-a", "0b8e6f5c-1111-2222-3333-444455556666")
GPU = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
ENV = {
    pd.IMAGE_PULL_SECRETS: '["regcred", {"name": "mirror"}, "regcred"]',
    pd.TOLERATIONS: json.dumps([GPU, GPU]),
    pd.NODE_SELECTOR: '{"pool.example.com/gpu": "true"}',
    pd.PRIORITY_CLASS_NAME: "evals-default",
    pd.RUNTIME_CLASS_NAME: "nvidia",
    pd.LABELS: '{"cost.example.com/center": "ml-42", "app.kubernetes.io/part-of": "evals"}',
    pd.ANNOTATIONS: '{"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}',
}
DEFAULTS = pd.parse(ENV)


def test_each_setting_becomes_a_default() -> None:
    assert DEFAULTS.image_pull_secrets == ("regcred", "mirror")  # both spellings, once each
    assert [t.to_wire() for t in DEFAULTS.tolerations] == [GPU]
    assert DEFAULTS.node_selector == (("pool.example.com/gpu", "true"),)
    assert DEFAULTS.priority_class_name == "evals-default"
    assert DEFAULTS.runtime_class_name == "nvidia"
    assert dict(DEFAULTS.labels) == {
        "cost.example.com/center": "ml-42",
        "app.kubernetes.io/part-of": "evals",
    }
    assert dict(DEFAULTS.annotations) == {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}


@pytest.mark.parametrize("raw", ["", "  ", "null", None])
def test_unset_empty_or_null_is_no_default(raw: str | None) -> None:
    names = (pd.PRIORITY_CLASS_NAME, pd.RUNTIME_CLASS_NAME)  # plain names: "null" is one
    values = (
        {} if raw is None else {n: raw for n in pd.VARIABLES if raw != "null" or n not in names}
    )
    assert pd.parse(values) == pd.PodDefaults()
    assert not pd.parse(values)


def test_empty_json_values_are_no_default() -> None:
    empty = {pd.IMAGE_PULL_SECRETS: "[]", pd.TOLERATIONS: "[]", pd.NODE_SELECTOR: "{}"}
    assert pd.parse(empty | {pd.LABELS: "{}", pd.ANNOTATIONS: "{}"}) == pd.PodDefaults()


# (variable, its value, what the error says after the variable's name)
BAD = [
    (pd.IMAGE_PULL_SECRETS, '["a",', "LMMS_RUNNER_IMAGE_PULL_SECRETS: not valid JSON"),
    (pd.IMAGE_PULL_SECRETS, '"regcred"', "LMMS_RUNNER_IMAGE_PULL_SECRETS: expected a JSON list"),
    (pd.IMAGE_PULL_SECRETS, '["Reg_Cred"]', "LMMS_RUNNER_IMAGE_PULL_SECRETS[0]: 'Reg_Cred' is not"),
    (pd.IMAGE_PULL_SECRETS, "[1]", "LMMS_RUNNER_IMAGE_PULL_SECRETS[0]: expected a Secret name"),
    (pd.IMAGE_PULL_SECRETS, '[{"nam": "x"}]', "LMMS_RUNNER_IMAGE_PULL_SECRETS[0]: expected"),
    (pd.IMAGE_PULL_SECRETS, json.dumps(["a" * 254]), "longer than 253"),
    (
        pd.TOLERATIONS,
        '{"key": "a"}',
        "LMMS_RUNNER_TOLERATIONS: expected a JSON list, got an object",
    ),
    (
        pd.TOLERATIONS,
        '[{"operator": "Exists"}]',
        "LMMS_RUNNER_TOLERATIONS[0]: a toleration needs a key",
    ),
    (pd.TOLERATIONS, '[{"key": ""}]', "LMMS_RUNNER_TOLERATIONS[0].key:"),
    (pd.TOLERATIONS, '["gpu"]', "LMMS_RUNNER_TOLERATIONS[0]: expected a JSON object"),
    (
        pd.TOLERATIONS,
        '[{"key": "a", "efect": "NoSchedule"}]',
        "TOLERATIONS[0].efect: unknown field",
    ),
    (pd.TOLERATIONS, '[{"key": "a", "operator": "In"}]', "LMMS_RUNNER_TOLERATIONS[0].operator:"),
    (
        pd.TOLERATIONS,
        '[{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]',
        "LMMS_RUNNER_TOLERATIONS[0]: 'node-role.kubernetes.io/control-plane' is a Kubernetes taint",
    ),
    (
        pd.TOLERATIONS,
        '[{"key": "node.kubernetes.io/unreachable", "tolerationSeconds": 10}]',
        "LMMS_RUNNER_TOLERATIONS[0]: 'node.kubernetes.io/unreachable' is a Kubernetes taint",
    ),
    (
        pd.TOLERATIONS,
        '[{"key": "a", "operator": "Exists", "value": "x"}]',
        "LMMS_RUNNER_TOLERATIONS[0]: a toleration with operator Exists takes no value",
    ),
    (
        pd.TOLERATIONS,
        '[{"key": "a", "effect": "NoSchedule", "tolerationSeconds": 5}]',
        "tolerationSeconds needs effect NoExecute",
    ),
    (pd.NODE_SELECTOR, '["a"]', "LMMS_RUNNER_NODE_SELECTOR: expected a JSON object, got a list"),
    (pd.NODE_SELECTOR, '{"gpu": true}', "LMMS_RUNNER_NODE_SELECTOR['gpu']: values must be strings"),
    (pd.NODE_SELECTOR, '{"gpu": "a b"}', "LMMS_RUNNER_NODE_SELECTOR['gpu']: 'a b' is not a valid"),
    (pd.NODE_SELECTOR, '{"Pool.Example/x": "1"}', "['Pool.Example/x']: 'Pool.Example/x' is not"),
    (pd.NODE_SELECTOR, json.dumps({"x" * 64: "1"}), "the name after the prefix is longer than 63"),
    (
        pd.NODE_SELECTOR,
        '{"node-role.kubernetes.io/gpu": ""}',
        "LMMS_RUNNER_NODE_SELECTOR['node-role.kubernetes.io/gpu']: runner pods are not placed by "
        "node role",
    ),
    (pd.PRIORITY_CLASS_NAME, "High", "LMMS_RUNNER_PRIORITY_CLASS_NAME: 'High' is not a valid"),
    (pd.RUNTIME_CLASS_NAME, '"nvidia"', "LMMS_RUNNER_RUNTIME_CLASS_NAME: '\"nvidia\"' is not"),
    (pd.LABELS, "team=ml", "LMMS_RUNNER_LABELS: not valid JSON"),
    (pd.LABELS, '{"eval.lmms.dev/run": "x"}', "LMMS_RUNNER_LABELS['eval.lmms.dev/run']: labels in"),
    (pd.LABELS, '{"x.eval.lmms.dev/a": "x"}', "LMMS_RUNNER_LABELS['x.eval.lmms.dev/a']: labels in"),
    (pd.LABELS, '{"kueue.x-k8s.io/queue-name": "q"}', "spec.scheduling.queueName"),
    (pd.LABELS, '{"batch.kubernetes.io/job-name": "q"}', "are reserved"),
    (pd.LABELS, '{"app.kubernetes.io/managed-by": "me"}', "the operator sets this label itself"),
    (pd.LABELS, '{"app.kubernetes.io/name": "me"}', "the operator sets this label itself"),
    (pd.LABELS, '{"controller-uid": "1"}', "the Job controller sets this label"),
    (pd.LABELS, '{"team": "x" }  x', "LMMS_RUNNER_LABELS: not valid JSON (Extra data"),
    (pd.ANNOTATIONS, '{"a": 1}', "LMMS_RUNNER_ANNOTATIONS['a']: values must be strings"),
    (pd.ANNOTATIONS, '{"a b": "1"}', "LMMS_RUNNER_ANNOTATIONS['a b']: 'a b' is not a valid key"),
    (pd.ANNOTATIONS, '{"eval.lmms.dev/x": "1"}', "annotations in the eval.lmms.dev"),
    (
        pd.ANNOTATIONS,
        '{"batch.kubernetes.io/job-completion-index": "0"}',
        "annotations in the eval.lmms.dev, batch.kubernetes.io domains are reserved",
    ),
    (pd.ANNOTATIONS, json.dumps({"a": "x" * 300_000}), "more than the API server's 256 KiB"),
    (pd.ANNOTATIONS, "[" * 100_000, "LMMS_RUNNER_ANNOTATIONS: "),
]


@pytest.mark.parametrize(("name", "raw", "says"), BAD, ids=[f"{n}={r[:30]}" for n, r, _ in BAD])
def test_a_value_that_cannot_be_used_is_refused_naming_the_variable(
    name: str, raw: str, says: str
) -> None:
    with pytest.raises(ValueError) as exc:
        pd.parse({name: raw})
    assert str(exc.value).startswith(name), exc.value
    assert says in str(exc.value), exc.value


def test_every_problem_is_said_at_once() -> None:
    with pytest.raises(ValueError) as exc:
        pd.parse({pd.TOLERATIONS: '[{"operator": "Exists"}]', pd.LABELS: '{"job-name": "x"}'})
    assert "LMMS_RUNNER_TOLERATIONS[0]" in str(exc.value)
    assert "LMMS_RUNNER_LABELS['job-name']" in str(exc.value)


def test_the_admins_defaults_are_trusted_not_checked_against_the_placement_policy() -> None:
    """A priority class and a toleration key the admin lets no run choose are still the
    platform's defaults."""
    assert DEFAULTS.priority_class_name not in PlacementPolicy().priority_classes
    pd.parse(ENV | {pd.TOLERATIONS: '[{"key": "pool.example.com/reserved"}]'})


# --- the settings and the process ---------------------------------------------------


def test_settings_read_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, raw in ENV.items():
        monkeypatch.setenv(name, raw)
    settings = Settings.from_env()
    assert settings.runner.pod == DEFAULTS
    assert settings.placement.node_selector == DEFAULTS.node_selector
    assert settings.policy.placement.node_selector == DEFAULTS.node_selector


def test_the_operator_refuses_to_start_on_a_bad_default_without_a_traceback() -> None:
    env = dict(os.environ)
    env.update({pd.TOLERATIONS: '[{"operator": "Exists"}]', "KUBECONFIG": "/nonexistent"})
    out = subprocess.run(
        [sys.executable, "-m", "lmms_operator", "run", "--liveness", "", "--metrics-address", ""],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert out.stderr.startswith(
        "lmms-operator: invalid settings: LMMS_RUNNER_TOLERATIONS[0]: a toleration needs a key"
    ), out.stderr
    assert "Traceback" not in out.stderr + out.stdout


# --- the merge ----------------------------------------------------------------------

POLICY = Policy(
    placement=PlacementPolicy(
        priority_classes=frozenset({"batch-low"}),
        toleration_keys=("example.com/*",),
        node_selector=DEFAULTS.node_selector,
    )
)


def _spec(policy: Policy = POLICY, **scheduling: Any) -> Any:
    raw = {"model": {"type": "qwen2_vl"}, "tasks": ["mme"], "scheduling": scheduling}
    return validate(raw, policy, namespace=RUN.namespace)


def _build(spec: Any, defaults: pd.PodDefaults = DEFAULTS, **over: Any) -> dict[str, Any]:
    runner = jobs.RunnerDefaults(pod=defaults)
    return jobs.build(RUN, spec, runner, token="t0ken", **over).job


def test_a_run_without_placement_gets_the_platforms() -> None:
    job = _build(_spec())
    pod = job["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    assert pod["tolerations"] == [GPU]
    assert pod["nodeSelector"] == {"pool.example.com/gpu": "true"}
    assert pod["priorityClassName"] == "evals-default"
    assert pod["runtimeClassName"] == "nvidia"
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        assert meta["labels"]["cost.example.com/center"] == "ml-42"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "evals"
        assert meta["annotations"] == {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}


def test_a_runs_own_values_merge_with_the_platforms() -> None:
    own = {"key": "example.com/a100", "operator": "Exists"}
    any_key = dataclasses.replace(POLICY.placement, toleration_keys=None)
    spec = _spec(
        Policy(placement=any_key),
        tolerations=[own, GPU],  # GPU is the platform's too: once in the pod
        nodeSelector={"nvidia.com/gpu.product": "A100", "pool.example.com/gpu": "true"},
        priorityClassName="batch-low",
        queueName="gpus",
    )
    job = _build(spec)
    pod = job["spec"]["template"]["spec"]
    assert pod["tolerations"] == [own, GPU]
    assert pod["nodeSelector"] == {
        "nvidia.com/gpu.product": "A100",
        "pool.example.com/gpu": "true",
    }
    assert pod["priorityClassName"] == "batch-low"  # the run's, from the admin's list
    assert pod["runtimeClassName"] == "nvidia"
    # The operator's own labels stay: Kueue's queue label on the Job, the selectors.
    assert job["metadata"]["labels"][kueue_mod.QUEUE_LABEL] == "gpus"
    assert job["metadata"]["labels"][jobs.LABEL_MANAGED_BY] == jobs.MANAGED_BY


def test_the_run_may_not_change_a_platform_node_selector_key() -> None:
    with pytest.raises(InvalidSpec) as exc:
        _spec(nodeSelector={"pool.example.com/gpu": "false", "zone": "a"})
    assert [p.field for p in exc.value.problems] == [
        "spec.scheduling.nodeSelector.pool.example.com/gpu"
    ]
    assert "conflicts with the platform's pool.example.com/gpu='true'" in str(exc.value)
    assert "LMMS_RUNNER_NODE_SELECTOR" in str(exc.value)


def test_the_runs_own_values_are_still_checked_against_the_placement_policy() -> None:
    with pytest.raises(InvalidSpec) as exc:
        _spec(
            priorityClassName="evals-default",  # the platform's default, not in the list
            tolerations=[GPU],  # the platform's toleration, outside the allowed keys
        )
    assert [p.field for p in exc.value.problems] == [
        "spec.scheduling.priorityClassName",
        "spec.scheduling.tolerations[0].key",
    ]


def test_the_operators_own_labels_always_win() -> None:
    sneaky = pd.PodDefaults(labels=((jobs.LABEL_RUN, "other"), (jobs.LABEL_MANAGED_BY, "me")))
    job = _build(_spec(), sneaky)
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        assert meta["labels"][jobs.LABEL_RUN] == RUN.name
        assert meta["labels"][jobs.LABEL_MANAGED_BY] == jobs.MANAGED_BY


def test_defaults_change_neither_the_identity_nor_the_name_of_a_runs_job() -> None:
    spec = _spec()
    with_defaults, without = _build(spec), _build(spec, pd.PodDefaults())
    assert with_defaults["metadata"]["name"] == without["metadata"]["name"]
    label = jobs.LABEL_SPEC_HASH
    assert with_defaults["metadata"]["labels"][label] == without["metadata"]["labels"][label]
    assert "runtimeClassName" not in without["spec"]["template"]["spec"]


def test_multi_node_and_fan_out_pods_get_the_defaults_too() -> None:
    from lmms_operator.reconcile.shards import Shard

    raw = {
        "model": {"type": "qwen2_vl"},
        "tasks": ["mme"],
        "resources": {"nodes": 2, "gpus": 1},
    }
    multi = _build(validate(raw, POLICY))
    assert multi["spec"]["completionMode"] == "Indexed"
    assert multi["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"
    fan = {"model": {"type": "qwen2_vl"}, "tasks": ["mme", "ai2d"], "parallelism": 2}
    shards = [Shard(0, ("mme",), None), Shard(1, ("ai2d",), None)]
    fanned = _build(validate(fan, POLICY), shards=shards)
    assert fanned["spec"]["completions"] == 2
    assert fanned["spec"]["template"]["spec"]["imagePullSecrets"][0] == {"name": "regcred"}
