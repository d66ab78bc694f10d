"""The admin's placement policy: where a tenant's runner pods may go. Pure.

A shared cluster's capacity and its control plane are not the tenant's to choose, so
``check`` refuses, naming the field:

- a ``priorityClassName`` or a Kueue ``workloadPriorityClassName`` outside the admin's
  list (default: none, only the cluster default, i.e. the field unset): a high priority
  preempts other tenants' runners;
- a toleration without a key (it tolerates every taint), and one whose key is in the
  ``kubernetes.io`` or ``k8s.io`` domains (``node-role.kubernetes.io/control-plane``,
  ``node.kubernetes.io/unreachable``, ...: the taints Kubernetes itself puts on the
  control plane and on unhealthy nodes), in every spelling, the bare ``node-role.kubernetes.io``
  included. An admin may narrow the keyed ones to a list (``NAME`` or ``PREFIX*``);
- a pod affinity or anti-affinity term that looks at pods in other namespaces (any
  ``namespaceSelector``, ``{}`` being every namespace, or ``namespaces`` naming another
  one) unless the admin allows it: an anti-affinity term could keep other tenants'
  runners off nodes;
- a nodeSelector or node affinity requirement on a ``node-role.kubernetes.io`` key: a
  runner is never placed by node role (the control plane's among them);
- a nodeSelector key of the platform's (``LMMS_RUNNER_NODE_SELECTOR``, ``poddefaults``)
  with another value: a run may add keys to it, never change one.

The chart's ValidatingAdmissionPolicy applies the same rules to the Jobs themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..api import EvalRunSpec
from ..api.corev1 import NodeSelectorRequirement, NodeSelectorTerm
from ..errors import Problem

#: Domains whose taints and node roles belong to Kubernetes itself.
RESERVED_TAINT_DOMAINS = ("kubernetes.io", "k8s.io")
NODE_ROLE_DOMAIN = "node-role.kubernetes.io"
_SCHED = "spec.scheduling"


@dataclass(frozen=True)
class PlacementPolicy:
    """What an admin lets tenants choose; the defaults are the safe ones."""

    #: Priority class names tenants may set; empty: none (the cluster default only).
    priority_classes: frozenset[str] = frozenset()
    #: Toleration keys allowed (``NAME`` or ``PREFIX*``); None: every key outside the
    #: reserved domains. The reserved domains are refused either way.
    toleration_keys: tuple[str, ...] | None = None
    #: Pod (anti-)affinity terms may look at pods in other namespaces.
    cross_namespace_affinity: bool = False
    #: The platform's nodeSelector (runner pod defaults): keys a run may not change.
    node_selector: tuple[tuple[str, str], ...] = ()


def domain(key: str) -> str:
    """The DNS domain of a label or taint key: its prefix, or the whole key when it has
    none (``node-role.kubernetes.io`` alone is in the node-role.kubernetes.io domain)."""
    return key.split("/", 1)[0].lower()


def in_domain(key: str, domains: Iterable[str]) -> bool:
    """The key's domain is one of ``domains`` or a subdomain of one."""
    d = domain(key)
    return any(d == x or d.endswith("." + x) for x in domains)


def matches(key: str, patterns: Iterable[str]) -> bool:
    """``key`` is one of ``patterns``, or starts with one that ends in ``*``."""
    return any(key == p or (p.endswith("*") and key.startswith(p[:-1])) for p in patterns)


def check(
    spec: EvalRunSpec, policy: PlacementPolicy, namespace: str | None = None
) -> list[Problem]:
    """Problems of the spec's placement under ``policy``. ``namespace``, when known, is the
    run's own: an affinity term may name it in ``namespaces``."""
    return (
        _priority(spec, policy)
        + _tolerations(spec, policy)
        + _node_roles(spec)
        + _namespaces(spec, policy, namespace)
        + _platform_node_selector(spec, policy)
    )


