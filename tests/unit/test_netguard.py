"""The operator's object-store connector (netguard) against real HTTP servers on
loopback: it refuses loopback unless the admin lists it, refuses a name that resolves
there, connects to the address it checked (not to a second answer of the DNS), keeps
the URL's host name in the Host header, and ignores proxies from the environment."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import urllib3

from lmms_operator import netguard
from lmms_operator.api import S3Output
from lmms_operator.errors import ObjectStoreError
from lmms_operator.k8s import Api
from lmms_operator.objectstore import ObjectStore, StorePolicy

SECRET = "s3cr3t-value-never-shown"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
LISTING = (
    b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>evals</Name>'
    b"<Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
    b"<IsTruncated>false</IsTruncated><Contents><Key>k.json</Key><Size>2</Size></Contents>"
    b"</ListBucketResult>"
)


class _Secrets(Api):
    """The run's credentials Secret, without an API server."""

    def read_tenant_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return {"AWS_ACCESS_KEY_ID": b"AKIATESTTESTTEST", "AWS_SECRET_ACCESS_KEY": SECRET.encode()}


class _Server(ThreadingHTTPServer):
    seen: list[tuple[str, str]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append((self.path, str(self.headers.get("Host"))))
        if self.path.startswith("/moved"):
            port = self.server.server_address[1]
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.2:{port}/evals?list-type=2")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(LISTING)))
        self.end_headers()
        self.wfile.write(LISTING)

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def _server(host: str, port: int = 0) -> Iterator[_Server]:
    server = _Server((host, port), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _store(
    allowed: tuple[Any, ...] = (), resolver: Callable[[str, int], Sequence[str]] | None = None
) -> ObjectStore:
    return ObjectStore(StorePolicy(allowed_cidrs=allowed), _Secrets(), resolver=resolver)


def _s3(endpoint: str) -> S3Output:
    return S3Output(bucket="evals", endpoint=endpoint, credentials_secret="creds")


def _port(server: _Server) -> int:
    return int(server.server_address[1])


def test_loopback_is_refused_by_default_and_allowed_when_listed() -> None:
    with _server("127.0.0.1") as server:
        s3 = _s3(f"http://127.0.0.1:{_port(server)}")
        with pytest.raises(ObjectStoreError, match=r"^spec\.output\.s3\.endpoint: .*loopback"):
            _store().list_keys("team-a", s3, "")
        assert server.seen == []
        assert _store(LOOPBACK).list_keys("team-a", s3, "") == ["k.json"]
        assert len(server.seen) == 1


def test_a_name_that_resolves_to_loopback_is_refused() -> None:
    with _server("127.0.0.1") as server:
        s3 = _s3(f"http://store.example:{_port(server)}")
        store = _store(resolver=lambda host, port: ["127.0.0.1"])
        with pytest.raises(ObjectStoreError) as caught:
            store.list_keys("team-a", s3, "")
        message = str(caught.value)
        assert message.startswith("spec.output.s3.endpoint: 'store.example' resolves to 127.0.0.1")
        assert SECRET not in message
        assert server.seen == []
        # A name resolving to a public and a loopback address is refused too.
        mixed = _store(resolver=lambda host, port: ["93.184.215.14", "127.0.0.1"])
        with pytest.raises(ObjectStoreError, match="loopback"):
            mixed.list_keys("team-a", s3, "", field="spec.storage.s3")
        assert server.seen == []


def test_it_connects_to_the_address_it_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the guard resolves store.example to 127.0.0.1 (allowed); any
    other lookup of the name answers 127.0.0.2. The request reaches 127.0.0.1 with the
    URL's host name; a lookup that changes its answer is checked again."""
    with _server("127.0.0.1") as good, _server("127.0.0.2", _port(good)) as other:
        port = _port(good)
        system = socket.getaddrinfo

        def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
            return system("127.0.0.2" if host == "store.example" else host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", rebinding)
        lookups: list[str] = []

        def resolver(host: str, port: int) -> Sequence[str]:
            lookups.append(host)
            return ["127.0.0.1"] if len(lookups) == 1 else ["169.254.169.254"]

        store = _store(LOOPBACK, resolver)
        s3 = _s3(f"http://store.example:{port}")
        assert store.list_keys("team-a", s3, "") == ["k.json"]
        assert [host for _, host in good.seen] == [f"store.example:{port}"]
        assert other.seen == [] and lookups == ["store.example"]
        # The next connection resolves again and is refused: the answer changed.
        with pytest.raises(ObjectStoreError, match=r"169\.254\.169\.254 is a link-local"):
            store.list_keys("team-a", s3, "")
        assert len(good.seen) == 1 and other.seen == []
        # Other HTTP clients (the Kubernetes client's urllib3) are not pinned.
        urllib3.PoolManager().request("GET", f"http://store.example:{port}/", retries=False)
        assert len(other.seen) == 1


def test_redirects_are_not_followed() -> None:
    with _server("127.0.0.1") as good, _server("127.0.0.2", _port(good)) as other:
        s3 = S3Output(
            bucket="moved", endpoint=f"http://127.0.0.1:{_port(good)}", credentials_secret="c"
        )
        with pytest.raises(ObjectStoreError, match=r"^spec\.output\.s3: listing s3://moved/"):
            _store(LOOPBACK).list_keys("team-a", s3, "")
        assert good.seen and other.seen == []


def test_proxies_from_the_environment_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    with _server("127.0.0.1") as server, _server("127.0.0.1") as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{_port(proxy)}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        s3 = _s3(f"http://127.0.0.1:{_port(server)}")
        assert _store(LOOPBACK).list_keys("team-a", s3, "") == ["k.json"]
        assert len(server.seen) == 1 and proxy.seen == []


def test_a_client_that_cannot_be_made_is_an_object_store_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever boto3 raises while making the client ends as an ObjectStoreError that
    names the field and holds no credential."""
    import boto3

    def refuse(*_: Any, **kwargs: Any) -> Any:
        raise ValueError(f"Invalid endpoint: {kwargs.get('aws_secret_access_key')}")

    monkeypatch.setattr(boto3, "client", refuse)
    with pytest.raises(ObjectStoreError) as caught:
        _store().put_texts(
            "team-a", _s3("http://store.example"), "p/", {"a.json": "{}"}, field="spec.storage.s3"
        )
    assert str(caught.value).startswith("spec.storage.s3: no client for the store: ValueError")
    assert SECRET not in str(caught.value)


def test_an_unreachable_store_is_an_object_store_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])  # nothing listens there once closed
    with pytest.raises(ObjectStoreError, match=r"^spec\.output\.s3: listing s3://evals/"):
        _store(LOOPBACK).list_keys("team-a", _s3(f"http://127.0.0.1:{port}"), "")


def test_the_guard_refuses_what_does_not_resolve() -> None:
    def nothing(host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(netguard.Refused, match="does not resolve"):
        netguard.Guard(resolver=nothing).pick("store.example", 80)
    with pytest.raises(netguard.Refused, match="no address"):
        netguard.Guard(resolver=lambda h, p: []).pick("store.example", 80)
    assert netguard.Guard(resolver=lambda h, p: ["93.184.215.14"]).pick("s.example", 80) == (
        "93.184.215.14"
    )


def _certificate(directory: Any, name: str) -> tuple[str, str]:
    """A self-signed certificate for ``name``: (cert file, key file)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


def test_tls_checks_the_urls_host_name_not_the_address(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connected to the pinned address, TLS still sends the URL's name (SNI) and checks
    the certificate against it."""
    cert, key = _certificate(tmp_path, "store.example")
    monkeypatch.setenv("AWS_CA_BUNDLE", cert)
    with _server("127.0.0.1") as server:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        names: list[str | None] = []

        def sni(sock: Any, name: str | None, ctx: Any) -> None:
            names.append(name)

        context.sni_callback = sni
        server.socket = context.wrap_socket(server.socket, server_side=True)
        store = _store(LOOPBACK, resolver=lambda host, port: ["127.0.0.1"])
        right = _s3(f"https://store.example:{_port(server)}")
        assert store.list_keys("team-a", right, "") == ["k.json"]
        assert names[-1] == "store.example"
        wrong = _s3(f"https://other.example:{_port(server)}")
        with pytest.raises(ObjectStoreError, match=r"SSL validation failed.*other\.example"):
            store.list_keys("team-a", wrong, "")
        assert len(server.seen) == 1
