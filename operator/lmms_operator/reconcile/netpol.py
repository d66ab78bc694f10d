"""The runner pods' network: who may reach them, and how a multi-node run's pods find
each other.

A runner accepts the runner port from the operator's pods only (and, where the operator
is configured with a Prometheus pod and/or namespace selector, from those Prometheus
pods, for the chart's runner PodMonitor); the pods of one
multi-node run reach each other, through a headless Service for torchrun's rendezvous;
never other runs' pods. Policies add up, so one policy per namespace admits the operator
and a multi-node run adds one of its own.

A runner reaches anything but the node's link-local range and the cloud metadata
addresses (``169.254.0.0/16``, ``fe80::/10``, AWS's ``fd00:ec2::254`` and ``::23``, Google's
``fd20:ce::254``, Scaleway's ``fd00:42::42``, Alibaba's
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

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import RunnerDefaults

#: The NetworkPolicy the operator keeps in every namespace with runs.
NAMESPACE_POLICY = "lmms-runner"
#: What runners may not reach: link-local ranges and the metadata services outside them.
NO_EGRESS_V4 = ("169.254.0.0/16", "100.100.100.200/32")
NO_EGRESS_V6 = (
    "fe80::/10",
    "fd00:ec2::254/128",
    "fd00:ec2::23/128",
    "fd20:ce::254/128",
    "fd00:42::42/128",
)


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


def label_selector(text: str, name: str) -> dict[str, Any]:
    """A LabelSelector from kubectl's ``-l`` syntax: ``k=v``, ``k==v``, ``k!=v``,
    ``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``, joined by commas; ``""`` selects
    everything. ``name`` (the setting) is in the error for anything else."""
    match_labels: dict[str, str] = {}
    expressions: list[dict[str, Any]] = []
    for term in _terms(text, name):
        if " in " in f" {term} " or " notin " in f" {term} ":
            key, op, rest = (
                term.partition(" notin ") if " notin " in term else term.partition(" in ")
            )
            rest = rest.strip()
            if not (rest.startswith("(") and rest.endswith(")")):
                raise ValueError(f"{name}: expected ({op.strip()} (a,b)) in {term!r}")
            values = [v.strip() for v in rest[1:-1].split(",") if v.strip()]
            if not values:
                raise ValueError(f"{name}: no values in {term!r}")
            expressions.append(
                {
                    "key": _key(key.strip(), name),
                    "operator": "In" if op.strip() == "in" else "NotIn",
                    "values": values,
                }
            )
        elif "!=" in term:
            key, _, value = term.partition("!=")
            expressions.append(
                {"key": _key(key.strip(), name), "operator": "NotIn", "values": [value.strip()]}
            )
        elif "=" in term:
            key, _, value = term.replace("==", "=", 1).partition("=")
            match_labels[_key(key.strip(), name)] = _value(value.strip(), name)
        elif term.startswith("!"):
            expressions.append({"key": _key(term[1:].strip(), name), "operator": "DoesNotExist"})
        else:
            expressions.append({"key": _key(term, name), "operator": "Exists"})
    selector: dict[str, Any] = {}
    if match_labels:
        selector["matchLabels"] = match_labels
    if expressions:
        selector["matchExpressions"] = expressions
    return selector


def _terms(text: str, name: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"{name}: unbalanced ')' in {text!r}")
        if ch == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += ch
    if depth:
        raise ValueError(f"{name}: unbalanced '(' in {text!r}")
    terms.append(current.strip())
    if text.strip() and not all(terms):
        raise ValueError(f"{name}: empty term in {text!r}")
    return [t for t in terms if t]


_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _key(key: str, name: str) -> str:
    if not _KEY.match(key) or len(key.rpartition("/")[2]) > 63:
        raise ValueError(f"{name}: {key!r} is not a label key")
    return key


def _value(value: str, name: str) -> str:
    if not _VALUE.match(value) or len(value) > 63:
        raise ValueError(f"{name}: {value!r} is not a label value")
    return value


@dataclass(frozen=True)
class PrometheusScrapers:
    """The Prometheus pods that may also reach the runner port (the runner PodMonitor):
    label selectors in kubectl's ``-l`` syntax (``label_selector``) of their namespaces
    and of the pods; an unset one selects all."""

    namespace_selector: str | None = None
    pod_selector: str | None = None


def prometheus_peer(runner: RunnerDefaults) -> dict[str, Any] | None:
    """The peer of ``runner.prometheus``: both selectors always present, so it selects the
    pods matching the pod selector in the namespaces matching the namespace selector.
    ``None`` (the operator only) when no Prometheus is configured."""
    scrapers = runner.prometheus
    if scrapers is None or (scrapers.namespace_selector is None and scrapers.pod_selector is None):
        return None
    return {
        "namespaceSelector": label_selector(
            scrapers.namespace_selector or "", "LMMS_PROMETHEUS_NAMESPACE_SELECTOR"
        ),
        "podSelector": label_selector(scrapers.pod_selector or "", "LMMS_PROMETHEUS_POD_SELECTOR"),
    }


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
    too) accepts the runner port from the operator's pods (and the Prometheus pods of
    ``prometheus_peer``, when configured), and nothing else, and reaches
    anything but the link-local and metadata addresses (``egress_rules``). Policies add
    up, so runners of different runs never reach each other; a multi-node run adds a
    policy of its own for its rendezvous."""
    if not runner.network_policy:
        return None
    peers = [_operator_peer(runner)]
    prometheus = prometheus_peer(runner)
    if prometheus is not None:
        peers.append(prometheus)
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
                    "from": peers,
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
