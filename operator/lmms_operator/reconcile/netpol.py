"""The runner pods' network: who may reach them, and how a multi-node run's pods find
each other.

A runner accepts the runner port from the operator's pods only; the pods of one
multi-node run reach each other, through a headless Service for torchrun's rendezvous;
never other runs' pods. Policies add up, so one policy per namespace admits the operator
and a multi-node run adds one of its own. Pure; the shapes only: ``job`` names and
labels the objects (and builds them with a run's others), so names, labels and ports
come in as arguments and nothing here imports it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import RunnerDefaults

#: The NetworkPolicy the operator keeps in every namespace with runs.
NAMESPACE_POLICY = "lmms-runner-ingress"


def _operator_peer(runner: RunnerDefaults) -> dict[str, Any]:
    peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(runner.operator_labels)}}
    if runner.operator_namespace:
        peer["namespaceSelector"] = {
            "matchLabels": {"kubernetes.io/metadata.name": runner.operator_namespace}
        }
    return peer


def namespace_policy(
    namespace: str, runner: RunnerDefaults, runners: Mapping[str, str]
) -> dict[str, Any] | None:
    """One per namespace with runs (made with its first run's Job, whatever the mode):
    every runner pod (``runners``: the labels they all carry, which the policy carries
    too) accepts the runner port from the operator's pods, and nothing else. Policies add
    up, so runners of different runs never reach each other; a multi-node run adds a
    policy of its own for its rendezvous."""
    if not runner.network_policy:
        return None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": NAMESPACE_POLICY,
            "namespace": namespace,
            "labels": dict(runners),
        },
        "spec": {
            "podSelector": {"matchLabels": dict(runners)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [_operator_peer(runner)],
                    "ports": [{"port": runner.port, "protocol": "TCP"}],
                }
            ],
        },
    }


def rendezvous_service(
    metadata: dict[str, Any], own: Mapping[str, str], port: int
) -> dict[str, Any]:
    """A multi-node run's headless Service: node 0 has a stable name
    (``<job>-0.<service>``) for torchrun's rendezvous, published before the pods are ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": dict(own),
            "ports": [{"name": "rdzv", "port": port, "targetPort": port}],
        },
    }


def rendezvous_policy(
    metadata: dict[str, Any], own: Mapping[str, str], runner: RunnerDefaults
) -> dict[str, Any] | None:
    """A multi-node run's pods (``own``: the labels only they carry) reach each other on
    every port (torchrun's rendezvous and collectives); the namespace's policy admits the
    operator."""
    if not runner.network_policy:
        return None
    selector = dict(own)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": selector}}]}],
        },
    }