def _priority(spec: EvalRunSpec, policy: PlacementPolicy) -> list[Problem]:
    """The pod's priority class and Kueue's WorkloadPriorityClass: both let a run preempt
    others, so both must be on the admin's list."""
    sched = spec.scheduling
    problems: list[Problem] = []
    allowed = ", ".join(sorted(policy.priority_classes))
    why = f"allowed: {allowed}" if allowed else "none is allowed; leave it unset"
    for field, name in (
        ("priorityClassName", sched.priority_class_name),
        ("workloadPriorityClassName", sched.workload_priority_class_name),
    ):
        if name is None or name in policy.priority_classes:
            continue
        problems.append(
            Problem(
                f"{_SCHED}.{field}",
                f"{name!r} is not a priority class this cluster lets runs use ({why}; "
                "settings LMMS_ALLOWED_PRIORITY_CLASSES)",
            )
        )
    if sched.workload_priority_class_name is not None and not sched.queue_name:
        problems.append(
            Problem(
                f"{_SCHED}.workloadPriorityClassName",
                "is a Kueue priority: it needs spec.scheduling.queueName",
            )
        )
    return problems


def _tolerations(spec: EvalRunSpec, policy: PlacementPolicy) -> list[Problem]:
    problems: list[Problem] = []
    for i, t in enumerate(spec.scheduling.tolerations):
        field = f"{_SCHED}.tolerations[{i}].key"
        if not t.key:
            problems.append(
                Problem(field, "a toleration needs a key: one without tolerates every taint")
            )
        elif in_domain(t.key, RESERVED_TAINT_DOMAINS):
            problems.append(
                Problem(
                    field,
                    f"{t.key!r} is a Kubernetes taint (kubernetes.io and k8s.io domains: the "
                    "control plane, unhealthy nodes); runs may not tolerate it",
                )
            )
        elif policy.toleration_keys is not None and not matches(t.key, policy.toleration_keys):
            allowed = ", ".join(policy.toleration_keys) or "none"
            problems.append(
                Problem(
                    field,
                    f"{t.key!r} is not a toleration key this cluster lets runs use (allowed: "
                    f"{allowed}; settings LMMS_ALLOWED_TOLERATION_KEYS)",
                )
            )
    return problems


def _node_roles(spec: EvalRunSpec) -> list[Problem]:
    why = "runs are not placed by node role (the control plane is not theirs)"
    problems = [
        Problem(f"{_SCHED}.nodeSelector.{key}", why)
        for key in spec.scheduling.node_selector
        if in_domain(key, (NODE_ROLE_DOMAIN,))
    ]
    for path, term in spec.scheduling.affinity.node_terms():
        for name, reqs in _requirements(term):
            for j, req in enumerate(reqs):
                if in_domain(req.key, (NODE_ROLE_DOMAIN,)):
                    problems.append(Problem(f"{_SCHED}.affinity.{path}.{name}[{j}].key", why))
    return problems


def _requirements(term: NodeSelectorTerm) -> list[tuple[str, list[NodeSelectorRequirement]]]:
    return [
        ("matchExpressions", term.match_expressions or []),
        ("matchFields", term.match_fields or []),
    ]


def _namespaces(spec: EvalRunSpec, policy: PlacementPolicy, namespace: str | None) -> list[Problem]:
    if policy.cross_namespace_affinity:
        return []
    problems: list[Problem] = []
    for path, term in spec.scheduling.affinity.pod_terms():
        field = f"{_SCHED}.affinity.{path}"
        if term.namespace_selector is not None:
            problems.append(
                Problem(
                    f"{field}.namespaceSelector",
                    "a term may only look at pods in the run's own namespace ({} selects "
                    "every namespace); settings LMMS_ALLOW_CROSS_NAMESPACE_AFFINITY",
                )
            )
        for j, name in enumerate(term.namespaces or []):
            if name != namespace:
                problems.append(
                    Problem(
                        f"{field}.namespaces[{j}]",
                        f"{name!r}: a term may only look at pods in the run's own namespace "
                        "(leave namespaces empty); settings LMMS_ALLOW_CROSS_NAMESPACE_AFFINITY",
                    )
                )
    return problems


def _platform_node_selector(spec: EvalRunSpec, policy: PlacementPolicy) -> list[Problem]:
    fixed = dict(policy.node_selector)
    return [
        Problem(
            f"{_SCHED}.nodeSelector.{key}",
            f"{value!r} conflicts with the platform's {key}={fixed[key]!r}, which runs may "
            "not change (settings LMMS_RUNNER_NODE_SELECTOR); leave the key out or set it to "
            f"{fixed[key]!r}",
        )
        for key, value in spec.scheduling.node_selector.items()
        if key in fixed and value != fixed[key]
    ]
