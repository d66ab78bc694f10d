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
