"""The admin's allow-list of model and judge URLs (``LMMS_ALLOWED_MODEL_URLS``), and the
check of a URL a run names (``spec.model.endpoint.url``, ``spec.judge.url``). Pure:
nothing is resolved or contacted here, nor anywhere in the operator: only the runner
connects to a model's server.

An entry of the list is one of:

- **a URL prefix**, ``scheme://host[:port][/path]``: the scheme and host must be the same,
  the port too (the scheme's default when the entry names none), and the URL's path must
  be the entry's path or go on below it (``https://llm.example.com/v1`` admits
  ``https://llm.example.com/v1`` and ``.../v1/x``, not ``.../v10``);
- **a host pattern**, ``host[:port]`` or ``*.domain[:port]``: http or https, on any port
  unless one is named; ``*.domain`` admits names below ``domain`` (one label or more),
  not ``domain`` itself.

Entries are separated by commas or white space; none (the default) admits no URL. Hosts
compare in one form: lower case, no trailing dot, an IP address as ``ipaddress`` writes
it (so ``0x7f.1`` is ``127.0.0.1`` on both sides). Link-local and metadata addresses and
names, and unspecified addresses, are refused whatever the list says (the runner's own
rule, ``endpoints.check_runner_url``). A list that cannot be read stops the operator at
start-up, naming the setting and the entry.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..api.endpointid import without_credentials as without_credentials
from ..errors import Problem
from .endpoints import _runner_host, _split_authority, parse_host

SETTING = "LMMS_ALLOWED_MODEL_URLS"
SCHEMES = {"http": 80, "https": 443}
#: A URL path the operator hands on: segments of unreserved characters, no "." or ".."
#: segment, no percent-encoding (one spelling per path).
_PATH = re.compile(r"^(/[A-Za-z0-9_~\-][A-Za-z0-9._~\-]*)*/?$")


@dataclass(frozen=True)
class UrlRule:
    """One entry: a URL prefix (``scheme`` set) or a host pattern (``scheme`` None)."""

    host: str  # the canonical host; for a wildcard, the domain below which names match
    wildcard: bool = False
    scheme: str | None = None
    port: int | None = None  # None: any port (a host pattern naming none)
    path: str = ""  # a URL prefix's path, without a trailing slash

    def admits(self, scheme: str, host: str, port: int, path: str) -> bool:
        if self.scheme is not None and scheme != self.scheme:
            return False
        if self.port is not None and port != self.port:
            return False
        if self.wildcard:
            if not host.endswith("." + self.host):
                return False
        elif host != self.host:
            return False
        trimmed = path.rstrip("/")
        return not self.path or trimmed == self.path or trimmed.startswith(self.path + "/")


@dataclass(frozen=True)
class _Url:
    scheme: str
    host: str
    port: int
    path: str


def _host_form(host: str) -> str:
    parsed = parse_host(host)
    if isinstance(parsed, str):
        return parsed
    return str(parsed)


def _parse_url(url: str) -> _Url:
    """The parts of an http(s) URL in their one form; ValueError saying why not."""
    scheme, authority, rest, host = _split_authority(url)
    if scheme not in SCHEMES:
        raise ValueError(f"the scheme must be http or https, not {scheme!r}")
    if "?" in rest or "#" in rest:
        raise ValueError("no query (?) or fragment (#) is allowed")
    if not _PATH.match(rest):
        raise ValueError(
            "the path may hold letters, digits and - . _ ~ between slashes, no '.' or '..' "
            "segment and no %-encoding"
        )
    port_text = authority.rpartition("]")[2] if host.startswith("[") else authority
    _, _, port = port_text.partition(":")
    return _Url(scheme, _host_form(host), int(port) if port else SCHEMES[scheme], rest)


def parse_rules(text: str, setting: str = SETTING) -> tuple[UrlRule, ...]:
    """The admin's list; a ValueError naming ``setting`` and the entry for a bad one."""
    rules: list[UrlRule] = []
    for entry in (e for e in re.split(r"[,\s]+", text or "") if e):
        try:
            rules.append(_rule(entry))
        except ValueError as exc:
            raise ValueError(f"{setting}: {entry[:200]!r} {exc}") from None
    return tuple(rules)


def _rule(entry: str) -> UrlRule:
    if "://" in entry:
        url = _parse_url(entry)
        return UrlRule(url.host, False, url.scheme, url.port, url.path.rstrip("/"))
    wildcard = entry.startswith("*.")
    body = entry[2:] if wildcard else entry
    if "/" in body or "*" in body:
        raise ValueError("is neither a URL prefix (scheme://host[:port][/path]) nor a host pattern")
    try:
        _, authority, _, host = _split_authority("http://" + body)
    except ValueError as exc:
        raise ValueError(f"is not host[:port] ({exc})") from None
    port_text = authority.rpartition("]")[2] if host.startswith("[") else authority
    _, _, port = port_text.partition(":")
    canonical = _host_form(host)
    if wildcard:
        try:
            ipaddress.ip_address(canonical)
        except ValueError:
            pass
        else:
            raise ValueError("is a wildcard over an IP address: name the address")
    return UrlRule(canonical, wildcard, None, int(port) if port else None, "")


def url_problem(field: str, url: str, rules: tuple[UrlRule, ...]) -> Problem | None:
    """Why a run may not name ``url`` (None: it may)."""
    try:
        parsed = _parse_url(url)
        host = parse_host(_split_authority(url)[3])
    except ValueError as exc:
        return Problem(field, str(exc))
    refused = _runner_host(field, host)
    if refused is not None:
        return refused
    if not rules:
        return Problem(
            field,
            "this operator admits no endpoint URLs (the admin lists them in "
            f"{SETTING}); name a Service or an InferenceService in the run's namespace",
        )
    if any(r.admits(parsed.scheme, parsed.host, parsed.port, parsed.path) for r in rules):
        return None
    return Problem(
        field,
        f"{parsed.scheme}://{parsed.host}:{parsed.port}{parsed.path} is not in the URLs "
        f"this operator admits ({SETTING}: {len(rules)} entr{'y' if len(rules) == 1 else 'ies'})",
    )
