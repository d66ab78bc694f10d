"""The total deadline and the size cap of the object-store connector (netguard), beyond
the attacks of ``test_attacks_network``: over TLS, on a body that drips, on an error
answer, on a listing without a Content-Length; connections do not outlive a call."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from contextlib import suppress
from typing import Any

import pytest

from lmms_operator import netguard, objectstore
from lmms_operator.api import S3Output
from lmms_operator.errors import ObjectStoreError
from tests.unit.test_attacks_network import BOUND, _raw_server, _s3, _store
from tests.unit.test_netguard import LOOPBACK, _certificate, _Secrets

DEADLINE = 1.0


@pytest.fixture(autouse=True)
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objectstore, "READ_DEADLINE", DEADLINE)


def _drip(conn: Any, head: bytes, seconds: float = 4.0) -> None:
    conn.sendall(head)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        conn.sendall(b"a")
        time.sleep(0.3)


def test_a_tls_store_that_drips_its_headers_is_cut_at_the_deadline(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _certificate(tmp_path, "store.example")
    monkeypatch.setenv("AWS_CA_BUNDLE", cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    srv = socket.socket()  # not _raw_server: its first read would take the ClientHello
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve() -> None:
        with srv, suppress(OSError):
            conn, _ = srv.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(10)
                tls.recv(65536)
                _drip(tls, b"HTTP/1.1 200 OK\r\nX-Pad: ")

    threading.Thread(target=serve, daemon=True).start()
    store = objectstore.ObjectStore(
        objectstore.StorePolicy(allowed_cidrs=LOOPBACK),
        _Secrets(),
        resolver=lambda host, port: ["127.0.0.1"],
    )
    s3 = S3Output(
        bucket="evals",
        endpoint=f"https://store.example:{srv.getsockname()[1]}",
        credentials_secret="c",
    )
    start = time.monotonic()
    with pytest.raises(ObjectStoreError, match=r"^spec\.output\.s3: listing .*within 1 s"):
        store.list_keys("team-a", s3, "p/")
    assert time.monotonic() - start < BOUND


def test_a_body_that_drips_is_cut_at_the_deadline_and_not_taken_as_whole() -> None:
    def drip_body(conn: socket.socket) -> None:
        _drip(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}" + b" " * 10)

    with _raw_server(drip_body) as port:
        start = time.monotonic()
        with pytest.raises(ObjectStoreError, match=r"reading s3://evals/k\.json: .*within 1 s"):
            _store().get_json("team-a", _s3(port), "s3://evals/k.json")
    assert time.monotonic() - start < BOUND


def _answer(status: str, body_size: int, *, length: bool) -> Any:
    def handle(conn: socket.socket) -> None:
        head = f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n"
        head += f"Content-Length: {body_size}\r\n\r\n" if length else "Connection: close\r\n\r\n"
        conn.sendall(head.encode())
        left = body_size
        while left > 0:
            conn.sendall(b"<" * min(left, 65536))
            left -= 65536

    return handle


@pytest.mark.parametrize("length", [True, False], ids=["declared", "undeclared"])
def test_an_error_answer_larger_than_the_cap_is_refused(length: bool) -> None:
    # botocore reads the whole body of an error answer, even of a streaming GetObject.
    big = _answer("500 Internal Server Error", objectstore.MAX_OBJECT_BYTES + 65536, length=length)
    with (
        _raw_server(big) as port,
        pytest.raises(ObjectStoreError, match=r"at most \d+|larger than \d+ bytes"),
    ):
        _store().get_json("team-a", _s3(port), "s3://evals/k.json")


def test_a_listing_without_a_length_is_capped_as_it_is_read() -> None:
    big = _answer("200 OK", objectstore.MAX_OBJECT_BYTES + 65536, length=False)
    with _raw_server(big) as port, pytest.raises(ObjectStoreError, match=r"larger than \d+ bytes"):
        _store().list_keys("team-a", _s3(port), "p/")


def test_a_connection_does_not_outlive_its_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objectstore, "READ_DEADLINE", 10.0)  # a busy CI is not a hostile store
    closed = threading.Event()
    listing = (
        b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>evals</Name>'
        b"<IsTruncated>false</IsTruncated><Contents><Key>k</Key></Contents></ListBucketResult>"
    )

    def keep_alive(conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"
            + f"Content-Length: {len(listing)}\r\n\r\n".encode()
            + listing
        )
        if conn.recv(1) == b"":
            closed.set()

    with _raw_server(keep_alive) as port:
        assert _store().list_keys("team-a", _s3(port), "p/") == ["k"]
        assert closed.wait(10), "the operator kept the store's connection after the call"


def test_the_deadline_shuts_what_it_holds_and_refuses_new_connections() -> None:
    near, far = socket.socketpair()
    got: list[bytes] = []
    with near, far, netguard.Deadline(0.3) as deadline:
        deadline.hold(near)
        near.settimeout(30)
        reader = threading.Thread(target=lambda: got.append(near.recv(10)))
        start = time.monotonic()
        reader.start()
        reader.join(15)
        assert got == [b""] and time.monotonic() - start < 10
        assert deadline.expired
        late = socket.socket()
        with pytest.raises(netguard.Expired):
            deadline.hold(late)
        assert late.fileno() == -1
    with pytest.raises(netguard.Expired):
        deadline.check()


def test_a_call_within_the_deadline_is_not_bothered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objectstore, "READ_DEADLINE", 10.0)
    listing = b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>"

    def quick(conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\n" + f"Content-Length: {len(listing)}\r\n\r\n".encode() + listing
        )

    with _raw_server(quick) as port:
        assert _store().list_keys("team-a", _s3(port), "p/") == []
        assert _store().put_texts("team-a", _s3(port), "p/", {"a.json": "[]"}) == "s3://evals/p/"
