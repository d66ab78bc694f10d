"""What a cluster's DNS and kube-proxy give a pod for a Service, as far as the executor
can give it without either: ``<service>.<namespace>.svc`` (and ``.svc.cluster.local``,
``<service>.<namespace>``, ``<service>``) names the address of one ready endpoint of the
Service's EndpointSlices, in the pod's ``/etc/hosts``.

What this proves and what it does not: a pod reaches a Service by its DNS name at the
address of a ready pod behind it, as the EndpointSlice controller (the real one, in the
devcluster's kube-controller-manager) made them from the pods' readiness. There is no
virtual IP and no port translation: it works where the Service's ``port`` equals its
``targetPort``, and the name is fixed when the pod starts (one ready endpoint, the first
in order; no load balancing, no failover). Services of the pod's own namespace only, as
the short names of a cluster's search path would find them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("lmms.executor")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def entries(api: client.ApiClient, namespace: str) -> list[str]:
    """Hosts-file lines for the Services of ``namespace`` with a ready endpoint."""
    try:
        slices = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(namespace).items
    except (ApiException, OSError) as exc:  # no names is what a pod gets without DNS
        log.warning("EndpointSlices of %s not read: %s", namespace, exc)
        return []
    ready: dict[str, str] = {}
    for eps in sorted(slices, key=lambda s: s.metadata.name):
        service = (eps.metadata.labels or {}).get(SERVICE_NAME_LABEL)
        if not service or service in ready or eps.address_type != "IPv4":
            continue
        for endpoint in eps.endpoints or []:
            conditions = endpoint.conditions
            if endpoint.addresses and (conditions is None or conditions.ready is not False):
                ready[service] = endpoint.addresses[0]
                break
    return [
        f"{ip}\t{name}.{namespace}.svc.cluster.local\t{name}.{namespace}.svc\t{name}.{namespace}"
        f"\t{name}"
        for name, ip in sorted(ready.items())
    ]


def hosts_file(
    api: client.ApiClient, namespace: str, directory: Path, base: Path | None, pod: str, ip: str
) -> Path | None:
    """The pod's /etc/hosts with its namespace's Services named (``base``: the hosts file
    it would get otherwise; None: the node's own); ``base`` itself when there are none."""
    lines = entries(api, namespace)
    if not lines:
        return base
    if base is not None:
        head = base.read_text()
    else:
        try:
            head = Path("/etc/hosts").read_text()
        except OSError:
            head = "127.0.0.1\tlocalhost\n"
        head += f"{ip}\t{pod}\n"
    path = directory / "hosts-services"
    path.write_text(head.rstrip("\n") + "\n" + "\n".join(lines) + "\n")
    path.chmod(0o644)
    return path
