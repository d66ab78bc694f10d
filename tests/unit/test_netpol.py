"""Runner pods cannot reach the node's metadata service: the namespace's runner policy
allows egress everywhere but the link-local and metadata addresses, DNS included, and
the operator still reaches the runners (ingress unchanged). The rules are read as a
NetworkPolicy implementation reads them (egress adds up over the policies that
select a pod; ipBlock except carves out of cidr)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from lmms_operator.reconcile import netpol
from lmms_operator.reconcile.job import RunnerDefaults

RUNNERS = {"app.kubernetes.io/managed-by": "lmms-operator"}
OWN = {"eval.lmms.dev/run": "u-1"}


def _egress_allows(policies: Sequence[Mapping[str, Any]], address: str, port: int) -> bool:
    """Whether a pod selected by ``policies`` may open ``address:port`` (TCP or UDP)."""
    limiting = [p for p in policies if "Egress" in p["spec"]["policyTypes"]]
    if not limiting:
        return True
    ip = ipaddress.ip_address(address)
    for policy in limiting:
        for rule in policy["spec"].get("egress") or []:
            ports = rule.get("ports")
            if ports and not any(p["port"] == port for p in ports):
                continue
            peers = rule.get("to")
            if not peers:
                return True
            for peer in peers:
                block = peer["ipBlock"]
                net = ipaddress.ip_network(block["cidr"])
                if ip.version != net.version or ip not in net:
                    continue
                if not any(ip in ipaddress.ip_network(e) for e in block.get("except", [])):
                    return True
    return False


def _policies() -> list[dict[str, Any]]:
    runner = RunnerDefaults(operator_namespace="lmms-system")
    ns = netpol.namespace_policy("team-a", runner, RUNNERS)
    rdzv = netpol.rendezvous_policy({"name": "r-rdzv", "namespace": "team-a"}, OWN, runner)
    assert ns is not None and rdzv is not None
    return [ns, rdzv]


@pytest.mark.parametrize(
    ("address", "port"),
    [
        ("169.254.169.254", 80),  # the metadata service (AWS, GCP, Azure, OCI)
        ("169.254.170.2", 80),  # ECS task metadata
        ("100.100.100.200", 80),  # Alibaba Cloud
        ("fd00:ec2::254", 80),  # AWS over IPv6
        ("fd20:ce::254", 80),  # Google Cloud over IPv6
        ("fd00:ec2::23", 80),  # AWS's EKS Pod Identity agent over IPv6
        ("fe80::1", 443),
    ],
)
def test_runners_do_not_reach_link_local_or_metadata(address: str, port: int) -> None:
    assert not _egress_allows(_policies(), address, port)


@pytest.mark.parametrize(
    ("address", "port"),
    [
        ("10.96.0.10", 53),  # the cluster's DNS
        ("169.254.20.10", 53),  # a node-local DNS cache
        ("10.244.1.7", 29500),  # a multi-node run's peer (rendezvous)
        ("10.0.0.5", 8000),  # a model server in the cluster
        ("93.184.215.14", 443),  # model downloads, object stores
        ("2606:4700::1111", 443),
    ],
)
def test_runners_reach_everything_else(address: str, port: int) -> None:
    assert _egress_allows(_policies(), address, port)


def test_the_operator_still_reaches_the_runners() -> None:
    ns, rdzv = _policies()
    (rule,) = ns["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert rule["from"][0]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "lmms-operator"}
    }
    assert ns["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # The rendezvous policy adds ingress between the run's pods, and no egress of its own.
    assert rdzv["spec"]["policyTypes"] == ["Ingress"]
    assert rdzv["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": OWN}}]}]


def test_no_policy_when_the_admin_turns_them_off() -> None:
    runner = RunnerDefaults(network_policy=False)
    assert netpol.namespace_policy("team-a", runner, RUNNERS) is None


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector's meaning (matchLabels and matchExpressions ANDed)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        present, value = e["key"] in labels, labels.get(e["key"])
        ok = {
            "In": present and value in e.get("values", []),
            "NotIn": not present or value not in e.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[e["operator"]]
        if not ok:
            return False
    return True


def _ingress_allows(
    policy: Mapping[str, Any],
    pod_ns: str,
    source_ns: Mapping[str, str],
    source_pod: Mapping[str, str],
    port: int,
) -> bool:
    """Whether a pod with ``source_pod`` labels in a namespace with ``source_ns`` labels may
    open ``port`` on a pod (in ``pod_ns``) that ``policy`` selects, as an implementation
    reads a peer: a namespaceSelector picks namespaces (absent: the policy's own), a
    podSelector pods in them (absent: all)."""
    for rule in policy["spec"]["ingress"]:
        if not any(p["port"] == port for p in rule.get("ports", [])):
            continue
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                in_ns = _selects(peer["namespaceSelector"], source_ns)
            else:
                in_ns = source_ns.get("kubernetes.io/metadata.name") == pod_ns
            if in_ns and _selects(peer.get("podSelector", {}), source_pod):
                return True
    return False


MONITORING = {"kubernetes.io/metadata.name": "monitoring"}
PROMETHEUS = {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"}
OPERATOR_NS = {"kubernetes.io/metadata.name": "lmms-system"}
OPERATOR = {"app.kubernetes.io/name": "lmms-operator"}


def test_unset_prometheus_selectors_keep_the_operator_only() -> None:
    runner = RunnerDefaults(operator_namespace="lmms-system")
    policy = netpol.namespace_policy("team-a", runner, RUNNERS)
    assert policy is not None
    assert netpol.prometheus_peer(runner) is None
    assert _ingress_allows(policy, "team-a", OPERATOR_NS, OPERATOR, 8080)
    assert not _ingress_allows(policy, "team-a", MONITORING, PROMETHEUS, 8080)


def test_the_configured_prometheus_reaches_the_runner_port_and_nothing_else_does() -> None:
    runner = RunnerDefaults(
        operator_namespace="lmms-system",
        prometheus=netpol.PrometheusScrapers(
            "kubernetes.io/metadata.name=monitoring", "app.kubernetes.io/name=prometheus"
        ),
    )
    policy = netpol.namespace_policy("team-a", runner, RUNNERS)
    assert policy is not None
    assert _ingress_allows(policy, "team-a", MONITORING, PROMETHEUS, 8080)
    assert _ingress_allows(policy, "team-a", OPERATOR_NS, OPERATOR, 8080)
    # Only the runner port, only those pods, only in that namespace.
    assert not _ingress_allows(policy, "team-a", MONITORING, PROMETHEUS, 9090)
    assert not _ingress_allows(policy, "team-a", MONITORING, {"app": "grafana"}, 8080)
    other = {"kubernetes.io/metadata.name": "team-b"}
    assert not _ingress_allows(policy, "team-a", other, PROMETHEUS, 8080)
    assert not _ingress_allows(
        policy, "team-a", {"kubernetes.io/metadata.name": "team-a"}, PROMETHEUS, 8080
    )


def test_a_prometheus_pod_selector_alone_admits_those_pods_in_every_namespace() -> None:
    runner = RunnerDefaults(
        prometheus=netpol.PrometheusScrapers(pod_selector="app.kubernetes.io/name in (prometheus)")
    )
    policy = netpol.namespace_policy("team-a", runner, RUNNERS)
    assert policy is not None
    for ns in (MONITORING, {"kubernetes.io/metadata.name": "elsewhere"}):
        assert _ingress_allows(policy, "team-a", ns, PROMETHEUS, 8080)
    assert not _ingress_allows(policy, "team-a", MONITORING, {"app": "x"}, 8080)


def test_a_namespace_selector_alone_admits_every_pod_there() -> None:
    runner = RunnerDefaults(
        prometheus=netpol.PrometheusScrapers(namespace_selector="team=observability,!restricted")
    )
    peer = netpol.prometheus_peer(runner)
    assert peer == {
        "namespaceSelector": {
            "matchLabels": {"team": "observability"},
            "matchExpressions": [{"key": "restricted", "operator": "DoesNotExist"}],
        },
        "podSelector": {},
    }
    policy = netpol.namespace_policy("team-a", runner, RUNNERS)
    assert policy is not None
    assert _ingress_allows(policy, "team-a", {"team": "observability"}, {"any": "pod"}, 8080)
    assert not _ingress_allows(
        policy, "team-a", {"team": "observability", "restricted": "yes"}, {"a": "b"}, 8080
    )


@pytest.mark.parametrize(
    ("text", "selector"),
    [
        ("a=b", {"matchLabels": {"a": "b"}}),
        (
            "a==b, c!=d",
            {
                "matchLabels": {"a": "b"},
                "matchExpressions": [{"key": "c", "operator": "NotIn", "values": ["d"]}],
            },
        ),
        (
            "x.io/k in (a, b),y notin (c)",
            {
                "matchExpressions": [
                    {"key": "x.io/k", "operator": "In", "values": ["a", "b"]},
                    {"key": "y", "operator": "NotIn", "values": ["c"]},
                ]
            },
        ),
        (
            "k,!j",
            {
                "matchExpressions": [
                    {"key": "k", "operator": "Exists"},
                    {"key": "j", "operator": "DoesNotExist"},
                ]
            },
        ),
        ("", {}),
    ],
)
def test_label_selectors_are_read_as_kubectl_reads_them(
    text: str, selector: dict[str, Any]
) -> None:
    assert netpol.label_selector(text, "X") == selector


@pytest.mark.parametrize("text", ["a=b=c", "a in b", "a in ()", "(a", "a,,b", "-bad=x", "a=b c"])
def test_a_bad_prometheus_selector_fails_at_start_naming_the_setting(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmms_operator.config import Settings

    monkeypatch.setenv("LMMS_PROMETHEUS_POD_SELECTOR", text)
    with pytest.raises(ValueError, match="LMMS_PROMETHEUS_POD_SELECTOR"):
        Settings.from_env().check()
