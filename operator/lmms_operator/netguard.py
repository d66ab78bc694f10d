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
- uses no proxy from the environment and follows no redirect;
- holds every call to one total deadline (``Deadline``: connect, send, headers, body and
  retries; a store that drips one byte at a time resets any read timeout, so when the
  deadline passes the call's connections are shut down, which ends a blocked read at
  once, and no new one is made), and caps the size of every answer it reads for botocore
  (listings, error bodies, PutObject answers): a tenant's store cannot hold an operator
  thread or take the operator's memory.

Only the S3 clients made by ``objectstore`` use it (``guard_client`` swaps the client's
HTTP session); the Kubernetes client and boto3's own credential lookups are untouched.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from urllib3 import Timeout
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


class Expired(Exception):
    """The call's total deadline passed. (Not an OSError, like ``Refused``: botocore does
    not retry it.)"""


class TooLarge(Exception):
    """An answer of the store larger than the cap; the message says how large."""


#: How much of an answer is read at a time.
_CHUNK = 64 * 1024


class Deadline:
    """One call's total time. Use it as ``with Deadline(seconds):``; a timer then shuts
    down (SHUT_RDWR) the connections made through it when ``seconds`` have passed, which
    ends a read or a write blocked on them at once (plain and TLS alike: a duplicate of
    each socket is held, so the shutdown reaches the connection whatever object wraps
    it), and from then on it refuses new ones. Leaving the block closes the duplicates."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._held: list[socket.socket] = []
        self._over = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._over = True
            held, self._held = self._held, []
            for sock in held:
                sock.close()

    @property
    def expired(self) -> bool:
        return self._over or time.monotonic() >= self._end

    def left(self) -> float:
        """Seconds left (0 when it has passed)."""
        return max(0.0, self._end - time.monotonic())

    def check(self) -> None:
        """``Expired`` once the deadline has passed."""
        if self.expired:
            raise Expired(f"no complete answer within {self.seconds:g} s")

    def hold(self, sock: socket.socket) -> None:
        """Counts ``sock`` among the call's connections; closes it and raises ``Expired``
        when the deadline has passed."""
        with self._lock:
            if not self.expired:
                self._held.append(sock.dup())
                return
        sock.close()
        raise Expired(f"no complete answer within {self.seconds:g} s")

    def _expire(self) -> None:
        # Under the lock, so that no duplicate is closed (and its descriptor reused)
        # between the check and the shutdown.
        with self._lock:
            self._over = True
            for sock in self._held:
                with contextlib.suppress(OSError):  # closed by the peer already
                    sock.shutdown(socket.SHUT_RDWR)


def read_capped(raw: Any, limit: int, deadline: Deadline) -> bytes:
    """The whole body of ``raw`` (urllib3's response), refused (``TooLarge``) past
    ``limit`` bytes, whatever the Content-Length says or does not say; ``Expired`` when
    the deadline cut it short (botocore does not enforce Content-Length)."""
    declared = str(raw.headers.get("Content-Length") or "")
    try:
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"the store's answer is {declared} bytes; at most {limit}")
        chunks: list[bytes] = []
        size = 0
        for chunk in raw.stream(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"the store's answer is larger than {limit} bytes")
            chunks.append(chunk)
    except BaseException:
        raw.close()  # not back to the pool, half read
        raise
    deadline.check()
    return b"".join(chunks)


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

    def connect(self, conn: Any, deadline: Deadline | None = None) -> socket.socket:
        """urllib3's ``HTTPConnection._new_conn``, to the address ``pick`` checked, within
        what is left of ``deadline`` (which then holds the connection)."""
        host, port = conn._dns_host, conn.port
        timeout = conn.timeout
        if deadline is not None:
            deadline.check()
            left = max(deadline.left(), 0.01)
            timeout = min(timeout, left) if isinstance(timeout, (int, float)) else left
        address = self.pick(host, port)
        try:
            sock = connection.create_connection(
                (address, port),
                timeout,
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
        if deadline is not None:
            deadline.hold(sock)
        sys.audit("http.client.connect", conn, conn.host, port)
        return sock


def _pool_classes(guard: Guard, deadline: Deadline) -> dict[str, type]:
    """botocore's connection pools, whose connections connect through ``guard``."""
    from botocore.awsrequest import (
        AWSHTTPConnection,
        AWSHTTPConnectionPool,
        AWSHTTPSConnection,
        AWSHTTPSConnectionPool,
    )

    def new_conn(conn: Any) -> socket.socket:
        return guard.connect(conn, deadline)

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


@functools.cache
def _session_class() -> type:
    """botocore's HTTP session, within a call's deadline and with its answers capped."""
    from botocore.httpsession import URLLib3Session

    class GuardedSession(URLLib3Session):  # type: ignore[misc]
        deadline: Deadline
        max_body: int

        def _get_request_timeout(self, request: Any) -> Timeout:
            # Each attempt's timeouts, never beyond what is left of the call's deadline.
            left = max(self.deadline.left(), 0.01)
            default: Timeout = self._timeout
            connect, read = default.connect_timeout, default.read_timeout
            return Timeout(
                connect=min(connect, left) if isinstance(connect, (int, float)) else left,
                read=min(read, left) if isinstance(read, (int, float)) else left,
            )

        def send(self, request: Any) -> Any:
            self.deadline.check()
            streaming = request.stream_output
            request.stream_output = True  # the body is read here, capped
            try:
                response = super().send(request)
                if not streaming or response.status_code >= 300:
                    response._content = read_capped(response.raw, self.max_body, self.deadline)
            except (Expired, TooLarge):
                raise
            except Exception:
                # A connection the deadline shut: not to be retried.
                self.deadline.check()
                raise
            finally:
                request.stream_output = streaming
            return response

    return GuardedSession


def guard_client(client: Any, guard: Guard, deadline: Deadline, max_body: int) -> None:
    """Makes every connection of a botocore client go through ``guard``, with no proxy,
    within ``deadline``, reading no answer (but a successful streaming one, which the
    caller reads) larger than ``max_body`` bytes: its HTTP session is replaced by one
    whose pools connect through the guard (the same timeouts, pool size and certificate
    checks)."""
    endpoint = client._endpoint
    old = endpoint.http_session
    config = client.meta.config
    session = _session_class()(
        verify=getattr(old, "_verify", True),
        proxies={},  # not the environment's HTTP(S)_PROXY
        timeout=(config.connect_timeout, config.read_timeout),
        max_pool_connections=config.max_pool_connections,
    )
    session.deadline, session.max_body = deadline, max_body
    pools = _pool_classes(guard, deadline)
    # As URLLib3Session.__init__ does with its own pool classes.
    session._pool_classes_by_scheme = pools
    session._manager.pool_classes_by_scheme = pools
    endpoint.http_session = session
    old.close()


def close_client(client: Any) -> None:
    """Closes the connections of a client (made for one call), so that none outlives it."""
    client._endpoint.http_session.close()


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
