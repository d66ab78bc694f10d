"""Attacks by a tenant on the operator's object-store connector (what SHOULD happen).

A tenant names the store (``spec.output.s3.endpoint``, ``spec.storage.s3.endpoint``) and
so controls the server the operator talks to. The server here stands on loopback (the
admin "lists" 127.0.0.0/8 only so that the test can reach it; in a cluster it is any
public host the tenant runs). Each test is fast when the operator bounds what the store
can do, and fails (after a few seconds) while it does not.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import pytest

from lmms_operator import objectstore
from lmms_operator.api import S3Output
from lmms_operator.errors import ObjectStoreError
from lmms_operator.k8s import Api
from lmms_operator.objectstore import ObjectStore, StorePolicy

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
#: How long the hostile store keeps one request going, one header line at a time.
DRIP_SECONDS = 30.0
DRIP_EVERY = 0.5
#: The total a call may take in these tests: the read deadline (set to 1 s) and slack
#: for a busy machine, well short of the store's 30 s drip (what would hold it without one).
BOUND = 10.0


class _Secrets(Api):
    def read_tenant_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return {"AWS_ACCESS_KEY_ID": b"AKIATESTTESTTEST", "AWS_SECRET_ACCESS_KEY": b"s3cr3t-s3cr3t"}


@contextmanager
def _raw_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on loopback that answers every connection with ``handle``."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=_guarded, args=(handle, conn), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        srv.close()


def _guarded(handle: Callable[[socket.socket], None], conn: socket.socket) -> None:
    try:
        conn.settimeout(10)
        conn.recv(65536)
        handle(conn)
    except OSError:
        pass
    finally:
        conn.close()


def _drip_headers(conn: socket.socket) -> None:
    """A 200 whose header lines come one every DRIP_EVERY s: each receive gets something
    well within the client's 5 s read timeout, so only a total deadline ends it."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n")
    end = time.monotonic() + DRIP_SECONDS
    while time.monotonic() < end:
        conn.sendall(b"X-Pad: a\r\n")
        time.sleep(DRIP_EVERY)


def _store() -> ObjectStore:
    return ObjectStore(StorePolicy(allowed_cidrs=LOOPBACK), _Secrets())


def _s3(port: int) -> S3Output:
    return S3Output(bucket="evals", endpoint=f"http://127.0.0.1:{port}", credentials_secret="c")


def _timed(call: Callable[[], object]) -> float:
    start = time.monotonic()
    with suppress(ObjectStoreError):
        call()
    return time.monotonic() - start


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objectstore, "READ_DEADLINE", 1.0)


@pytest.mark.usefixtures("short_deadline")
def test_a_store_that_drips_its_headers_cannot_hold_get_json_past_the_deadline() -> None:
    # The deadline covers only the body: the answer's headers may take for ever.
    with _raw_server(_drip_headers) as port:
        elapsed = _timed(lambda: _store().get_json("team-a", _s3(port), "s3://evals/k.json"))
    assert elapsed < BOUND, f"get_json held the operator's thread {elapsed:.1f} s"


@pytest.mark.usefixtures("short_deadline")
def test_a_store_that_drips_cannot_hold_list_keys_for_ever() -> None:
    # evaluation_index calls list_keys in an admission pass (one of LMMS_WORKERS threads
    # shared by every tenant): list_keys has no total deadline at all.
    with _raw_server(_drip_headers) as port:
        elapsed = _timed(lambda: _store().list_keys("team-a", _s3(port), "p/"))
    assert elapsed < BOUND, f"list_keys held the operator's thread {elapsed:.1f} s"


@pytest.mark.usefixtures("short_deadline")
def test_a_store_that_drips_cannot_hold_a_leaderboard_copy_for_ever() -> None:
    # Applier._store (Leaderboard storage.s3) calls put_texts under the board's lock, on
    # the two "leaderboards" threads (rerender) or in a run's pass (publish).
    with _raw_server(_drip_headers) as port:
        s3 = _s3(port)
        elapsed = _timed(
            lambda: _store().put_texts(
                "team-a", s3, "p/", {"table.json": "[]"}, field=objectstore.BOARD_FIELD
            )
        )
    assert elapsed < BOUND, f"put_texts held the operator's thread {elapsed:.1f} s"


def test_a_listing_larger_than_the_cap_is_refused() -> None:
    # get_json caps what it reads (MAX_OBJECT_BYTES); list_keys reads and parses whatever
    # the store sends: a store that answers a listing with gigabytes takes the operator's
    # memory (one process for every tenant).
    size = objectstore.MAX_OBJECT_BYTES + 4 * 1024 * 1024
    head = b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>evals</Name>'
    tail = b"<IsTruncated>false</IsTruncated></ListBucketResult>"
    pad = size - len(head) - len(tail)

    def big_listing(conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode()
            + head
        )
        chunk = b" " * 65536
        left = pad
        while left > 0:
            conn.sendall(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        conn.sendall(tail)

    with _raw_server(big_listing) as port, pytest.raises(ObjectStoreError, match=r"larger|bytes"):
        _store().list_keys("team-a", _s3(port), "p/")
