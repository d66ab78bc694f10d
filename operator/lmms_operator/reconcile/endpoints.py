"""Where a URL a tenant wrote may point. Pure: nothing is resolved or contacted here.

Two kinds of URL, two rules:

- **Object-store endpoints** (EvalRun ``spec.output.s3.endpoint``, Leaderboard
  ``spec.storage.s3.endpoint``) are contacted by the operator itself, from its own place
  in the network. Only public addresses are allowed, by category (``ipaddress``): an
  address that is loopback, link-local, unspecified, private, shared (CGNAT),
  multicast, reserved or otherwise special-purpose is refused, unless it is in the
  CIDRs the admin lists (``LMMS_OBJECT_STORE_ALLOWED_CIDRS``). IPv4 literals are read
  as the C resolver reads them (``inet_aton``: ``2130706433``, ``0177.0.0.1``,
  ``0x7f.1``, ``127.1``), and IPv6 addresses that embed an IPv4 one (mapped,
  compatible, 6to4, NAT64) are judged by both. Host names are checked for syntax only;
  the connector (``lmms_operator.netguard``) applies the same categories to the
  addresses a name resolves to, when it connects.
- **URLs only the runner contacts** (a model's ``base_url``, judge endpoints): the
  runner pod's own network, so loopback and private addresses stay allowed; link-local
  and metadata addresses and names, and unspecified addresses, are refused.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import Problem

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
#: IPv6 documentation ranges this Python's tables may call global (RFC 3849, RFC 9637).
_DOCUMENTATION = (ipaddress.IPv6Network("2001:db8::/32"), ipaddress.IPv6Network("3fff::/20"))
#: Cloud metadata services outside the link-local ranges: AWS over IPv6 (and its EKS Pod
#: Identity agent), Google Cloud over IPv6, Scaleway over IPv6, Alibaba Cloud.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("fd00:ec2::254", "fd00:ec2::23", "fd20:ce::254", "fd00:42::42", "100.100.100.200")
)
#: First labels of the metadata services' host names (``metadata``,
#: ``metadata.google.internal``, ``instance-data``, ``instance-data.ec2.internal``).
METADATA_LABELS = frozenset({"metadata", "instance-data"})
#: Schemes of an object store's endpoint.
STORE_SCHEMES = ("http", "https")


def ipv4_number(text: str) -> int | None:
    """The IPv4 address ``text`` spells as the C library's ``inet_aton`` reads it (one to
    four dot-separated parts, each decimal, octal with a leading 0 or hex with 0x; the
    last part fills the bytes left), or None when it is no IPv4 address."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if part[:2].lower() == "0x":
            digits, base, allowed = part[2:], 16, "0123456789abcdefABCDEF"
        elif len(part) > 1 and part.startswith("0"):
            digits, base, allowed = part[1:], 8, "01234567"
        else:
            digits, base, allowed = part, 10, "0123456789"
        if not digits or any(c not in allowed for c in digits) or len(digits) > 12:
            return None
        values.append(int(digits, base))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return number


def embedded(address: Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, 6to4, NAT64,
    Teredo): a connection to it may end at them."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found += list(address.teredo)
    value = int(address)
    if address in _NAT64 or (value >> 32 == 0 and value > 1):  # NAT64, IPv4-compatible
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return found


def _category(address: Address) -> str | None:
    """Why one address is not a public one (None: it is)."""
    if address.is_unspecified or address in _THIS_NETWORK:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local or address in METADATA_ADDRESSES:
        return "a link-local or metadata address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private or address in _SHARED:
        return "a private address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a private address"
    if not address.is_global or any(address in net for net in _DOCUMENTATION):
        return "a special-purpose address"
    return None


def listed(address: Address, allowed: Iterable[Network]) -> bool:
    """Whether the admin allows the address (an IPv4-mapped address by its IPv4 form)."""
    forms: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        forms.append(address.ipv4_mapped)
    return any(a.version == n.version and a in n for a in forms for n in allowed)


def store_refusal(address: Address, allowed: Iterable[Network] = ()) -> str | None:
    """Why the operator may not connect to ``address`` for a tenant (None: it may): it
    and every IPv4 address it embeds must be public, unless the admin lists it."""
    allowed = tuple(allowed)
    if listed(address, allowed):
        return None
    for form in (*embedded(address), address):
        category = _category(form)
        if category is not None:
            shown = str(address) if form == address else f"{address} (which carries {form})"
            return f"{shown} is {category}"
    return None


def runner_refusal(address: Address) -> str | None:
    """Why a runner may not be pointed at ``address`` (None: it may): link-local and
    metadata addresses and unspecified ones, in whatever IPv6 form carries them."""
    for form in (*embedded(address), address):
        category = _category(form)
        if category in ("an unspecified address", "a link-local or metadata address"):
            shown = str(address) if form == address else f"{address} (which carries {form})"
            return f"{shown} is {category}"
    return None


def parse_cidrs(items: Iterable[str], setting: str) -> tuple[Network, ...]:
    """The admin's list of CIDRs; a ValueError naming ``setting`` for a bad one."""
    networks: list[Network] = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{setting}: {item!r} is not a CIDR ({exc})") from None
    return tuple(networks)


