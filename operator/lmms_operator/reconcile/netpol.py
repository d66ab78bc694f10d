"""The runner pods' network: who may reach them, and how a multi-node run's pods find
each other.

A runner accepts the runner port from the operator's pods only; the pods of one
multi-node run reach each other, through a headless Service for torchrun's rendezvous;
never other runs' pods. Policies add up, so one policy per namespace admits the operator
and a multi-node run adds one of its own.

A runner reaches anything but the node's link-local range and the cloud metadata
addresses (``169.254.0.0/16``, ``fe80::/10``, AWS's ``fd00:ec2::254``, Alibaba's
``100.100.100.200``): a tenant's model args cannot make a runner the way to the node's
metadata service and its credentials. DNS (port 53) stays open to every address, for
node-local DNS caches that listen on a link-local address. The namespace's policy
carries this egress rule; it selects every runner pod, and egress rules add up across
the policies that select a pod, so it bounds them all (the rendezvous policy has no
egress part, and its pods reach each other at their pod addresses). Pure; the shapes only: ``job`` names and
labels the objects (and builds them with a run's others), so names, labels and ports
come in as arguments and nothing here imports it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import RunnerDefaults

#: The NetworkPolicy the operator keeps in every namespace with runs.
NAMESPACE_POLICY = "lmms-runner"
#: What runners may not reach: link-local ranges and the metadata services outside them.
NO_EGRESS_V4 = ("169.254.0.0/16", "100.100.100.200/32")
NO_EGRESS_V6 = ("fe80::/10", "fd00:ec2::254/128")


def egress_rules() -> list[dict[str, Any]]:
    """Everything but ``NO_EGRESS_*``; DNS to any address."""
    return [
        {
            "to": [
                {"ipBlock": {"cidr": "0.0.0.0/0", "except": list(NO_EGRESS_V4)}},
                {"ipBlock": {"cidr": "::/0", "except": list(NO_EGRESS_V6)}},
            ]
        },
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
    ]


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
    too) accepts the runner port from the operator's pods, and nothing else, and reaches
    anything but the link-local and metadata addresses (``egress_rules``). Policies add
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
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [_operator_peer(runner)],
                    "ports": [{"port": runner.port, "protocol": "TCP"}],
                }
            ],
            "egress": egress_rules(),
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
