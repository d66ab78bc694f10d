"""The one connector for the addresses a tenant names: the operator's object-store calls.

The operator reaches a tenant's object store from its own place in the network, where
the cloud's metadata service, the API server and the cluster's private services are
in reach. So that a tenant cannot lend that position, every TCP connection of the
operator's S3 clients goes through ``Guard``, which

- resolves the host name once per connection attempt, and refuses the connection when
  any address it resolves to is not public (``reconcile.endpoints.store_refusal``:
  loopback, link-local and metadata, unspecified, private, shared, multicast,
  reserved, and IPv6 forms that carry such an IPv4 address), unless the admin lists
  it (``LMMS_OBJECT_STORE_ALLOWED_CIDRS``). The categories apply to resolved addresses,
  so the spelling of the URL does not matter;
- connects to the address it checked, so a second answer of the DNS (rebinding) cannot
  redirect it; the Host header, TLS SNI and the certificate check keep the URL's name;
- uses no proxy from the environment and follows no redirect.

Only the S3 clients made by ``objectstore`` use it (``guard_client`` swaps the client's
HTTP session); the Kubernetes client and boto3's own credential lookups are untouched.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection

from .reconcile.endpoints import Network, store_refusal

#: (host, port) -> the addresses it resolves to, as strings.
Resolver = Callable[[str, int], Sequence[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """The C resolver's answer (getaddrinfo: it reads IPv4 literals as inet_aton does)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Refused(Exception):
    """A connection the guard did not make; the message names the host and the reason.
    (Not an OSError: the HTTP libraries pass it up as it is, never as a transient
    connection failure.)"""


@dataclass(frozen=True)
class Guard:
    """The networks the admin allows beyond public addresses, and the resolver (the
    system's; tests inject one)."""

    allowed: tuple[Network, ...] = ()
    resolver: Resolver = field(default=system_resolver)

    def pick(self, host: str, port: int) -> str:
        """The address to connect to for ``host``: resolved once; every address it
        resolves to must be allowed, else ``Refused``."""
        try:
            answers = list(self.resolver(host, port))
        except OSError as exc:
            raise Refused(f"{host!r} does not resolve: {exc}") from None
        if not answers:
            raise Refused(f"{host!r} resolves to no address")
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer.partition("%")[0])
            except ValueError:
                raise Refused(f"{host!r} resolves to {answer!r}, not an address") from None
            refusal = store_refusal(address, self.allowed)
            if refusal is not None:
                raise Refused(
                    f"{host!r} resolves to {refusal}: the operator connects only to public "
                    "addresses, and to the networks the admin lists "
                    "(LMMS_OBJECT_STORE_ALLOWED_CIDRS)"
                )
        return answers[0]

    def connect(self, conn: Any) -> socket.socket:
        """urllib3's ``HTTPConnection._new_conn``, to the address ``pick`` checked."""
        host, port = conn._dns_host, conn.port
        address = self.pick(host, port)
        try:
            sock = connection.create_connection(
                (address, port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except socket.gaierror as exc:
            raise NameResolutionError(conn.host, conn, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc
        sys.audit("http.client.connect", conn, conn.host, port)
        return sock


def _pool_classes(guard: Guard) -> dict[str, type]:
    """botocore's connection pools, whose connections connect through ``guard``."""
    from botocore.awsrequest import (
        AWSHTTPConnection,
        AWSHTTPConnectionPool,
        AWSHTTPSConnection,
        AWSHTTPSConnectionPool,
    )

    def new_conn(conn: Any) -> socket.socket:
        return guard.connect(conn)

    http = type("GuardedHTTPConnection", (AWSHTTPConnection,), {"_new_conn": new_conn})
    https = type("GuardedHTTPSConnection", (AWSHTTPSConnection,), {"_new_conn": new_conn})
    return {
        "http": type(
            "GuardedHTTPConnectionPool", (AWSHTTPConnectionPool,), {"ConnectionCls": http}
        ),
        "https": type(
            "GuardedHTTPSConnectionPool", (AWSHTTPSConnectionPool,), {"ConnectionCls": https}
        ),
    }


def guard_client(client: Any, guard: Guard) -> None:
    """Makes every connection of a botocore client go through ``guard``, with no proxy:
    its HTTP session is replaced by one whose pools connect through the guard (the same
    timeouts, pool size and certificate checks)."""
    from botocore.httpsession import URLLib3Session

    endpoint = client._endpoint
    old = endpoint.http_session
    config = client.meta.config
    session = URLLib3Session(
        verify=getattr(old, "_verify", True),
        proxies={},  # not the environment's HTTP(S)_PROXY
        timeout=(config.connect_timeout, config.read_timeout),
        max_pool_connections=config.max_pool_connections,
    )
    pools = _pool_classes(guard)
    # As URLLib3Session.__init__ does with its own pool classes.
    session._pool_classes_by_scheme = pools
    session._manager.pool_classes_by_scheme = pools
    endpoint.http_session = session
    old.close()


def refusal_in(exc: BaseException) -> Refused | None:
    """The guard's refusal behind an error of the HTTP or AWS libraries, if it is one
    (botocore keeps the cause in ``kwargs['error']``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen or len(seen) > 20:
            continue
        seen.add(id(item))
        if isinstance(item, Refused):
            return item
        kwargs = getattr(item, "kwargs", None)
        error = kwargs.get("error") if isinstance(kwargs, dict) else None
        todo += [item.__cause__, item.__context__]
        if isinstance(error, BaseException):
            todo.append(error)
    return None