def _split_authority(url: str) -> tuple[str, str, str, str]:
    """(scheme, authority, rest, host) of an absolute URL; ValueError when it is none."""
    scheme, sep, after = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        raise ValueError("expected scheme://host[:port][/path]")
    end = min((i for i in (after.find(c) for c in "/?#") if i >= 0), default=len(after))
    authority, rest = after[:end], after[end:]
    if "@" in authority:
        raise ValueError("user information (user:password@) is not allowed in the URL")
    if authority.startswith("["):
        host, bracket, port = authority[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError("an IPv6 address must be written [address][:port]")
        port = port[1:] if port else ""
        host = "[" + host + "]"
    else:
        host, _, port = authority.partition(":")
        if ":" in port:
            raise ValueError("an IPv6 address must be written in brackets")
    valid = port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535
    if (port or authority.endswith(":")) and not valid:
        raise ValueError(f"the port must be a number from 1 to 65535, not {port!r}")
    return scheme.lower(), authority, rest, host


def parse_host(host: str) -> Address | str:
    """The address an IP literal host spells (any spelling the C resolver reads), or the
    host name, lower-cased; ValueError when it is neither a valid name nor an address."""
    if host.startswith("["):
        inner = host[1:-1]
        if "%" in inner:
            raise ValueError("an IPv6 zone id (%) is not allowed")
        try:
            return ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    name = host.lower()
    name = name[:-1] if name.endswith(".") else name
    if not name.isascii():
        raise ValueError("a host name must be ASCII (IDNA: xn--...)")
    number = ipv4_number(name)
    if number is not None:
        return ipaddress.IPv4Address(number)
    labels = name.split(".")
    if (
        len(name) > 253
        or not all(_LABEL.match(label) for label in labels)
        or not labels[-1][0].isalpha()  # a numeric last label is an address or nothing
    ):
        raise ValueError(f"{host[:100]!r} is neither a valid host name nor an IP address")
    return name


def check_store_endpoint(field: str, url: str, allowed_cidrs: Sequence[Network]) -> Problem | None:
    """An object store's endpoint (empty: AWS S3): http(s), a valid host name or an IP
    literal, a port from 1 to 65535, no user information, query or fragment; an IP
    literal must be public unless the admin lists it."""
    if not url:
        return None
    try:
        scheme, _, rest, host = _split_authority(url)
        if scheme not in STORE_SCHEMES:
            raise ValueError(f"the scheme must be http or https, not {scheme!r}")
        if "?" in rest or "#" in rest:
            raise ValueError("no query (?) or fragment (#) is allowed")
        parsed = parse_host(host)
    except ValueError as exc:
        return Problem(field, str(exc))
    if isinstance(parsed, str):
        return None  # its addresses are checked when the operator connects (netguard)
    refusal = store_refusal(parsed, allowed_cidrs)
    if refusal is None:
        return None
    return Problem(
        field,
        f"{refusal}: the operator connects only to public addresses, and to the networks "
        "the admin lists (LMMS_OBJECT_STORE_ALLOWED_CIDRS)",
    )


def check_runner_url(field: str, url: str) -> Problem | None:
    """A URL that only the runner contacts: no link-local or metadata address or name,
    no unspecified address (loopback stays allowed: it is the pod's own)."""
    try:
        _, _, _, host = _split_authority(url)
        parsed = parse_host(host)
    except ValueError as exc:
        return Problem(field, str(exc))
    return _runner_host(field, parsed)


def _runner_host(field: str, parsed: Address | str) -> Problem | None:
    if isinstance(parsed, str):
        if parsed.split(".")[0] in METADATA_LABELS:
            return Problem(field, f"{parsed!r} names a cloud metadata service")
        return None
    refusal = runner_refusal(parsed)
    return Problem(field, f"{refusal}: the runner may not be pointed at it") if refusal else None


#: Keys of model args whose values are URLs or hosts even without a scheme.
_URL_KEY = re.compile(r"url|base|endpoint|host|server|address", re.IGNORECASE)
#: How lmms-eval backends split a value holding several URLs.
_URL_SPLIT = re.compile(r"[;,\s]+")


def runner_url_problems(prefix: str, values: Mapping[str, Any]) -> list[Problem]:
    """Every URL in ``values`` (model args, env): each piece of a string value that
    holds ``://`` (checked in full), and under a URL-like key (``base_url``,
    ``api_base``, ``endpoint``, ``server_url``, ``host``) a piece without a scheme whose
    host is an IP literal or a metadata name. ``prefix``: the field (``spec.model.args``).
    One problem per key at most."""
    problems: list[Problem] = []
    for key, value in values.items():
        if not isinstance(value, str):
            continue
        field = f"{prefix}.{key}"
        for piece in _URL_SPLIT.split(value):
            problem: Problem | None = None
            if "://" in piece:
                problem = check_runner_url(field, piece)
            elif piece and not piece.startswith("/") and _URL_KEY.search(str(key)):
                try:  # a host[:port][/path] without a scheme; anything else is no URL
                    parsed = parse_host(_split_authority("http://" + piece)[3])
                except ValueError:
                    parsed = None
                problem = _runner_host(field, parsed) if parsed is not None else None
            if problem is not None:
                problems.append(problem)
                break
    return problems
