"""The endpoints a tenant writes (reconcile/endpoints.py): an object store's endpoint
is refused when it is not public, in every spelling of its address; a URL only the
runner contacts is refused when it points at link-local, metadata or unspecified
addresses. The properties run a fixed seed over generated spellings."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmms_operator.reconcile import endpoints as ep

FIELD = "spec.output.s3.endpoint"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
PROPERTY = settings(derandomize=True, max_examples=300, deadline=None)

#: IPv4 networks refused for object stores, with the category the message names.
REFUSED_V4 = {
    "127.0.0.0/8": "loopback",
    "169.254.0.0/16": "link-local",
    "0.0.0.0/8": "unspecified",
    "10.0.0.0/8": "private",
    "172.16.0.0/12": "private",
    "192.168.0.0/16": "private",
    "100.64.0.0/10": "private",
    "224.0.0.0/4": "multicast",
    "240.0.0.0/4": "reserved",
}


def _part(value: int, style: str, upper: bool, pad: int) -> str:
    """One part of an inet_aton spelling."""
    if style == "hex":
        digits = f"{value:x}".rjust(pad + 1, "0")
        return ("0X" if upper else "0x") + (digits.upper() if upper else digits)
    if style == "oct":
        return "0" + f"{value:o}".rjust(pad + 1, "0")
    return str(value)


@st.composite
def ipv4_spellings(draw: st.DrawFn, number: int) -> str:
    """A spelling of ``number`` that the C resolver reads as it: 1 to 4 parts, each
    decimal, octal or hex, the last one filling the bytes left."""
    count = draw(st.integers(1, 4))
    raw = number.to_bytes(4, "big")
    values = [*raw[: count - 1], int.from_bytes(raw[count - 1 :], "big")]
    parts = [
        _part(
            v,
            draw(st.sampled_from(["dec", "oct", "hex"])),
            draw(st.booleans()),
            draw(st.integers(0, 3)),
        )
        for v in values
    ]
    return ".".join(parts)


def _v6_spelling(address: ipaddress.IPv6Address, compress: bool, upper: bool, zeros: bool) -> str:
    groups = address.exploded.split(":")
    if not zeros:
        groups = [g.lstrip("0") or "0" for g in groups]
    text = ":".join(groups)
    if compress:
        text = address.compressed
    return text.upper() if upper else text


def v6_forms(v4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """IPv6 addresses that carry ``v4``: mapped, compatible, 6to4, NAT64."""
    n = int(v4)
    return [
        ipaddress.IPv6Address((0xFFFF << 32) | n),
        ipaddress.IPv6Address(n),
        ipaddress.IPv6Address((0x2002 << 112) | (n << 80)),
        ipaddress.IPv6Address((0x64FF9B << 96) | n),
    ]


def _in(network: str) -> st.SearchStrategy[int]:
    net = ipaddress.ip_network(network)
    return st.integers(int(net.network_address), int(net.broadcast_address))


refused_v4 = st.sampled_from(sorted(REFUSED_V4)).flatmap(
    lambda net: st.tuples(st.just(net), _in(net))
)


@PROPERTY
@given(st.integers(0, 2**32 - 1).flatmap(lambda n: st.tuples(st.just(n), ipv4_spellings(n))))
def test_ipv4_spellings_read_as_the_c_resolver_reads_them(case: tuple[int, str]) -> None:
    number, spelling = case
    assert ep.ipv4_number(spelling) == number
    assert int.from_bytes(socket.inet_aton(spelling), "big") == number


@PROPERTY
@given(st.text(alphabet="0123456789abcdefxX.", max_size=24))
def test_the_ipv4_reader_accepts_what_inet_aton_accepts(text: str) -> None:
    try:
        expected: int | None = int.from_bytes(socket.inet_aton(text), "big")
    except OSError:
        expected = None
    assert ep.ipv4_number(text) == expected


@PROPERTY
@given(refused_v4.flatmap(lambda c: st.tuples(st.just(c), ipv4_spellings(c[1]))))
def test_a_refused_ipv4_store_address_is_refused_in_every_spelling(
    case: tuple[tuple[str, int], str],
) -> None:
    (network, _), spelling = case
    for url in (f"http://{spelling}", f"https://{spelling}:9000/x", f"http://{spelling}."):
        problem = ep.check_store_endpoint(FIELD, url, ())
        assert problem is not None, url
        assert problem.field == FIELD
        assert REFUSED_V4[network] in problem.message, (url, problem.message)


@PROPERTY
@given(
    refused_v4,
    st.integers(0, 3),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_a_refused_ipv4_store_address_is_refused_in_every_ipv6_form(
    case: tuple[str, int], form: int, compress: bool, upper: bool, zeros: bool
) -> None:
    v4 = ipaddress.IPv4Address(case[1])
    v6 = v6_forms(v4)[form]
    url = f"http://[{_v6_spelling(v6, compress, upper, zeros)}]:80"
    problem = ep.check_store_endpoint(FIELD, url, ())
    assert problem is not None and problem.field == FIELD, url


@PROPERTY
@given(
    st.sampled_from(
        ["::1/128", "::/128", "fe80::/10", "fc00::/7", "ff00::/8", "fec0::/10"]
    ).flatmap(_in),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_a_refused_ipv6_store_address_is_refused_in_every_spelling(
    number: int, compress: bool, upper: bool, zeros: bool
) -> None:
    spelling = _v6_spelling(ipaddress.IPv6Address(number), compress, upper, zeros)
    assert ep.check_store_endpoint(FIELD, f"http://[{spelling}]", ()) is not None


@PROPERTY
@given(st.integers(0, 2**32 - 1).flatmap(lambda n: st.tuples(st.just(n), ipv4_spellings(n))))
def test_the_verdict_depends_on_the_address_never_on_its_spelling(case: tuple[int, str]) -> None:
    number, spelling = case
    canonical = str(ipaddress.IPv4Address(number))
    for allowed in ((), LOOPBACK):
        a = ep.check_store_endpoint(FIELD, f"http://{canonical}", allowed)
        b = ep.check_store_endpoint(FIELD, f"http://{spelling}", allowed)
        assert (a is None) == (b is None), (canonical, spelling)
    runner_a = ep.check_runner_url("f", f"http://{canonical}")
    runner_b = ep.check_runner_url("f", f"http://{spelling}")
    assert (runner_a is None) == (runner_b is None)


@PROPERTY
@given(
    _in("169.254.0.0/16").flatmap(lambda n: st.tuples(st.just(n), ipv4_spellings(n))),
    st.integers(0, 3),
)
def test_runner_urls_never_reach_link_local_in_any_spelling(
    case: tuple[int, str], form: int
) -> None:
    number, spelling = case
    assert ep.check_runner_url("f", f"http://{spelling}/v1") is not None
    v6 = v6_forms(ipaddress.IPv4Address(number))[form]
    assert ep.check_runner_url("f", f"http://[{v6}]/v1") is not None


def test_the_admin_allows_networks_and_nothing_else() -> None:
    for url in ("http://127.0.0.1:9000", "http://2130706433:9000", "http://[::ffff:127.0.0.1]"):
        assert ep.check_store_endpoint(FIELD, url, ()) is not None
        assert ep.check_store_endpoint(FIELD, url, LOOPBACK) is None, url
    for url in ("http://169.254.169.254", "http://10.0.0.1", "http://0.0.0.0", "http://[::]"):
        assert ep.check_store_endpoint(FIELD, url, LOOPBACK) is not None, url


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://store.example", "scheme"),
        ("http://user:pw@store.example", "user information"),
        ("http://store.example:0", "port"),
        ("http://store.example:65536", "port"),
        ("http://store.example:", "port"),
        ("http://store.example:8x", "port"),
        ("http://store.example/?x=1", "query"),
        ("http://store.example/#f", "query"),
        ("http://sto_re.example", "host name"),
        ("http://-store.example", "host name"),
        ("http://1.2.3.4.5", "host name"),
        ("http://08.1", "host name"),
        ("http://store.éxample", "ASCII"),
        ("http://[fe80::1%25eth0]", "zone"),
        ("http://[::1", "IPv6"),
        ("http://::1", "brackets"),
        ("store.example", "scheme"),
    ],
)
def test_store_endpoint_syntax(url: str, words: str) -> None:
    problem = ep.check_store_endpoint(FIELD, url, LOOPBACK)
    assert problem is not None and problem.field == FIELD
    assert words in problem.message


@pytest.mark.parametrize(
    "url",
    [
        "",
        "https://s3.eu-west-1.amazonaws.com",
        "http://minio.storage.svc.cluster.local:9000",
        "http://minio:9000/",
        "https://[2606:4700::1111]:443",
        "http://8.8.8.8",
    ],
)
def test_public_endpoints_and_names_pass(url: str) -> None:
    assert ep.check_store_endpoint(FIELD, url, ()) is None


@pytest.mark.parametrize("url", ["http://[3fff::1]", "http://[2001:db8::5]:9000"])
def test_documentation_ranges_are_not_public(url: str) -> None:
    problem = ep.check_store_endpoint(FIELD, url, ())
    assert problem is not None and "public" in problem.message


def test_runner_urls_keep_loopback_and_private_addresses() -> None:
    for url in ("http://localhost:8000/v1", "http://127.0.0.1:8000", "http://10.0.0.5/v1"):
        assert ep.check_runner_url("f", url) is None, url
    for url in (
        "http://169.254.169.254/latest/meta-data",
        "http://metadata.google.internal/computeMetadata/v1",
        "http://metadata/computeMetadata",
        "http://instance-data.ec2.internal",
        "http://[fd00:ec2::254]",
        "http://100.100.100.200",
        "http://0.0.0.0:8000",
        "http://[::]:8000",
    ):
        assert ep.check_runner_url("f", url) is not None, url


def test_runner_url_problems_find_urls_in_model_args() -> None:
    args = {
        "base_url": "169.254.169.254:80/v1",  # a URL-like key, no scheme
        "endpoint": "/v1/chat/completions",  # a path: no host
        "server_url": "http://ok.example;http://metadata/x",  # the second of two URLs
        "pretrained": "org/model",
        "max_new_tokens": 16,
        "note": "see http://0x7f.1 and 0251.0376.0251.0376",  # only the piece with ://
    }
    problems = ep.runner_url_problems("spec.model.args", args)
    assert [p.field for p in problems] == ["spec.model.args.base_url", "spec.model.args.server_url"]


def test_cidrs_are_parsed_or_refused_by_name() -> None:
    assert ep.parse_cidrs(["127.0.0.0/8", " ::1 "], "S") == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(ValueError, match=r"^S: 'x' is not a CIDR"):
        ep.parse_cidrs(["x"], "S")
