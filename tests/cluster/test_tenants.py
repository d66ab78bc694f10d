"""Runs never mix: two namespaces applying the same manifest at once, and two runs whose
names share their first 52 characters, each get their own Job, runner token and
results (the runner is the stand-in that exits with a termination message)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from kubernetes import client

from tests import evalruns as er
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator_process")]


def _scripted(name: str, value: float) -> dict[str, Any]:
    message = {"v": 1, "ok": True, "truncated": False, "tasks": {"mme": {"acc": value}}}
    encoded = base64.b64encode(json.dumps(message).encode()).decode().rstrip("=")
    return er.manifest(
        name,
        er.EXECUTOR,
        model={
            "type": "dummy",
            "pretrained": "org/shared-model",
            "args": {"scripted_message_b64": encoded, "scripted_sleep": "1"},
        },
        leaderboard=None,
    )


def _finished(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    er.wait_phase(api, namespace, name, "Succeeded", timeout=90)
    return dict(
        wait_for(lambda: (r := er.get(api, namespace, name))["status"].get("results") and r)
    )


def _token(core: client.CoreV1Api, namespace: str, job: str) -> str:
    secret = core.read_namespaced_secret(f"{job}-token", namespace)
    return base64.b64decode(secret.data["token"]).decode()


def test_runs_never_share_a_job_token_or_results(
    api: client.ApiClient, namespace: str, other_namespace: str
) -> None:
    core = client.CoreV1Api(api)
    prefix = "nightly-evaluation-of-the-shared-vision-model-on-mme-"  # 53 characters
    runs = [
        (namespace, "same-manifest", 0.25),
        (other_namespace, "same-manifest", 0.75),
        (namespace, prefix + "a", 0.1),
        (namespace, prefix + "b", 0.9),
    ]
    for ns, name, value in runs:
        er.create(api, ns, _scripted(name, value))
    finished = {(ns, name): _finished(api, ns, name) for ns, name, _ in runs}
    jobs = {}
    for ns, name, value in runs:
        status = finished[(ns, name)]["status"]
        # Each run's own result: never the other's, never empty.
        assert status["results"] == [{"task": "mme", "metric": "acc", "value": value}], name
        jobs[(ns, name)] = status["jobName"]
        assert er.jobs_of(api, ns, finished[(ns, name)])[0].metadata.name == status["jobName"]
        data = core.read_namespaced_config_map(status["resultsConfigMap"], ns).data
        assert json.loads(data["primary.json"])[0]["value"] == value
    assert len(set(jobs.values())) == len(runs)
    assert jobs[(namespace, prefix + "a")][:52] == jobs[(namespace, prefix + "b")][:52]
    tokens = {_token(core, ns, job) for (ns, _), job in jobs.items()}
    assert len(tokens) == len(runs)
    # Both namespaces got the policy that admits only the operator to runner pods.
    net = client.NetworkingV1Api(api)
    for ns in (namespace, other_namespace):
        policy = net.read_namespaced_network_policy("lmms-runner", ns)
        (rule,) = policy.spec.ingress
        assert [p.port for p in rule.ports] == [8080]
        # ...and keeps runners off the node's link-local range (the metadata service).
        assert policy.spec.policy_types == ["Ingress", "Egress"]
        blocks = [peer.ip_block for r in policy.spec.egress for peer in (r.to or [])]
        assert "169.254.0.0/16" in [e for b in blocks if b for e in (b._except or [])]
